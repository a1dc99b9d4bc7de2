//! Thin PyO3 layer over qfcal-core: array borrowing, GIL release, error mapping, pickling.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, TryLockError};

use numpy::ndarray::{ArrayViewD, ArrayViewMut1, Axis, Slice, Zip};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::MutexExt;
use pyo3::types::{PyBytes, PyTuple};
use qfcal_core::histogram::{BLOCK, DEFAULT_BINS};
use qfcal_core::{self as core, Dist, Method, SearchOptions, SpecOptions};

create_exception!(
    qfcal._core,
    EmptyHistogramError,
    PyValueError,
    "A search was asked of a histogram that holds no finite value."
);

fn to_py(e: core::Error) -> PyErr {
    match e {
        core::Error::Empty(m) => EmptyHistogramError::new_err(m),
        other => PyValueError::new_err(other.to_string()),
    }
}

/// An integer argument that always extracts (anything with `__index__`): values beyond i64 are
/// kept as text, so that the range check, not an OverflowError, reports them.
struct IntArg(std::result::Result<i64, String>);

impl<'a, 'py> FromPyObject<'a, 'py> for IntArg {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let i = obj.call_method0("__index__").map_err(|_| {
            PyTypeError::new_err(format!(
                "expected an int, got {}",
                obj.repr()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| "?".into())
            ))
        })?;
        Ok(IntArg(i.extract::<i64>().map_err(|_| i.to_string())))
    }
}

impl IntArg {
    /// The value, or a ValueError naming the argument, its range and the value.
    fn get(&self, name: &str, range: &str) -> PyResult<i64> {
        self.0
            .clone()
            .map_err(|v| PyValueError::new_err(format!("{name} must be in {range}, got {v}")))
    }
}

/// Runs `f`, turning a Rust panic into a Python RuntimeError instead of a crash.
fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(PyRuntimeError::new_err(format!(
                "internal error in qfcal (please report it): {msg}"
            )))
        }
    }
}

/// A float dtype `update` reads, and how its values reach the histogram.
trait Input: numpy::Element + Copy + Send + Sync {
    type Out: core::histogram::Sample;
    /// The value as the histogram reads it (`swapped`: stored in the other byte order).
    fn convert(self, swapped: bool) -> Self::Out;
    /// The values themselves, where the histogram reads them as they are.
    fn as_is(values: &[Self], swapped: bool) -> Option<&[Self::Out]>;
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
}

