//! Reading numpy arrays: which arrays `update` takes, how each float dtype reaches the
//! histogram, and counting any view of one (strided, broadcast, reversed, byte-swapped) without
//! copying it whole.

use half::slice::HalfFloatSliceExt;
use numpy::ndarray::{ArrayViewD, ArrayViewMut1, Axis, Slice, Zip};
use numpy::{Element, PyArrayDescrMethods, PyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use qfcal_core::histogram::{parallel, Sample, BLOCK};
use qfcal_core::Histogram;

/// A float dtype `update` reads, and how its values reach the histogram.
pub(crate) trait Input: Element + Copy + Send + Sync {
    type Out: Sample;
    /// The value as the histogram reads it (`swapped`: stored in the other byte order).
    fn convert(self, swapped: bool) -> Self::Out;
    /// The values themselves, where the histogram reads them as they are.
    fn as_is(values: &[Self], swapped: bool) -> Option<&[Self::Out]>;
    /// Converts contiguous values into `out` (of the same length), as [`Input::convert`] does
    /// each.
    fn convert_slice(values: &[Self], out: &mut [Self::Out], swapped: bool) {
        for (o, &x) in out.iter_mut().zip(values) {
            *o = x.convert(swapped);
        }
    }
}

impl Input for f32 {
    type Out = f32;
    #[inline(always)]
    fn convert(self, swapped: bool) -> f32 {
        if swapped {
            f32::from_bits(self.to_bits().swap_bytes())
        } else {
            self
        }
    }
    fn as_is(values: &[f32], swapped: bool) -> Option<&[f32]> {
        (!swapped).then_some(values)
    }
}

impl Input for f64 {
    type Out = f64;
    #[inline(always)]
    fn convert(self, swapped: bool) -> f64 {
        if swapped {
            f64::from_bits(self.to_bits().swap_bytes())
        } else {
            self
        }
    }
    fn as_is(values: &[f64], swapped: bool) -> Option<&[f64]> {
        (!swapped).then_some(values)
    }
}

impl Input for half::f16 {
    type Out = f32;
    #[inline(always)]
    fn convert(self, swapped: bool) -> f32 {
        if swapped {
            half::f16::from_bits(self.to_bits().swap_bytes()).to_f32()
        } else {
            self.to_f32()
        }
    }
    fn as_is(_: &[half::f16], _: bool) -> Option<&[f32]> {
        None
    }
    fn convert_slice(values: &[half::f16], out: &mut [f32], swapped: bool) {
        if swapped {
            for (o, &x) in out.iter_mut().zip(values) {
                *o = x.convert(true);
            }
        } else {
            // Eight values per conversion instruction where the CPU has F16C, rather than a
            // call per value (exact either way).
            values.convert_to_f32_slice(out);
        }
    }
}

/// An array `update` reads, typed by its dtype.
pub(crate) enum FloatArray<'py> {
    F16(Bound<'py, PyArrayDyn<half::f16>>),
    F32(Bound<'py, PyArrayDyn<f32>>),
    F64(Bound<'py, PyArrayDyn<f64>>),
}

/// The float array `values` is (or, for anything else, what `np.asarray` makes of it), and
/// whether its values are stored in the other byte order. A native, aligned float16/32/64
/// array, the usual case, is recognised by its dtype without calling into Python.
pub(crate) fn float_array<'py>(values: &Bound<'py, PyAny>) -> PyResult<(FloatArray<'py>, bool)> {
    let py = values.py();
    let array = match values.cast::<PyUntypedArray>() {
        Ok(a) => a.clone(),
        Err(_) => {
            static ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            let asarray = ASARRAY.import(py, "numpy", "asarray")?;
            asarray.call1((values,))?.cast_into::<PyUntypedArray>()?
        }
    };
    let dtype = array.dtype();
    let itemsize = dtype.itemsize();
    if dtype.kind() != b'f' || !matches!(itemsize, 2 | 4 | 8) {
        return Err(PyTypeError::new_err(format!(
            "update() takes float16, float32 or float64 arrays, got dtype {}",
            dtype.str()?
        )));
    }
    // Rust reads floats at their natural alignment only: an unaligned array (a view into a
    // byte buffer at an odd offset) is copied into an aligned one first.
    let array = if array.is_aligned() {
        array
    } else {
        array
            .call_method0(intern!(py, "copy"))?
            .cast_into::<PyUntypedArray>()?
    };
    // A byte-swapped array is read as native and its values swapped as they are read.
    let swapped = dtype.is_native_byteorder() == Some(false);
    let typed = match itemsize {
        4 => FloatArray::F32(typed_view(&array)?),
        8 => FloatArray::F64(typed_view(&array)?),
        _ => FloatArray::F16(typed_view(&array)?),
    };
    Ok((typed, swapped))
}

/// `array` as an array of `T`, whose size its dtype has: itself when its dtype is `T`'s, else
/// (the other byte order, or another name for the same type, such as a long double that is a
/// double) a view of the same memory as native `T`, as `array.view(T)`.
fn typed_view<'py, T: Element>(
    array: &Bound<'py, PyUntypedArray>,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    if let Ok(a) = array.cast::<PyArrayDyn<T>>() {
        return Ok(a.clone());
    }
    let native = numpy::dtype::<T>(array.py());
    let view = array.call_method1(intern!(array.py(), "view"), (native,))?;
    Ok(view.cast_into::<PyArrayDyn<T>>()?)
}

