//! `greedy`: the caffe2 `norm_minimization` quantile walk that PyTorch's `HistogramObserver` uses.
//!
//! Starting from the full range, each step moves whichever end lets a 1e-5 quantile step drop
//! more bins, and the walk stops at the first step whose error grows. The error of a candidate
//! range is qfcal's exact loss of the covering encoding (PyTorch estimates it on 2^bits bins
//! whatever `quant_min`/`quant_max` say; here the level count follows the grid).

use crate::cost::loss;
use crate::dist::Dist;
use crate::spec::{Encoding, QuantSpec};

const STEP: f64 = 1e-5;

pub fn greedy(dist: &Dist, spec: &QuantSpec) -> Encoding {
    let b = dist.n_bins();
    let full = spec.fitting(dist.min(), dist.max());
    if b == 0 {
        return full;
    }
    // The pieces (bins, and point masses at the extremes) in order, with cumulative counts; the
    // zeros join the first piece that reaches above 0 (PyTorch has no separate zeros).
    let (lo, hi): (Vec<f64>, Vec<f64>) = dist.pieces().map(|(a, b, _)| (a, b)).unzip();
    let zi = hi.iter().position(|&e| e > 0.0).unwrap_or(b - 1);
    let mut csum = Vec::with_capacity(b);
    let mut acc = 0.0;
    for (i, (_, _, c)) in dist.pieces().enumerate() {
        acc += c + if i == zi { dist.zeros() } else { 0.0 };
        csum.push(acc);
    }
    let total = acc;
    let enc_of = |s: usize, e: usize| spec.fitting(lo[s], hi[e]);
    let err = |s: usize, e: usize| loss(dist, &enc_of(s, e)).mse();
    let (mut alpha, mut beta) = (0.0f64, 1.0f64);
    let (mut start, mut end) = (0usize, b - 1);
    let mut norm_min = f64::INFINITY;
    while alpha < beta {
        let na = alpha + STEP;
        let nb = beta - STEP;
        // first l with csum[l] >= na*total, last r with csum[r] <= nb*total (as PyTorch's loops)
        let l = csum
            .partition_point(|&c| c < na * total)
            .min(end.max(start));
        let l = l.max(start);
        let r = {
            let p = csum.partition_point(|&c| c <= nb * total);
            if p == 0 {
                0
            } else {
                p - 1
            }
        };
        let r = r.max(start).min(end);
        let (mut ns, mut ne) = (start, end);
        if l.saturating_sub(start) > end.saturating_sub(r) {
            ns = l;
            alpha = na;
        } else {
            ne = r;
            beta = nb;
        }
        if ns == start && ne == end {
            continue;
        }
        if ns > ne {
            break;
        }
        let norm = err(ns, ne);
        if norm > norm_min {
            break;
        }
        norm_min = norm;
        start = ns;
        end = ne;
    }
    enc_of(start, end)
}
