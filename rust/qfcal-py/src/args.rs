//! Arguments read from Python the way qfcal reports them: out-of-range values name the argument,
//! its range and the value, whatever their size.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// An integer argument that always extracts (anything with `__index__`): values beyond i64 are
/// kept as text, so that the range check, not an OverflowError, reports them.
pub(crate) struct IntArg(pub(crate) std::result::Result<i64, String>);

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
    pub(crate) fn get(&self, name: &str, range: &str) -> PyResult<i64> {
        self.0.clone().map_err(|v| out_of_range(name, range, v))
    }

    /// The value as a `T` (`usize`, `u32`, ...), or the same ValueError as [`IntArg::get`].
    pub(crate) fn get_as<T: TryFrom<i64>>(&self, name: &str, range: &str) -> PyResult<T> {
        let v = self.get(name, range)?;
        T::try_from(v).map_err(|_| out_of_range(name, range, v))
    }
}

/// `{name} must be in {range}, got {value}`.
fn out_of_range(name: &str, range: &str, value: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{name} must be in {range}, got {value}"))
}
