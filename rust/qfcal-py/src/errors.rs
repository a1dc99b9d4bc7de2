//! How failures reach Python: the exception types, each core error mapped to its exception, and
//! the guard that turns a Rust panic into a RuntimeError instead of a crash.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use qfcal_core::Error;

create_exception!(
    qfcal._core,
    EmptyHistogramError,
    PyValueError,
    "A search was asked of a histogram that holds no finite value."
);

/// The Python exception of a core error (the variants' documentation names each one).
pub(crate) fn to_py(e: Error) -> PyErr {
    match e {
        Error::Empty(m) => EmptyHistogramError::new_err(m),
        Error::InvalidArgument(m) | Error::Incompatible(m) | Error::Corrupt(m) => {
            PyValueError::new_err(m)
        }
    }
}

/// Runs `f`, turning a Rust panic into a Python RuntimeError instead of a crash.
pub(crate) fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
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

/// The error of a histogram whose lock a panic poisoned: it may have been left half-updated.
pub(crate) fn poisoned() -> PyErr {
    PyRuntimeError::new_err(
        "this Histogram was left incomplete by an internal error in qfcal (please report it): \
         its counts are no longer exact",
    )
}

/// Debug builds only (release builds, wheels included, have no way to make the core panic):
/// panics inside the guard, under `h`'s lock when given, so that the tests can check that a
/// panic reaches Python as a RuntimeError and that a histogram it interrupted refuses to be used.
#[cfg(debug_assertions)]
#[pyfunction]
#[pyo3(signature = (h = None))]
pub(crate) fn _debug_panic(
    py: Python<'_>,
    h: Option<PyRef<'_, crate::histogram::PyHistogram>>,
) -> PyResult<()> {
    match h {
        Some(h) => h.write(py, |_| panic!("forced panic (debug build)")),
        None => guard(|| panic!("forced panic (debug build)")),
    }
}
