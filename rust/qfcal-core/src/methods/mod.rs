//! The range-search methods: qfcal's own and the peers', all on the same [`Dist`] and grid rules.

mod brent;
pub mod entropy;
pub mod evaluator;
pub mod greedy;
pub mod optimal;
pub mod tf_enhanced;

use crate::dist::Dist;
use crate::spec::{Encoding, QuantSpec};

/// `minmax`: the observed minimum and maximum, placed on the grid as TensorFlow and ONNX Runtime
/// place them (see [`QuantSpec::fitting`]).
pub fn minmax(dist: &Dist, spec: &QuantSpec) -> Encoding {
    spec.fitting(dist.min(), dist.max())
}

/// `percentile`: the range between the `(100 - p)`-th and `p`-th percentiles (of `|x|` for a
/// symmetric grid, as ONNX Runtime does). A range that collapses to zero (a tensor that is
/// mostly exact zeros) falls back to min/max instead of representing nothing.
pub fn percentile(dist: &Dist, spec: &QuantSpec, p: f64) -> Encoding {
    let f = p / 100.0;
    let (a, b) = if spec.symmetric {
        let t = dist.abs_quantile(f);
        (if dist.min() < 0.0 { -t } else { 0.0 }, t)
    } else {
        (dist.quantile(1.0 - f), dist.quantile(f))
    };
    if a >= 0.0 && b <= 0.0 && dist.n_bins() > 0 {
        return minmax(dist, spec);
    }
    spec.fitting(a.max(dist.min()), b.min(dist.max()))
}
