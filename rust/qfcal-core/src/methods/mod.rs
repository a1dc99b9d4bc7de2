//! The range-search methods: qfcal's own and the peers', all on the same [`Dist`] and grid rules.

pub mod entropy;
pub mod greedy;
pub mod optimal;
pub mod tf_enhanced;

use crate::dist::Dist;
use crate::spec::{Encoding, QuantSpec};

/// `minmax`: the smallest scale whose range covers every value.
pub fn minmax(dist: &Dist, spec: &QuantSpec) -> Encoding {
    spec.covering(dist.min(), dist.max())
}

/// `percentile`: the range between the `(100 - p)`-th and `p`-th percentiles (of `|x|` for a
/// symmetric grid, as ONNX Runtime does).
pub fn percentile(dist: &Dist, spec: &QuantSpec, p: f64) -> Encoding {
    let f = p / 100.0;
    if spec.symmetric {
        let t = dist.abs_quantile(f);
        let a = if dist.min() < 0.0 { -t } else { 0.0 };
        spec.covering(a, t)
    } else {
        spec.covering(dist.quantile(1.0 - f), dist.quantile(f))
    }
}
