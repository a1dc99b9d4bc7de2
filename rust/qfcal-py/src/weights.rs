//! `_channel_scales`: each weight channel's scale from its exact values (the core's
//! `weights::channel_scales`), for `qfcal.search_weights`, which shapes the arrays.

use numpy::{PyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use qfcal_core::spec::{QuantSpec, MAX_LEVELS};
use qfcal_core::weights::channel_scales;
use qfcal_core::SpecOptions;

use crate::args::IntArg;
use crate::errors::{guard, to_py};

type Columns<'py> = (
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
);

/// `(scale, mse, fit_scale, fit_mse, power)` per row of a C-contiguous float32 `(channels, n)`
/// array, on the symmetric grid of the options (as in `search`). The GIL is released.
#[pyfunction]
#[pyo3(signature = (values, *, bits = IntArg(Ok(8)), signed = true, narrow_range = false,
                    qmin = None, qmax = None, widen = true, threads = 0),
       text_signature = "(values, *, bits=8, signed=True, narrow_range=False, qmin=None, qmax=None, widen=True, threads=0)")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn _channel_scales<'py>(
    py: Python<'py>,
    values: PyReadonlyArray2<'py, f32>,
    bits: IntArg,
    signed: bool,
    narrow_range: bool,
    qmin: Option<IntArg>,
    qmax: Option<IntArg>,
    widen: bool,
    threads: usize,
) -> PyResult<Columns<'py>> {
    let levels = format!("-{MAX_LEVELS}..={MAX_LEVELS}");
    let spec = QuantSpec::new(&SpecOptions {
        bits: bits.get_as("bits", "2..=16")?,
        signed,
        symmetric: true,
        narrow_range,
        qmin: qmin.map(|v| v.get("qmin", &levels)).transpose()?,
        qmax: qmax.map(|v| v.get("qmax", &levels)).transpose()?,
    })
    .map_err(to_py)?;
    let channels = values.shape()[0];
    let slice = values.as_slice()?;
    let rows = py.detach(|| {
        guard(|| channel_scales(slice, channels, &spec, widen, threads).map_err(to_py))
    })?;
    let col = |f: fn(&qfcal_core::weights::ChannelScale) -> f64| {
        PyArray1::from_vec(py, rows.iter().map(f).collect())
    };
    Ok((
        col(|c| c.scale),
        col(|c| c.mse),
        col(|c| c.fit_scale),
        col(|c| c.fit_mse),
        col(|c| c.power),
    ))
}
