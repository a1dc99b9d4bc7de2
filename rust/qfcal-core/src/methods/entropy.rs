//! `entropy`: TensorRT's KL-divergence calibration (as in ONNX Runtime and NVIDIA's tools).
//!
//! The density of `|x|` on 2048 bins; for each threshold bin `i` from 128 on, the reference
//! distribution (outliers folded into its last bin) is compared with its 128-level quantized
//! copy, and the threshold of least KL divergence wins. The range is `[-t, t]` (or `[0, t]` for
//! non-negative data), encoded on the grid.

use crate::dist::Dist;
use crate::spec::{Encoding, QuantSpec};

const BINS: usize = 2048;

pub fn entropy(dist: &Dist, spec: &QuantSpec) -> Encoding {
    let cover = spec.covering(dist.min(), dist.max());
    if dist.n_bins() == 0 {
        return cover;
    }
    let levels = ((spec.levels() / 2) as usize).clamp(2, BINS);
    let (hist, w) = dist.abs_resampled(BINS);
    let mut best = (f64::INFINITY, BINS);
    let mut p = vec![0.0; BINS];
    let mut q = vec![0.0; BINS];
    let mut tail: Vec<f64> = vec![0.0; BINS + 1];
    for i in (0..BINS).rev() {
        tail[i] = tail[i + 1] + hist[i];
    }
    for i in levels..=BINS {
        p[..i].copy_from_slice(&hist[..i]);
        p[i - 1] += tail[i];
        let merged = i / levels;
        for j in 0..levels {
            let s = j * merged;
            let e = if j + 1 == levels { i } else { s + merged };
            let sum: f64 = hist[s..e].iter().sum();
            let nz = hist[s..e].iter().filter(|&&v| v != 0.0).count();
            for k in s..e {
                q[k] = if hist[k] != 0.0 && nz > 0 {
                    sum / nz as f64
                } else {
                    0.0
                };
            }
        }
        let (ps, qs): (f64, f64) = (p[..i].iter().sum(), q[..i].iter().sum());
        if ps <= 0.0 || qs <= 0.0 {
            continue;
        }
        let mut kl = 0.0;
        for k in 0..i {
            if p[k] > 0.0 {
                if q[k] <= 0.0 {
                    kl = f64::INFINITY;
                    break;
                }
                let (pk, qk) = (p[k] / ps, q[k] / qs);
                kl += pk * (pk / qk).ln();
            }
        }
        if kl < best.0 {
            best = (kl, i);
        }
    }
    let t = best.1 as f64 * w;
    let a = if dist.min() < 0.0 { -t } else { 0.0 };
    spec.covering(a, t)
}