/// The same values in memory order (the histogram does not depend on the order): negative
/// strides flipped, broadcast (stride-0) axes outermost, the others by decreasing stride, axes
/// of length 1 dropped and neighbours that one stride walks merged. A transposed or
/// Fortran-ordered array becomes one contiguous slice; a broadcast array becomes the repeats of
/// its contiguous rows.
fn memory_order<T>(mut v: ArrayViewD<'_, T>) -> ArrayViewD<'_, T> {
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

/// The least each thread gets of a view split across threads.
const PAR_MIN: usize = 1 << 18;

/// Adds a view's values to `h`, on all cores for large views: a view that is one slice the
/// histogram reads in place goes to `Histogram::update`; any other is cut along its longest
/// axis, each part counted into a histogram of its own on its own thread, and the parts merged
/// (exact, as every merge is).
fn add_view<T: Input>(h: &mut core::Histogram, view: ArrayViewD<'_, T>, swapped: bool) {
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
    if v.len() < 2 * PAR_MIN {
        return add_rows(h, v, swapped);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let len = v.shape()[axis];
    let parts = threads.min(v.len() / PAR_MIN).min(len);
    if parts <= 1 {
        return add_rows(h, v, swapped);
    }
    let step = len.div_ceil(parts);
    let bins = h.bins();
    let partials: Vec<core::Histogram> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..len)
            .step_by(step)
            .map(|start| {
                let part = v.slice_axis(Axis(axis), Slice::from(start..(start + step).min(len)));
                scope.spawn(move || {
                    let mut mine = core::Histogram::new(bins).expect("bins already validated");
                    add_rows(&mut mine, part, swapped);
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for p in &partials {
        h.merge(p).expect("same bins");
    }
}

/// Adds a view in memory order (see [`memory_order`]) on this thread: rows the histogram reads
/// in place are read there, the others converted a block at a time.
fn add_rows<T: Input>(h: &mut core::Histogram, v: ArrayViewD<'_, T>, swapped: bool) {
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
            Zip::from(ArrayViewMut1::from(&mut buf[..end - start]))
                .and(part)
                .for_each(|out, &x| *out = x.convert(swapped));
            feeder.extend_from_slice(&buf[..end - start]);
            start = end;
        }
    }
}

/// Six significant digits, like Python's `%g`.
fn g6(x: f64) -> String {
    let a = x.abs();
    if x == 0.0 || !x.is_finite() || (1e-4..1e6).contains(&a) {
        let digits = if a == 0.0 || !x.is_finite() {
            0
        } else {
            (5 - a.log10().floor() as i32).max(0) as usize
        };
        let s = format!("{x:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        format!("{x:.5e}")
    }
}

/// An exact, order-independent, mergeable histogram (see the stub for the full docs).
///
/// Safe to share between threads: the histogram sits behind a mutex. `update` counts with the
/// GIL released, under the lock when it is free, and otherwise into a histogram of its own that
/// it then merges under the lock (exact either way, and threads feeding one histogram still run
/// in parallel). A lock is never waited for while the GIL is held (`lock_py_attached` detaches
/// first), and no lock is held while waiting for another, except by `==`, which takes both in
/// address order, so no two threads can deadlock.
#[pyclass(module = "qfcal._core", name = "Histogram", frozen)]
struct PyHistogram {
    /// `inner`'s bins, readable without the lock.
    bins: usize,
    inner: Mutex<core::Histogram>,
}

fn poisoned() -> PyErr {
    PyRuntimeError::new_err(
        "this Histogram was left incomplete by an internal error in qfcal (please report it): \
         its counts are no longer exact",
    )
}

impl PyHistogram {
    fn wrap(h: core::Histogram) -> PyHistogram {
        PyHistogram {
            bins: h.bins(),
            inner: Mutex::new(h),
        }
    }

    /// Runs `f` on the histogram under its lock (waited for with the GIL released).
    fn read<T>(&self, py: Python<'_>, f: impl FnOnce(&core::Histogram) -> T) -> PyResult<T> {
        let h = self.inner.lock_py_attached(py).map_err(|_| poisoned())?;
        guard(|| Ok(f(&h)))
    }

    /// Runs `f` on the histogram under its lock; a panic inside leaves the lock poisoned, so
    /// that a histogram it left half-updated refuses to be used.
    fn write<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut core::Histogram) -> PyResult<T>,
    ) -> PyResult<T> {
        guard(|| f(&mut *self.inner.lock_py_attached(py).map_err(|_| poisoned())?))
    }

    fn snapshot(&self, py: Python<'_>) -> PyResult<core::Histogram> {
        self.read(py, |h| h.clone())
    }

    /// Adds an array's values with the GIL released.
    fn add<T: Input>(
        &self,
        py: Python<'_>,
        arr: &Bound<'_, PyArrayDyn<T>>,
        swapped: bool,
    ) -> PyResult<()> {
        let ro = arr.readonly();
        let view = ro.as_array();
        let (cell, bins) = (&self.inner, self.bins);
        py.detach(|| {
            guard(|| {
                match cell.try_lock() {
                    Ok(mut h) => add_view(&mut h, view, swapped),
                    Err(TryLockError::WouldBlock) => {
                        // Another thread is updating: count on our own, merge under the lock.
                        let mut mine = core::Histogram::new(bins).map_err(to_py)?;
                        add_view(&mut mine, view, swapped);
                        let mut h = cell.lock().map_err(|_| poisoned())?;
                        h.merge(&mine).map_err(to_py)?;
                    }
                    Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
                }
                Ok(())
            })
        })
    }
}

#[pymethods]
impl PyHistogram {
    #[new]
    #[pyo3(signature = (bins = IntArg(Ok(DEFAULT_BINS as i64))), text_signature = "(bins=4096)")]
    fn new(bins: IntArg) -> PyResult<Self> {
        let range = format!(
            "{}..={}",
            core::histogram::MIN_BINS,
            core::histogram::MAX_BINS
        );
        let b = bins.get("bins", &range)?;
        let b = usize::try_from(b)
            .map_err(|_| PyValueError::new_err(format!("bins must be in {range}, got {b}")))?;
        guard(|| Ok(PyHistogram::wrap(core::Histogram::new(b).map_err(to_py)?)))
    }

    fn update(&self, py: Python<'_>, values: &Bound<'_, PyAny>) -> PyResult<()> {
        let np = py.import("numpy")?;
        let arr = if values.is_instance(&np.getattr("ndarray")?)? {
            values.clone()
        } else {
            np.call_method1("asarray", (values,))?
        };
        let dtype = arr.getattr("dtype")?;
        let kind: String = dtype.getattr("kind")?.extract()?;
        let size: usize = dtype.getattr("itemsize")?.extract()?;
        if kind != "f" || !matches!(size, 2 | 4 | 8) {
            return Err(PyTypeError::new_err(format!(
                "update() takes float16, float32 or float64 arrays, got dtype {}",
                dtype.str()?
            )));
        }
        // Rust reads floats at their natural alignment only: an unaligned array (a view into
        // a byte buffer at an odd offset) is copied into an aligned one first.
        let arr = if arr
            .getattr("flags")?
            .getattr("aligned")?
            .extract::<bool>()?
        {
            arr
        } else {
            arr.call_method0("copy")?
        };
        let swapped = !dtype.getattr("isnative")?.extract::<bool>()?;
        // A byte-swapped array is read as native and its values swapped as they are read.
        let arr = if swapped {
            arr.call_method1("view", (dtype.call_method1("newbyteorder", ("=",))?,))?
        } else {
            arr
        };
        match size {
            4 => self.add(py, arr.cast::<PyArrayDyn<f32>>()?, swapped),
            8 => self.add(py, arr.cast::<PyArrayDyn<f64>>()?, swapped),
            _ => self.add(py, arr.cast::<PyArrayDyn<half::f16>>()?, swapped),
        }
    }

    fn merge(&self, py: Python<'_>, other: PyRef<'_, PyHistogram>) -> PyResult<()> {
        // A copy of the other side first: `h.merge(h)` doubles `h`, and no thread ever holds
        // one histogram's lock while waiting for another's.
        let theirs = other.snapshot(py)?;
        self.write(py, |h| h.merge(&theirs).map_err(to_py))
    }

    fn __add__(&self, py: Python<'_>, other: PyRef<'_, PyHistogram>) -> PyResult<PyHistogram> {
        let mut out = self.snapshot(py)?;
        other.read(py, |theirs| out.merge(theirs))?.map_err(to_py)?;
        Ok(PyHistogram::wrap(out))
    }

    fn __iadd__(&self, py: Python<'_>, other: PyRef<'_, PyHistogram>) -> PyResult<()> {
        self.merge(py, other)
    }

    fn __richcmp__(
        &self,
        py: Python<'_>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let Ok(other) = other.cast::<PyHistogram>() else {
            return Ok(py.NotImplemented());
        };
        let other = other.get();
        let eq = if std::ptr::eq(self, other) {
            true
        } else {
            // Both locks, in address order (the one place that holds two).
            let (a, b) = if (self as *const Self) < (other as *const Self) {
                (self, other)
            } else {
                (other, self)
            };
            let ga = a.inner.lock_py_attached(py).map_err(|_| poisoned())?;
            let gb = b.inner.lock_py_attached(py).map_err(|_| poisoned())?;
            guard(|| Ok(*ga == *gb))?
        };
        match op {
            CompareOp::Eq => Ok(eq.into_pyobject(py)?.to_owned().into_any().unbind()),
            CompareOp::Ne => Ok((!eq).into_pyobject(py)?.to_owned().into_any().unbind()),
            _ => Ok(py.NotImplemented()),
        }
    }

    fn copy(&self, py: Python<'_>) -> PyResult<PyHistogram> {
        Ok(PyHistogram::wrap(self.snapshot(py)?))
    }

    fn __copy__(&self, py: Python<'_>) -> PyResult<PyHistogram> {
        self.copy(py)
    }

    fn __deepcopy__(&self, py: Python<'_>, _memo: &Bound<'_, PyAny>) -> PyResult<PyHistogram> {
        self.copy(py)
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let b = self.read(py, |h| h.to_bytes())?;
        Ok(PyBytes::new(py, &b))
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<PyHistogram> {
        guard(|| {
            Ok(PyHistogram::wrap(
                core::Histogram::from_bytes(data).map_err(to_py)?,
            ))
        })
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let ctor = py.get_type::<PyHistogram>().getattr("from_bytes")?;
        let args = PyTuple::new(py, [self.to_bytes(py)?])?;
        PyTuple::new(py, [ctor.into_any(), args.into_any()])
    }

    #[getter]
    fn bins(&self) -> usize {
        self.bins
    }
    #[getter]
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.read(py, |h| h.occupied().1.to_vec())?;
        Ok(c.into_pyarray(py).into_any())
    }
    #[getter]
    fn edges<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let e = self.read(py, |h| h.edges())?;
        Ok(e.into_pyarray(py).into_any())
    }
    #[getter]
    fn bin_width(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        self.read(py, |h| h.bin_width())
    }
    #[getter]
    fn min(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        self.read(py, |h| h.min())
    }
    #[getter]
    fn max(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        self.read(py, |h| h.max())
    }
    #[getter]
    fn total(&self, py: Python<'_>) -> PyResult<u64> {
        self.read(py, |h| h.total())
    }
    #[getter]
    fn finite(&self, py: Python<'_>) -> PyResult<u64> {
        self.read(py, |h| h.finite())
    }
    #[getter]
    fn nonzero(&self, py: Python<'_>) -> PyResult<u64> {
        self.read(py, |h| h.nonzero())
    }
    #[getter]
    fn zeros(&self, py: Python<'_>) -> PyResult<u64> {
        self.read(py, |h| h.zeros())
    }
    #[getter]
    fn nan(&self, py: Python<'_>) -> PyResult<u64> {
        self.read(py, |h| h.nan())
    }
    #[getter]
    fn pos_inf(&self, py: Python<'_>) -> PyResult<u64> {
        self.read(py, |h| h.pos_inf())
    }
    #[getter]
    fn neg_inf(&self, py: Python<'_>) -> PyResult<u64> {
        self.read(py, |h| h.neg_inf())
    }

    /// Counts and edges with the zeros put back into the bin that holds 0 (the grid widened to
    /// reach 0 when needed): what `np.histogram` would give on the same edges.
    fn to_numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let (counts, edges) = self.read(py, |h| {
            let (first, counts, k) = h.with_zeros_binned();
            let w = 2f64.powi(k);
            let edges: Vec<f64> = if counts.is_empty() {
                Vec::new()
            } else {
                (0..=counts.len())
                    .map(|i| (first + i as i64) as f64 * w)
                    .collect()
            };
            (counts, edges)
        })?;
        PyTuple::new(
            py,
            [
                counts.into_pyarray(py).into_any(),
                edges.into_pyarray(py).into_any(),
            ],
        )
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let text = self.read(py, |h| {
            let fmt = |v: Option<f64>| v.map_or("None".to_string(), g6);
            let width = h
                .exponent()
                .map_or("None".to_string(), |k| format!("2**{k}"));
            let mut s = format!(
                "Histogram(bins={}, total={}, min={}, max={}, bin_width={}, zeros={}",
                h.bins(),
                h.total(),
                fmt(h.min()),
                fmt(h.max()),
                width,
                h.zeros()
            );
            if h.nan() + h.pos_inf() + h.neg_inf() > 0 {
                s += &format!(
                    ", nan={}, pos_inf={}, neg_inf={}",
                    h.nan(),
                    h.pos_inf(),
                    h.neg_inf()
                );
            }
            s + ")"
        });
        text.unwrap_or_else(|_| {
            format!(
                "Histogram(bins={}, <left incomplete by an internal error>)",
                self.bins
            )
        })
    }
}

