//! The `WeightedHistogram` class: the core's weighted histogram behind a mutex.

use std::sync::Mutex;

use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::{MutexExt, PyOnceLock};
use pyo3::types::{IntoPyDict, PyBytes, PyTuple};
use qfcal_core::histogram::Sample;
use qfcal_core::histogram::DEFAULT_BINS;
use qfcal_core::WeightedHistogram;

use crate::args::IntArg;
use crate::errors::{guard, poisoned, to_py};
use crate::histogram::PyHistogram;

/// Counts and per-bin weight sums (see the stub for the full docs).
#[pyclass(module = "qfcal._core", name = "WeightedHistogram", frozen)]
pub(crate) struct PyWeightedHistogram {
    inner: Mutex<WeightedHistogram>,
}

/// `x` as a contiguous float64 numpy array (a copy only where needed).
fn float64<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
    static ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let asarray = ASARRAY.import(py, "numpy", "ascontiguousarray")?;
    let kw = [("dtype", "float64")].into_py_dict(py)?;
    Ok(asarray
        .call((x,), Some(&kw))?
        .cast_into::<PyArrayDyn<f64>>()?)
}

/// `x` as a contiguous float32 numpy array when it is one already (no conversion), else None.
fn float32<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyArrayDyn<f32>>>> {
    static ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let asarray = ASARRAY.import(py, "numpy", "ascontiguousarray")?;
    Ok(asarray.call1((x,))?.cast_into::<PyArrayDyn<f32>>().ok())
}

impl PyWeightedHistogram {
    /// Adds two same-shaped contiguous arrays with the GIL released.
    fn add<V: numpy::Element + Sample, W: numpy::Element + Copy + Into<f64> + Send + Sync>(
        &self,
        py: Python<'_>,
        values: &Bound<'_, PyArrayDyn<V>>,
        weights: &Bound<'_, PyArrayDyn<W>>,
    ) -> PyResult<()> {
        if values.shape() != weights.shape() {
            return Err(PyValueError::new_err(format!(
                "values and weights must have the same shape, got {:?} and {:?}",
                values.shape(),
                weights.shape()
            )));
        }
        let (v, w) = (values.readonly(), weights.readonly());
        let (vs, ws) = (v.as_slice()?, w.as_slice()?);
        let cell = &self.inner;
        py.detach(|| {
            guard(|| {
                let mut h = cell.lock().map_err(|_| poisoned())?;
                h.update(vs, ws).map_err(to_py)
            })
        })
    }

    pub(crate) fn read<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&WeightedHistogram) -> T,
    ) -> PyResult<T> {
        let h = self.inner.lock_py_attached(py).map_err(|_| poisoned())?;
        guard(|| Ok(f(&h)))
    }
}

#[pymethods]
impl PyWeightedHistogram {
    #[new]
    #[pyo3(signature = (bins = IntArg(Ok(DEFAULT_BINS as i64))), text_signature = "(bins=4096)")]
    fn new(bins: IntArg) -> PyResult<Self> {
        let range = format!(
            "{}..={}",
            qfcal_core::histogram::MIN_BINS,
            qfcal_core::histogram::MAX_BINS
        );
        let bins: usize = bins.get_as("bins", &range)?;
        Ok(PyWeightedHistogram {
            inner: Mutex::new(WeightedHistogram::new(bins).map_err(to_py)?),
        })
    }

    /// Adds `values` with `weights` (same shape). float32 pairs are read as they are; anything
    /// else is read as float64.
    fn update(
        &self,
        py: Python<'_>,
        values: &Bound<'_, PyAny>,
        weights: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if let (Some(v), Some(w)) = (float32(py, values)?, float32(py, weights)?) {
            return self.add(py, &v, &w);
        }
        let (v, w) = (float64(py, values)?, float64(py, weights)?);
        self.add(py, &v, &w)
    }

    /// Adds `other` into this one, exactly.
    fn merge(&self, py: Python<'_>, other: PyRef<'_, PyWeightedHistogram>) -> PyResult<()> {
        let theirs = other.read(py, |h| h.clone())?;
        let mut h = self.inner.lock_py_attached(py).map_err(|_| poisoned())?;
        guard(|| h.merge(&theirs).map_err(to_py))
    }

    fn copy(&self, py: Python<'_>) -> PyResult<PyWeightedHistogram> {
        Ok(PyWeightedHistogram {
            inner: Mutex::new(self.read(py, |h| h.clone())?),
        })
    }

    fn __copy__(&self, py: Python<'_>) -> PyResult<PyWeightedHistogram> {
        self.copy(py)
    }

    fn __deepcopy__(
        &self,
        py: Python<'_>,
        _memo: &Bound<'_, PyAny>,
    ) -> PyResult<PyWeightedHistogram> {
        self.copy(py)
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let b = self.read(py, |h| h.to_bytes())?;
        Ok(PyBytes::new(py, &b))
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<PyWeightedHistogram> {
        guard(|| {
            Ok(PyWeightedHistogram {
                inner: Mutex::new(WeightedHistogram::from_bytes(data).map_err(to_py)?),
            })
        })
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let ctor = py.get_type::<PyWeightedHistogram>().getattr("from_bytes")?;
        let args = PyTuple::new(py, [self.to_bytes(py)?])?;
        PyTuple::new(py, [ctor.into_any(), args.into_any()])
    }

    /// The counts alone, as a `Histogram` (a copy).
    #[getter]
    fn counts(&self, py: Python<'_>) -> PyResult<PyHistogram> {
        Ok(PyHistogram::wrap(self.read(py, |h| h.counts().clone())?))
    }

    #[getter]
    fn bins(&self, py: Python<'_>) -> PyResult<usize> {
        self.read(py, |h| h.counts().bins())
    }

    #[getter]
    fn total_weight(&self, py: Python<'_>) -> PyResult<f64> {
        self.read(py, |h| h.total_weight())
    }

    /// `(bins, at_min, at_max, zeros)`: the weight sums of the occupied bins (as the counts'
    /// `occupied` bins), of the values equal to the exact min and max, and of the zeros.
    fn weight_sums<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyArray1<f64>>, f64, f64, f64)> {
        let (b, a, m, z) = self.read(py, |h| h.weight_sums())?;
        Ok((PyArray1::from_vec(py, b), a, m, z))
    }

    fn __richcmp__(
        &self,
        py: Python<'_>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let Ok(other) = other.cast::<PyWeightedHistogram>() else {
            return Ok(py.NotImplemented());
        };
        let theirs = other.get().read(py, |h| h.clone())?;
        let eq = self.read(py, |h| *h == theirs)?;
        match op {
            CompareOp::Eq => Ok(eq.into_pyobject(py)?.to_owned().into_any().unbind()),
            CompareOp::Ne => Ok((!eq).into_pyobject(py)?.to_owned().into_any().unbind()),
            _ => Ok(py.NotImplemented()),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.read(py, |h| {
            let c = h.counts();
            format!(
                "WeightedHistogram(bins={}, total={}, total_weight={:.6e}, min={}, max={})",
                c.bins(),
                c.total(),
                h.total_weight(),
                c.min().map_or("None".into(), |x| format!("{x:?}")),
                c.max().map_or("None".into(), |x| format!("{x:?}")),
            )
        })
    }
}
