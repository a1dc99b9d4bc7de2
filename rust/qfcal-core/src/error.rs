//! The one error type of the core. The bindings map each variant to a Python exception.

use std::fmt;

/// Everything that can go wrong in the core, with a message that names the argument and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An argument is out of its documented domain (Python: `ValueError`).
    InvalidArgument(String),
    /// A search over a histogram that holds no finite value (Python: `qfcal.EmptyHistogramError`).
    Empty(String),
    /// Two histograms that cannot be merged exactly (Python: `ValueError`).
    Incompatible(String),
    /// A byte string that is not a qfcal histogram of a known version (Python: `ValueError`).
    Corrupt(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m)
            | Error::Empty(m)
            | Error::Incompatible(m)
            | Error::Corrupt(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for an `InvalidArgument` error.
pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}