/// The result of a search: a frozen value object.
#[pyclass(module = "qfcal._core", name = "SearchResult", frozen, eq)]
#[derive(Clone, PartialEq)]
struct PySearchResult {
    r: core::SearchResult,
}

#[pymethods]
impl PySearchResult {
    #[getter]
    fn scale(&self) -> f64 {
        self.r.encoding.scale
    }
    #[getter]
    fn zero_point(&self) -> i64 {
        self.r.encoding.zero_point
    }
    #[getter]
    fn qmin(&self) -> i64 {
        self.r.encoding.qmin
    }
    #[getter]
    fn qmax(&self) -> i64 {
        self.r.encoding.qmax
    }
    #[getter]
    fn min(&self) -> f64 {
        self.r.encoding.min()
    }
    #[getter]
    fn max(&self) -> f64 {
        self.r.encoding.max()
    }
    #[getter]
    fn loss(&self) -> f64 {
        self.r.objective()
    }
    #[getter]
    fn rounding_loss(&self) -> f64 {
        self.r.loss.rounding
    }
    #[getter]
    fn clipping_loss(&self) -> f64 {
        self.r.loss.clipping
    }
    #[getter]
    fn mse(&self) -> f64 {
        self.r.loss.mse()
    }
    #[getter]
    fn gamma(&self) -> f64 {
        self.r.gamma
    }
    #[getter]
    fn sqnr_db(&self) -> f64 {
        self.r.sqnr_db
    }
    #[getter]
    fn method(&self) -> &'static str {
        self.r.method.name()
    }
    /// A frozen value: copies are the object itself.
    fn __copy__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }
    fn __deepcopy__<'py>(slf: PyRef<'py, Self>, _memo: &Bound<'py, PyAny>) -> PyRef<'py, Self> {
        slf
    }
    /// Pickles as its fields (so results travel to worker processes and into saved state).
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let f = py.import("qfcal._core")?.getattr("_search_result")?;
        let e = &self.r.encoding;
        let args = (
            e.scale,
            e.zero_point,
            e.qmin,
            e.qmax,
            self.r.loss.rounding,
            self.r.loss.clipping,
            self.r.gamma,
            self.r.sqnr_db,
            self.r.method.name(),
        );
        PyTuple::new(py, [f.into_any(), args.into_pyobject(py)?.into_any()])
    }
    fn __repr__(&self) -> String {
        let e = &self.r.encoding;
        format!(
            "SearchResult(method={:?}, scale={}, zero_point={}, min={}, max={}, loss={}, sqnr_db={:.2})",
            self.r.method.name(),
            g6(e.scale),
            e.zero_point,
            g6(e.min()),
            g6(e.max()),
            g6(self.r.objective()),
            self.r.sqnr_db
        )
    }
}

