//! `tf_enhanced`: AIMET's TF-Enhanced analyzer. It scores a grid of 17 scales (fractions of the
//! min/max scale) by 21 offsets (plus the observed one) on bin midpoints, with the clipping noise
//! weighted 3x against the rounding noise, and keeps the best.

use crate::dist::Dist;
use crate::spec::{Encoding, QuantSpec};

const DELTAS: i64 = 17;
const OFFSETS: i64 = 21;
const GAMMA: f64 = 3.0;

/// AIMET's noise estimate: every bin's values sit at its midpoint. `mids` holds the occupied
/// bins' (midpoint, count).
fn midpoint_noise(mids: &[(f64, f64)], enc: &Encoding) -> f64 {
    let (lo, hi) = (enc.min(), enc.max());
    let (l, h) = (enc.lowest_index() as f64, enc.highest_index() as f64);
    let mut noise = 0.0;
    for &(x, c) in mids {
        // the grid index rounded half away from zero; clamping first keeps it small, so the
        // integer conversion is exact (and far cheaper than a libm `round`)
        let y = (x / enc.scale).clamp(l - 1.0, h + 1.0);
        let r = (y.abs() + 0.5) as i64 as f64;
        let q = r.copysign(y).clamp(l, h) * enc.scale;
        let e = (x - q) * (x - q) * c;
        noise += if x < lo || x > hi { GAMMA * e } else { e };
    }
    noise
}

pub fn tf_enhanced(dist: &Dist, spec: &QuantSpec) -> Encoding {
    let cover = spec.fitting(dist.min(), dist.max());
    if dist.n_bins() == 0 {
        return cover;
    }
    let steps = spec.levels() - 1;
    let (l0, l1) = spec.lowest_index_range();
    let mut offsets: Vec<i64> = if l0 == l1 {
        vec![l0]
    } else {
        (0..OFFSETS)
            .map(|j| l0 + ((l1 - l0) as f64 * j as f64 / (OFFSETS - 1) as f64).round() as i64)
            .collect()
    };
    offsets.push(cover.lowest_index());
    let mids: Vec<(f64, f64)> = dist
        .pieces()
        .filter(|t| t.2 > 0.0)
        .map(|(a, b, c)| (0.5 * (a + b), c))
        .collect();
    let mut best = (midpoint_noise(&mids, &cover), cover);
    for i in 1..=DELTAS {
        let scale = (cover.scale * i as f64 / DELTAS as f64) as f32 as f64;
        // (qfcal keeps every window within half a step of the data's extremes)
        let (fa, fb) = spec.fitting_windows(scale, dist.min(), dist.max());
        for &l in &offsets {
            let l = l.clamp(-steps, 0).clamp(fa, fb.max(fa));
            if l < fa || l > fb {
                continue;
            }
            let enc = spec.encoding(scale, l);
            let n = midpoint_noise(&mids, &enc);
            if n < best.0 {
                best = (n, enc);
            }
        }
    }
    // as a float32 scale TensorFlow reproduces
    let e = best.1;
    spec.encoding(
        spec.tf_scale(e.scale, e.lowest_index(), false),
        e.lowest_index(),
    )
}
