//! Thin PyO3 layer over qfcal-core, built by maturin as `qfcal._core`. This file only registers;
//! each concern has its file:
//!
//! * `errors`: exception types, core errors to Python exceptions, the panic guard;
//! * `args`: integer arguments checked with messages that name them;
//! * `arrays`: which numpy arrays `update` reads and how (dtype, byte order, strides);
//! * `histogram`: the `Histogram` class (locking, GIL release, pickling);
//! * `search`: `search`, `score`, `check_search_options`, `SearchResult`;
//! * `weighted`: the `WeightedHistogram` class (counts and loss-aware weights);
//! * `weights`: each weight channel's scale, from its exact values;
//! * `format`: the text of `repr()`.

mod args;
mod arrays;
mod errors;
mod format;
mod histogram;
mod search;
mod weighted;
mod weights;

use pyo3::prelude::*;
use qfcal_core::histogram::{DEFAULT_BINS, MAX_BINS, MIN_BINS};

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<histogram::PyHistogram>()?;
    m.add_class::<search::PySearchResult>()?;
    m.add_class::<weighted::PyWeightedHistogram>()?;
    m.add_function(wrap_pyfunction!(search::search, m)?)?;
    m.add_function(wrap_pyfunction!(search::score, m)?)?;
    m.add_function(wrap_pyfunction!(search::check_search_options, m)?)?;
    m.add_function(wrap_pyfunction!(search::methods, m)?)?;
    m.add_function(wrap_pyfunction!(search::_search_result, m)?)?;
    m.add_function(wrap_pyfunction!(weights::_channel_scales, m)?)?;
    #[cfg(debug_assertions)]
    m.add_function(wrap_pyfunction!(errors::_debug_panic, m)?)?;
    m.add(
        "EmptyHistogramError",
        m.py().get_type::<errors::EmptyHistogramError>(),
    )?;
    m.add("DEFAULT_BINS", DEFAULT_BINS)?;
    m.add("MIN_BINS", MIN_BINS)?;
    m.add("MAX_BINS", MAX_BINS)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

// The `Histogram(bins=4096)` text signature spells the default as a literal for the stubs.
const _: () = assert!(DEFAULT_BINS == 4096);