/// Reads `(counts, edges)` from anything numpy can turn into 1-D float arrays.
fn dist_from_pair(py: Python<'_>, pair: &Bound<'_, PyAny>) -> PyResult<Dist> {
    let not_pair = || {
        PyTypeError::new_err(format!(
            "hist must be a qfcal.Histogram or a (counts, edges) pair, got {}",
            pair.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into())
        ))
    };
    if pair.len().map_err(|_| not_pair())? != 2 {
        return Err(not_pair());
    }
    let np = py.import("numpy")?;
    let mut out: Vec<Vec<f64>> = Vec::new();
    for (i, name) in ["counts", "edges"].iter().enumerate() {
        let a = np.call_method(
            "asarray",
            (pair.get_item(i)?,),
            Some(&[("dtype", "float64")].into_py_dict(py)?),
        )?;
        let a = a.cast_into::<PyArrayDyn<f64>>()?;
        if a.ndim() != 1 {
            return Err(PyValueError::new_err(format!(
                "{name} must be 1-D, got shape {:?}",
                a.shape()
            )));
        }
        out.push(a.readonly().as_array().iter().copied().collect());
    }
    let edges = out.pop().unwrap();
    let counts = out.pop().unwrap();
    guard(|| Dist::new(counts, edges, 0.0).map_err(to_py))
}

