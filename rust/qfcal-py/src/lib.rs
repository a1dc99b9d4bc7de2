//! Thin PyO3 layer over qfcal-core: array borrowing, GIL release, error mapping, pickling.

use std::panic::{catch_unwind, AssertUnwindSafe};

use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use qfcal_core::histogram::DEFAULT_BINS;
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

/// Adds a readonly view's values to `h`: zero-copy for contiguous input, chunk by chunk otherwise.
fn feed<T: core::histogram::Sample + numpy::Element>(
    py: Python<'_>,
    h: &mut core::Histogram,
    arr: &Bound<'_, PyArrayDyn<T>>,
    swap: impl Fn(T) -> T + Sync,
    swapped: bool,
) -> PyResult<()> {
    let ro = arr.readonly();
    if let (Ok(slice), false) = (ro.as_slice(), swapped) {
        py.detach(|| {
            guard(|| {
                h.update(slice, 0);
                Ok(())
            })
        })
    } else {
        let view = ro.as_array();
        py.detach(|| {
            guard(|| {
                let mut it = view.iter();
                h.update_chunked(|buf: &mut Vec<T>| {
                    for _ in 0..core::histogram::BLOCK * 4 {
                        match it.next() {
                            Some(&x) => buf.push(if swapped { swap(x) } else { x }),
                            None => return false,
                        }
                    }
                    true
                });
                Ok(())
            })
        })
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
#[pyclass(module = "qfcal._core", name = "Histogram", eq)]
#[derive(Clone, PartialEq)]
struct PyHistogram {
    inner: core::Histogram,
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
        Ok(PyHistogram {
            inner: core::Histogram::new(b).map_err(to_py)?,
        })
    }

    fn update(&mut self, py: Python<'_>, values: &Bound<'_, PyAny>) -> PyResult<()> {
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
        let swapped = !dtype.getattr("isnative")?.extract::<bool>()?;
        // A byte-swapped array is read as native and swapped chunk by chunk.
        let arr = if swapped {
            arr.call_method1("view", (dtype.call_method1("newbyteorder", ("=",))?,))?
        } else {
            arr
        };
        let h = &mut self.inner;
        match size {
            4 => feed(
                py,
                h,
                arr.cast::<PyArrayDyn<f32>>()?,
                |x: f32| f32::from_bits(x.to_bits().swap_bytes()),
                swapped,
            ),
            8 => feed(
                py,
                h,
                arr.cast::<PyArrayDyn<f64>>()?,
                |x: f64| f64::from_bits(x.to_bits().swap_bytes()),
                swapped,
            ),
            _ => {
                let a = arr.cast::<PyArrayDyn<half::f16>>()?;
                let ro = a.readonly();
                let view = ro.as_array();
                py.detach(|| {
                    guard(|| {
                        let mut it = view.iter();
                        h.update_chunked(|buf: &mut Vec<f32>| {
                            for _ in 0..core::histogram::BLOCK * 4 {
                                match it.next() {
                                    Some(&x) => {
                                        let x = if swapped {
                                            half::f16::from_bits(x.to_bits().swap_bytes())
                                        } else {
                                            x
                                        };
                                        buf.push(x.to_f32())
                                    }
                                    None => return false,
                                }
                            }
                            true
                        });
                        Ok(())
                    })
                })
            }
        }
    }

    fn merge(slf: &Bound<'_, Self>, other: &Bound<'_, Self>) -> PyResult<()> {
        // `h.merge(h)` doubles `h`: read the other side before borrowing this one mutably.
        let theirs = other.borrow().inner.clone();
        guard(|| slf.borrow_mut().inner.merge(&theirs).map_err(to_py))
    }

    fn __add__(&self, other: &PyHistogram) -> PyResult<PyHistogram> {
        let mut out = self.clone();
        guard(|| out.inner.merge(&other.inner).map_err(to_py))?;
        Ok(out)
    }

    fn __iadd__(&mut self, other: &PyHistogram) -> PyResult<()> {
        guard(|| self.inner.merge(&other.inner).map_err(to_py))
    }

    fn copy(&self) -> PyHistogram {
        self.clone()
    }

    fn __copy__(&self) -> PyHistogram {
        self.clone()
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> PyHistogram {
        self.clone()
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<PyHistogram> {
        guard(|| {
            Ok(PyHistogram {
                inner: core::Histogram::from_bytes(data).map_err(to_py)?,
            })
        })
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let ctor = py.get_type::<PyHistogram>().getattr("from_bytes")?;
        let args = PyTuple::new(py, [self.to_bytes(py)])?;
        PyTuple::new(py, [ctor.into_any(), args.into_any()])
    }

    #[getter]
    fn bins(&self) -> usize {
        self.inner.bins()
    }
    #[getter]
    fn counts<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.inner.occupied().1.to_vec().into_pyarray(py).into_any()
    }
    #[getter]
    fn edges<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.inner.edges().into_pyarray(py).into_any()
    }
    #[getter]
    fn bin_width(&self) -> Option<f64> {
        self.inner.bin_width()
    }
    #[getter]
    fn min(&self) -> Option<f64> {
        self.inner.min()
    }
    #[getter]
    fn max(&self) -> Option<f64> {
        self.inner.max()
    }
    #[getter]
    fn total(&self) -> u64 {
        self.inner.total()
    }
    #[getter]
    fn finite(&self) -> u64 {
        self.inner.finite()
    }
    #[getter]
    fn nonzero(&self) -> u64 {
        self.inner.nonzero()
    }
    #[getter]
    fn zeros(&self) -> u64 {
        self.inner.zeros()
    }
    #[getter]
    fn nan(&self) -> u64 {
        self.inner.nan()
    }
    #[getter]
    fn pos_inf(&self) -> u64 {
        self.inner.pos_inf()
    }
    #[getter]
    fn neg_inf(&self) -> u64 {
        self.inner.neg_inf()
    }

    /// Counts and edges with the zeros put back into the bin that holds 0 (the grid widened to
    /// reach 0 when needed): what `np.histogram` would give on the same edges.
    fn to_numpy<'py>(&self, py: Python<'py>) -> Bound<'py, PyTuple> {
        let (first, counts, k) = self.inner.with_zeros_binned();
        let w = 2f64.powi(k);
        let edges: Vec<f64> = if counts.is_empty() {
            Vec::new()
        } else {
            (0..=counts.len())
                .map(|i| (first + i as i64) as f64 * w)
                .collect()
        };
        PyTuple::new(
            py,
            [
                counts.into_pyarray(py).into_any(),
                edges.into_pyarray(py).into_any(),
            ],
        )
        .expect("a pair")
    }

    fn __repr__(&self) -> String {
        let h = &self.inner;
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
    Dist::new(counts, edges, 0.0).map_err(to_py)
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
        Ok(h) => h.borrow().inner.to_dist().map_err(to_py)?,
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
    if !(scale > 0.0 && scale.is_finite()) || qmin >= qmax || !(qmin..=qmax).contains(&zero_point) {
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

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHistogram>()?;
    m.add_class::<PySearchResult>()?;
    m.add_function(wrap_pyfunction!(search, m)?)?;
    m.add_function(wrap_pyfunction!(methods, m)?)?;
    m.add_function(wrap_pyfunction!(_search_result, m)?)?;
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
