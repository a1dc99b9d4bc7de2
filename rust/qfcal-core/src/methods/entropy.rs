//! `entropy`: TensorRT's KL-divergence calibration (as in ONNX Runtime and NVIDIA's tools).
//!
//! The density of `|x|` on 2048 bins, the first bin's count replaced by the second's (the
//! zero spike suppressed, as NVIDIA's tools do); for each threshold bin `i` from 128 on, the reference
//! distribution (outliers folded into its last bin) is compared with its 128-level quantized
//! copy, and the threshold of least KL divergence wins. The range is `[-t, t]` (or `[0, t]` for
//! non-negative data), encoded on the grid.

use crate::dist::Dist;
use crate::spec::{Encoding, QuantSpec};

const BINS: usize = 2048;

pub fn entropy(dist: &Dist, spec: &QuantSpec) -> Encoding {
    let cover = spec.fitting(dist.min(), dist.max());
    if dist.n_bins() == 0 {
        return cover;
    }
    let levels = ((spec.levels() / 2) as usize).clamp(2, BINS);
    let (mut hist, w) = dist.abs_resampled(BINS);
    // As NVIDIA's HistogramCalibrator (pytorch-quantization, Model Optimizer) does: the first
    // bin takes the second's count. Otherwise the spike of exact zeros (ReLU outputs, image
    // borders) dominates the first quantized level and the least divergence lies at a
    // threshold that clips most of the distribution away.
    hist[0] = hist[1];
    let i = best_threshold(&hist, levels);
    let t = i as f64 * w;
    // [-t, t] on the sides that hold data, and no farther than the data reach
    spec.fitting((-t).max(dist.min()), t.min(dist.max()))
}

/// The threshold bin of least KL divergence, from prefix sums in O(levels) per threshold.
///
/// For threshold `i` the reference `p` is `hist[..i]` with the outliers `tail[i]` added to its
/// last bin, so it holds all the mass `m`; the quantized `q` spreads each level's sum `s_j`
/// evenly over its `n_j` nonzero bins, so `q` sums to `h_i = Σ hist[..i]`. With both
/// normalized, `KL = (Σ p ln p − Σ_j ln(s_j / n_j) · P_j) / m + ln(h_i / m)`, `P_j` being the
/// mass of `p` in level `j` (`s_j`, plus the outliers in the last level). A nonzero last bin of
/// `p` over an empty bin of `hist` makes `q` zero where `p` is not: infinite divergence.
fn best_threshold(hist: &[f64], levels: usize) -> usize {
    let n = hist.len();
    let mut sum = vec![0.0; n + 1];
    let mut nz = vec![0usize; n + 1];
    let mut plogp = vec![0.0; n + 1];
    for k in 0..n {
        let h = hist[k];
        sum[k + 1] = sum[k] + h;
        nz[k + 1] = nz[k] + (h != 0.0) as usize;
        plogp[k + 1] = plogp[k] + if h > 0.0 { h * h.ln() } else { 0.0 };
    }
    let m = sum[n];
    let mut best = (f64::INFINITY, n);
    if m <= 0.0 {
        return n;
    }
    for i in levels..=n {
        let tail = m - sum[i];
        let last = hist[i - 1];
        let h_i = sum[i];
        if h_i <= 0.0 || (last == 0.0 && tail > 0.0) {
            continue;
        }
        let p_last = last + tail;
        let pp = plogp[i - 1]
            + if p_last > 0.0 {
                p_last * p_last.ln()
            } else {
                0.0
            };
        let merged = i / levels;
        let mut pq = 0.0;
        for j in 0..levels {
            let s = j * merged;
            let e = if j + 1 == levels { i } else { s + merged };
            let (s_j, n_j) = (sum[e] - sum[s], nz[e] - nz[s]);
            if n_j == 0 {
                continue;
            }
            let mass = if j + 1 == levels { s_j + tail } else { s_j };
            pq += mass * (s_j / n_j as f64).ln();
        }
        let kl = (pp - pq) / m + (h_i / m).ln();
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct computation (TensorRT's loop, O(i) per threshold).
    fn direct(hist: &[f64], levels: usize) -> (usize, Vec<f64>) {
        let n = hist.len();
        let mut kls = vec![f64::INFINITY; n + 1];
        let (mut p, mut q) = (vec![0.0; n], vec![0.0; n]);
        let tail = |i: usize| hist[i..].iter().sum::<f64>();
        let mut best = (f64::INFINITY, n);
        for i in levels..=n {
            p[..i].copy_from_slice(&hist[..i]);
            p[i - 1] += tail(i);
            let merged = i / levels;
            for j in 0..levels {
                let s = j * merged;
                let e = if j + 1 == levels { i } else { s + merged };
                let sum: f64 = hist[s..e].iter().sum();
                let nz = hist[s..e].iter().filter(|&&v| v != 0.0).count();
                for k in s..e {
                    q[k] = if hist[k] != 0.0 { sum / nz as f64 } else { 0.0 };
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
            kls[i] = kl;
            if kl < best.0 {
                best = (kl, i);
            }
        }
        (best.1, kls)
    }

    #[test]
    fn prefix_sums_pick_the_direct_threshold() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for case in 0..40 {
            let n = 256 + 64 * (case % 5);
            let levels = [16, 32, 64][case % 3];
            let hist: Vec<f64> = (0..n)
                .map(|k| {
                    let x = k as f64 / n as f64;
                    let base = (-(x * (4.0 + case as f64)).powi(2)).exp() * 1e4;
                    let keep = rnd() < [1.0, 0.6, 0.2][case % 3];
                    if keep {
                        (base * rnd() + (rnd() < 0.05) as u8 as f64).floor()
                    } else {
                        0.0
                    }
                })
                .collect();
            let fast = best_threshold(&hist, levels);
            let (slow, kls) = direct(&hist, levels);
            // equal, or a tie the two roundings order differently
            assert!(
                fast == slow || (kls[fast] - kls[slow]).abs() <= 1e-12 * kls[slow].abs().max(1e-12),
                "case {case}: {fast} ({}) vs {slow} ({})",
                kls[fast],
                kls[slow]
            );
        }
    }
}