use pyo3::types::IntoPyDict;

#[pyfunction]
#[pyo3(signature = (hist, *, bits = IntArg(Ok(8)), symmetric = false, signed = true, narrow_range = false,
                    qmin = None, qmax = None, gamma = 1.0, method = "optimal", percentile = 99.99),
       text_signature = "(hist, *, bits=8, symmetric=False, signed=True, narrow_range=False, qmin=None, qmax=None, gamma=1.0, method='optimal', percentile=99.99)")]
#[allow(clippy::too_many_arguments)]
fn search(
    py: Python<'_>,
    hist: &Bound<'_, PyAny>,
    bits: IntArg,
    symmetric: bool,
    signed: bool,
    narrow_range: bool,
    qmin: Option<IntArg>,
    qmax: Option<IntArg>,
    gamma: f64,
    method: &str,
    percentile: f64,
) -> PyResult<PySearchResult> {
    let method: Method = method.parse().map_err(to_py)?;
    let bits = bits.get("bits", "2..=16")?;
    let bits = u32::try_from(bits)
        .map_err(|_| PyValueError::new_err(format!("bits must be in 2..=16, got {bits}")))?;
    let lim = format!("-{0}..={0}", core::spec::MAX_LEVELS);
    let qmin = qmin.map(|v| v.get("qmin", &lim)).transpose()?;
    let qmax = qmax.map(|v| v.get("qmax", &lim)).transpose()?;
    let opts = SearchOptions {
        spec: SpecOptions {
            bits,
            signed,
            symmetric,
            narrow_range,
            qmin,
            qmax,
        },
        gamma,
        method,
        percentile,
    };
    let dist = match hist.cast::<PyHistogram>() {
        Ok(h) => h.get().read(py, |h| h.to_dist())?.map_err(to_py)?,
        Err(_) => dist_from_pair(py, hist)?,
    };
    let r = py.detach(|| guard(|| core::search(&dist, &opts).map_err(to_py)))?;
    Ok(PySearchResult { r })
}

