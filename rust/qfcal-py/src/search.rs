//! `search` and what goes with it: its options (checked by one code path, which
//! `check_search_options` runs alone), the histogram or `(counts, edges)` pair it reads, and the
//! `SearchResult` class.

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{IntoPyDict, PyTuple};
use qfcal_core::cost::Loss;
use qfcal_core::spec::{Encoding, MAX_LEVELS};
use qfcal_core::{self as core, Dist, Method, SearchOptions, SpecOptions};

use crate::args::IntArg;
use crate::errors::{guard, to_py};
use crate::format::search_result_repr;
use crate::histogram::PyHistogram;
use crate::weighted::PyWeightedHistogram;

/// The result of a search: a frozen value object.
#[pyclass(module = "qfcal._core", name = "SearchResult", frozen, eq)]
#[derive(Clone, PartialEq)]
pub(crate) struct PySearchResult {
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
        search_result_repr(&self.r)
    }
}

/// The search options as given to `search` / `check_search_options`: their Python-level checks
/// (method name, integer ranges). The core checks the rest ([`SearchOptions::check`]).
#[allow(clippy::too_many_arguments)]
fn search_options(
    bits: IntArg,
    symmetric: bool,
    signed: bool,
    narrow_range: bool,
    qmin: Option<IntArg>,
    qmax: Option<IntArg>,
    gamma: f64,
    method: &str,
    percentile: f64,
) -> PyResult<SearchOptions> {
    let method: Method = method.parse().map_err(to_py)?;
    let bits: u32 = bits.get_as("bits", "2..=16")?;
    let levels = format!("-{MAX_LEVELS}..={MAX_LEVELS}");
    let qmin = qmin.map(|v| v.get("qmin", &levels)).transpose()?;
    let qmax = qmax.map(|v| v.get("qmax", &levels)).transpose()?;
    Ok(SearchOptions {
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
    })
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
    static ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let asarray = ASARRAY.import(py, "numpy", "asarray")?;
    let float64 = [("dtype", "float64")].into_py_dict(py)?;
    let mut out: Vec<Vec<f64>> = Vec::new();
    for (i, name) in ["counts", "edges"].iter().enumerate() {
        let a = asarray.call((pair.get_item(i)?,), Some(&float64))?;
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

#[pyfunction]
#[pyo3(signature = (hist, *, bits = IntArg(Ok(8)), symmetric = false, signed = true, narrow_range = false,
                    qmin = None, qmax = None, gamma = 1.0, method = "optimal", percentile = 99.99),
       text_signature = "(hist, *, bits=8, symmetric=False, signed=True, narrow_range=False, qmin=None, qmax=None, gamma=1.0, method='optimal', percentile=99.99)")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn search(
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
    let opts = search_options(
        bits,
        symmetric,
        signed,
        narrow_range,
        qmin,
        qmax,
        gamma,
        method,
        percentile,
    )?;
    let dist = dist_of(py, hist)?;
    // `core::search` runs `opts.check()` first: the same check as `check_search_options`.
    let r = py.detach(|| guard(|| core::search(&dist, &opts).map_err(to_py)))?;
    Ok(PySearchResult { r })
}

/// The density `search` reads from a Histogram or a `(counts, edges)` pair.
fn dist_of(py: Python<'_>, hist: &Bound<'_, PyAny>) -> PyResult<Dist> {
    if let Ok(h) = hist.cast::<PyWeightedHistogram>() {
        return h.get().read(py, |h| h.to_dist())?.map_err(to_py);
    }
    match hist.cast::<PyHistogram>() {
        Ok(h) => h.get().read(py, |h| h.to_dist())?.map_err(to_py),
        Err(_) => dist_from_pair(py, hist),
    }
}

/// `result`'s encoding scored on `hist`: its loss there (with `gamma`, by default the result's).
#[pyfunction]
#[pyo3(signature = (hist, result, *, gamma = None), text_signature = "(hist, result, *, gamma=None)")]
pub(crate) fn score(
    py: Python<'_>,
    hist: &Bound<'_, PyAny>,
    result: PyRef<'_, PySearchResult>,
    gamma: Option<f64>,
) -> PyResult<PySearchResult> {
    let gamma = gamma.unwrap_or(result.r.gamma);
    if !(gamma > 0.0 && gamma.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "gamma must be a positive finite number, got {gamma}"
        )));
    }
    let dist = dist_of(py, hist)?;
    let (enc, method) = (result.r.encoding, result.r.method);
    let r = py.detach(|| {
        guard(|| {
            dist.require_values().map_err(to_py)?;
            Ok(core::search::evaluate(&dist, enc, gamma, method))
        })
    })?;
    Ok(PySearchResult { r })
}

/// Checks search options exactly as `search` does, without a histogram.
#[pyfunction]
#[pyo3(signature = (*, bits = IntArg(Ok(8)), symmetric = false, signed = true, narrow_range = false,
                    qmin = None, qmax = None, gamma = 1.0, method = "optimal", percentile = 99.99),
       text_signature = "(*, bits=8, symmetric=False, signed=True, narrow_range=False, qmin=None, qmax=None, gamma=1.0, method='optimal', percentile=99.99)")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_search_options(
    bits: IntArg,
    symmetric: bool,
    signed: bool,
    narrow_range: bool,
    qmin: Option<IntArg>,
    qmax: Option<IntArg>,
    gamma: f64,
    method: &str,
    percentile: f64,
) -> PyResult<()> {
    let opts = search_options(
        bits,
        symmetric,
        signed,
        narrow_range,
        qmin,
        qmax,
        gamma,
        method,
        percentile,
    )?;
    guard(|| opts.check().map(|_| ()).map_err(to_py))
}

/// Rebuilds a pickled `SearchResult` (its `__reduce__`); checks the grid it is given.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub(crate) fn _search_result(
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
    if !(scale > 0.0 && scale.is_finite())
        || qmin >= qmax
        || !(qmin..=qmax).contains(&zero_point)
        || qmin < -MAX_LEVELS
        || qmax > MAX_LEVELS
    {
        return Err(PyValueError::new_err(format!(
            "not a SearchResult's state: scale {scale}, zero_point {zero_point}, qmin {qmin}, \
             qmax {qmax}"
        )));
    }
    Ok(PySearchResult {
        r: core::SearchResult {
            encoding: Encoding {
                scale,
                zero_point,
                qmin,
                qmax,
            },
            loss: Loss { rounding, clipping },
            gamma,
            sqnr_db,
            method,
        },
    })
}

/// The names of the search methods, `optimal` first.
#[pyfunction]
pub(crate) fn methods() -> Vec<&'static str> {
    Method::ALL.iter().map(|m| m.name()).collect()
}
