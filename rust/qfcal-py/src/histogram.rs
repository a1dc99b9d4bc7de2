//! The `Histogram` class: a core histogram behind a mutex, fed with the GIL released.

use std::sync::{Mutex, TryLockError};

use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::MutexExt;
use pyo3::types::{PyBytes, PyTuple};
use qfcal_core::histogram::{DEFAULT_BINS, MAX_BINS, MIN_BINS};
use qfcal_core::Histogram;

use crate::args::IntArg;
use crate::arrays::{add_view, float_array, FloatArray, Input};
use crate::errors::{guard, poisoned, to_py};
use crate::format::{broken_histogram_repr, histogram_repr};

/// An exact, order-independent, mergeable histogram (see the stub for the full docs).
///
/// Safe to share between threads: the histogram sits behind a mutex. `update` counts with the
/// GIL released, under the lock when it is free, and otherwise into a histogram of its own that
/// it then merges under the lock (exact either way, and threads feeding one histogram still run
/// in parallel). A lock is never waited for while the GIL is held (`lock_py_attached` detaches
/// first), and no lock is held while waiting for another, except by `==`, which takes both in
/// address order, so no two threads can deadlock.
#[pyclass(module = "qfcal._core", name = "Histogram", frozen)]
pub(crate) struct PyHistogram {
    /// `inner`'s bins, readable without the lock.
    bins: usize,
    inner: Mutex<Histogram>,
}

impl PyHistogram {
    pub(crate) fn wrap(h: Histogram) -> PyHistogram {
        PyHistogram {
            bins: h.bins(),
            inner: Mutex::new(h),
        }
    }

    /// Runs `f` on the histogram under its lock (waited for with the GIL released).
    pub(crate) fn read<T>(&self, py: Python<'_>, f: impl FnOnce(&Histogram) -> T) -> PyResult<T> {
        let h = self.inner.lock_py_attached(py).map_err(|_| poisoned())?;
        guard(|| Ok(f(&h)))
    }

    /// Runs `f` on the histogram under its lock; a panic inside leaves the lock poisoned, so
    /// that a histogram it left half-updated refuses to be used.
    pub(crate) fn write<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Histogram) -> PyResult<T>,
    ) -> PyResult<T> {
        guard(|| f(&mut *self.inner.lock_py_attached(py).map_err(|_| poisoned())?))
    }

    fn snapshot(&self, py: Python<'_>) -> PyResult<Histogram> {
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
                        let mut mine = Histogram::new(bins).map_err(to_py)?;
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
        let bins: usize = bins.get_as("bins", &format!("{MIN_BINS}..={MAX_BINS}"))?;
        guard(|| Ok(PyHistogram::wrap(Histogram::new(bins).map_err(to_py)?)))
    }

    fn update(&self, py: Python<'_>, values: &Bound<'_, PyAny>) -> PyResult<()> {
        match float_array(values)? {
            (FloatArray::F32(a), swapped) => self.add(py, &a, swapped),
            (FloatArray::F64(a), swapped) => self.add(py, &a, swapped),
            (FloatArray::F16(a), swapped) => self.add(py, &a, swapped),
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
                Histogram::from_bytes(data).map_err(to_py)?,
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
    fn at_extremes(&self, py: Python<'_>) -> PyResult<(u64, u64)> {
        self.read(py, |h| h.at_extremes())
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
        let (counts, edges) = self.read(py, |h| h.to_numpy())?;
        PyTuple::new(
            py,
            [
                counts.into_pyarray(py).into_any(),
                edges.into_pyarray(py).into_any(),
            ],
        )
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        self.read(py, histogram_repr)
            .unwrap_or_else(|_| broken_histogram_repr(self.bins))
    }
}