/// The same values in memory order (the histogram does not depend on the order): negative
/// strides flipped, broadcast (stride-0) axes outermost, the others by decreasing stride, axes
/// of length 1 dropped and neighbours that one stride walks merged. A transposed or
/// Fortran-ordered array becomes one contiguous slice; a broadcast array becomes the repeats of
/// its contiguous rows.
pub(crate) fn memory_order<T>(mut v: ArrayViewD<'_, T>) -> ArrayViewD<'_, T> {
    for a in 0..v.ndim() {
        if v.strides()[a] < 0 {
            v.invert_axis(Axis(a));
        }
    }
    let mut axes: Vec<usize> = (0..v.ndim()).collect();
    axes.sort_by_key(|&a| (v.strides()[a] != 0, std::cmp::Reverse(v.strides()[a])));
    let mut v = v.permuted_axes(axes);
    loop {
        while let Some(a) = (0..v.ndim()).find(|&a| v.shape()[a] == 1) {
            v = v.index_axis_move(Axis(a), 0);
        }
        if !(1..v.ndim()).any(|a| v.merge_axes(Axis(a - 1), Axis(a))) {
            return v;
        }
    }
}

/// Adds a view's values to `h`, on all cores for large views: a view that is one slice the
/// histogram reads in place goes to `Histogram::update`; any other is cut along its longest
/// axis into the parts the core's splitter asks for ([`parallel::parts_for`]), each counted on
/// its own thread ([`Histogram::update_in_parallel`]).
pub(crate) fn add_view<T: Input>(h: &mut Histogram, view: ArrayViewD<'_, T>, swapped: bool) {
    if view.is_empty() {
        return;
    }
    let v = memory_order(view);
    if let Some(values) = v.as_slice().and_then(|s| T::as_is(s, swapped)) {
        h.update(values, 0);
        return;
    }
    let Some(axis) = (0..v.ndim()).max_by_key(|&a| v.shape()[a]) else {
        return add_rows(h, v, swapped);
    };
    let len = v.shape()[axis];
    let parts = parallel::parts_for(v.len(), 0).min(len);
    if parts <= 1 {
        return add_rows(h, v, swapped);
    }
    let step = len.div_ceil(parts);
    let pieces = (0..len)
        .step_by(step)
        .map(|start| v.slice_axis(Axis(axis), Slice::from(start..(start + step).min(len))));
    h.update_in_parallel(pieces, |mine, piece| add_rows(mine, piece, swapped));
}

/// Adds a view in memory order (see [`memory_order`]) on this thread: rows the histogram reads
/// in place are read there, the others converted a block at a time.
fn add_rows<T: Input>(h: &mut Histogram, v: ArrayViewD<'_, T>, swapped: bool) {
    let mut feeder = h.feeder::<T::Out>();
    if v.ndim() == 0 {
        v.iter().for_each(|&x| feeder.push(x.convert(swapped)));
        return;
    }
    let mut buf: Vec<T::Out> = Vec::new();
    for row in v.lanes(Axis(v.ndim() - 1)) {
        if let Some(values) = row.as_slice().and_then(|s| T::as_is(s, swapped)) {
            feeder.extend_from_slice(values);
            continue;
        }
        if buf.is_empty() {
            buf = vec![row[0].convert(swapped); BLOCK.min(v.len())];
        }
        let mut start = 0;
        while start < row.len() {
            let end = (start + BLOCK).min(row.len());
            let part = row.slice_axis(Axis(0), Slice::from(start..end));
            let out = &mut buf[..end - start];
            match part.as_slice() {
                Some(values) => T::convert_slice(values, out, swapped),
                None => Zip::from(ArrayViewMut1::from(&mut *out))
                    .and(part)
                    .for_each(|o, &x| *o = x.convert(swapped)),
            }
            feeder.extend_from_slice(out);
            start = end;
        }
    }
}