/// Rebuilds a pickled `SearchResult` (its `__reduce__`); checks the grid it is given.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn _search_result(
    scale: f64,
    zero_point: i64,
    qmin: i64,
    qmax: i64,
    rounding: f64,
    clipping: f64,
    gamma: f64,
    sqnr_db: f64,
    method: &str,
) -> PyResult<PySearchResult> {
    let method: Method = method.parse().map_err(to_py)?;
    let lim = core::spec::MAX_LEVELS;
    if !(scale > 0.0 && scale.is_finite())
        || qmin >= qmax
        || !(qmin..=qmax).contains(&zero_point)
        || qmin < -lim
        || qmax > lim
    {
        return Err(PyValueError::new_err(format!(
            "not a SearchResult's state: scale {scale}, zero_point {zero_point}, qmin {qmin}, \
             qmax {qmax}"
        )));
    }
    Ok(PySearchResult {
        r: core::SearchResult {
            encoding: core::spec::Encoding {
                scale,
                zero_point,
                qmin,
                qmax,
            },
            loss: core::cost::Loss { rounding, clipping },
            gamma,
            sqnr_db,
            method,
        },
    })
}

/// The names of the search methods, `optimal` first.
#[pyfunction]
fn methods() -> Vec<&'static str> {
    Method::ALL.iter().map(|m| m.name()).collect()
}

/// Debug builds only (release builds, wheels included, have no way to make the core panic):
/// panics inside the guard, under `h`'s lock when given, so that the tests can check that a
/// panic reaches Python as a RuntimeError and that a histogram it interrupted refuses to be used.
#[cfg(debug_assertions)]
#[pyfunction]
#[pyo3(signature = (h = None))]
fn _debug_panic(py: Python<'_>, h: Option<PyRef<'_, PyHistogram>>) -> PyResult<()> {
    match h {
        Some(h) => h.write(py, |_| panic!("forced panic (debug build)")),
        None => guard(|| panic!("forced panic (debug build)")),
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHistogram>()?;
    m.add_class::<PySearchResult>()?;
    m.add_function(wrap_pyfunction!(search, m)?)?;
    m.add_function(wrap_pyfunction!(methods, m)?)?;
    m.add_function(wrap_pyfunction!(_search_result, m)?)?;
    #[cfg(debug_assertions)]
    m.add_function(wrap_pyfunction!(_debug_panic, m)?)?;
    m.add(
        "EmptyHistogramError",
        m.py().get_type::<EmptyHistogramError>(),
    )?;
    m.add("DEFAULT_BINS", DEFAULT_BINS)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

// The `Histogram(bins=4096)` text signature spells the default as a literal for the stubs.
const _: () = assert!(DEFAULT_BINS == 4096);
