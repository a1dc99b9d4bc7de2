//! `optimal`: the global minimum of the cost over every scale Δ > 0 and every allowed zero point.
//!
//! One concept in one file: the stages below share the search's state and constants, and each
//! is explained where it runs, which is what makes the file long.
//!
//! For a fixed Δ the [`Evaluator`] scores every zero point at once; Δ itself is searched in
//! stages, each aimed at one shape of cost landscape:
//!
//! 1. scan: geometric steps of ln Δ on a coarsened copy of the histogram, from `2·max|x|` (where
//!    everything rounds to zero) down, sparse far above the covering scale and dense around and
//!    below it, until a lower bound on the clipping loss of every smaller Δ exceeds the best cost
//!    seen; denser for small histograms, whose cost has narrow dips;
//! 2. comb and refine: the best basins of the scan are combed finely on the coarse copy (the cost
//!    is rough at small scales for spiky or sparse data) and the best tooth is refined with
//!    Brent's method on the full histogram;
//!    for a sparse histogram (fewer than 32 values per occupied bin) the cost is rough at every
//!    scale, with dips where grid points meet spikes, which the coarse copy smooths away: every
//!    stretch of the scan within 5% of its least is also combed on the full histogram, at a
//!    quarter bin width (relative to max|x|) or at most 256 teeth, and the best three refined;
//!    a dense histogram's cost can still dip between those teeth (spiky data: a small model's
//!    ReLU output), only on the full histogram: it is combed within 1.5% of the best scale and
//!    the best two teeth refined;
//! 3. clusters: data in narrow clusters (a near-constant tensor, spiky histograms) has its cost's
//!    dips where a grid point sits on a cluster, far narrower than any scan: every such scale is
//!    tried, and the best refined over its whole basin; a near-constant tensor needs only this
//!    stage, and among costs within 1e-6 the smallest scale (the tightest range) is kept;
//! 4. comb at the bin-width scale around the best point for sparse histograms (few values per
//!    bin), whose cost is a comb of spikes.
//!
//! Only windows that reach at most half a step beyond the data's extremes are scored (see
//! [`QuantSpec::fitting_windows`]): levels past the data serve no value of it. The min/max
//! encoding ([`QuantSpec::fitting`]) is always a candidate, so data that sits on a grid
//! (quantized inputs) is found exactly. The scale is finally stored as a float32 value that TensorFlow's
//! FakeQuant reproduces from min and max (see [`QuantSpec::tf_stable`]): the optimum's own when
//! it is one, else the least exact cost among the reproducible scales of the windows around it
//! (see [`reproducible`]).

use super::brent::brent;
use super::evaluator::Evaluator;
use crate::cost::loss;
use crate::dist::Dist;
use crate::spec::{Encoding, QuantSpec, FIT_TOLERANCE_STORED};
use std::f64::consts::LN_2;

/// Least scan density, points per octave.
const PER_OCTAVE: f64 = 8.0;
/// Scan density is raised, up to this, while the scan stays within `SCAN_WORK` bin-and-cell
/// visits: small, spiky histograms have narrow dips that a sparse scan would step over.
const MAX_PER_OCTAVE: f64 = 128.0;
const SCAN_WORK: f64 = 150_000.0;
/// Teeth of the comb run through each basin's bracket.
const TEETH: usize = 15;
/// Most evaluations spent on grid points placed on narrow clusters.
const CLUSTER_EVALS: usize = 384;
/// The same for a near-constant tensor, whose candidates all fit about equally well.
const NEAR_CONSTANT_EVALS: usize = 96;
/// Hard cap on scan points, whatever the data.
const MAX_SCAN: usize = 20_000;
/// Bins of the coarsened histogram used by the scan.
const COARSE_BINS: usize = 512;
/// Basins refined.
const BASINS: usize = 3;
/// Scan points combed around when the histogram has few values per bin.
const ROUGH_BASINS: usize = 16;
/// Coarse-scan costs within this factor of the least mark where a rough cost is combed.
const ROUGH_REACH: f64 = 1.05;
/// Grid indices on each side of its nearest one at which a lone extreme point mass is tried.
const ATOM_NEAR: i64 = 8;
/// Most grid indices sampled for a lone extreme point mass.
const ATOM_EVALS: usize = 32;
/// Fit limits above this multiple of the scale they are tried around are not tried.
const FIT_REACH: f64 = 1.25;
/// Half-width (in ln Δ) and teeth of the full-histogram comb around the best point.
const NEAR_REACH: f64 = 0.015;
const NEAR_TEETH: usize = 24;
/// Teeth of the sparse comb refined with Brent's method.
const SPARSE_REFINED: usize = 3;
/// Windows on each side of the min/max and the best window whose fit limits are tried.
const FIT_NEAR: i64 = 4;
/// Windows on each side of a finalist's best one whose reproducible scales are tried.
const NEAR_WINDOWS: i64 = 2;
/// At most this many occupied bins: also try the optimum of the grid of half the steps.
const TINY_BINS: usize = 64;
/// Least full-histogram evaluations of that comb.
const ROUGH_EVALS: usize = 256;
/// Work (evaluations times occupied bins and levels) that comb may spend: a histogram of a few
/// hundred values gets thousands of teeth over a wider reach, since each costs little.
const ROUGH_WORK: f64 = 4.0e5;
/// The most teeth, and the widest reach, a tiny histogram gets.
const ROUGH_EVALS_MAX: usize = 8192;
const ROUGH_REACH_MAX: f64 = 1.5;

/// The best point found so far: ln Δ and its cost on the full histogram.
type Best = (f64, f64);

/// The optimal encoding of `dist` (which must hold values) for `spec` and `gamma`.
pub fn optimal(dist: &Dist, spec: &QuantSpec, gamma: f64) -> Encoding {
    let cover = spec.fitting(dist.min(), dist.max());
    if dist.n_bins() == 0 {
        return cover;
    }
    let mut ev_f = Evaluator::new(dist, *spec, gamma);
    let lc = cover.scale.ln();
    let x_top = (2.0 * dist.max_abs()).ln().max(lc);
    let mut best: Best = (lc, ev_f.eval(cover.scale).cost);
    // Every value (but zeros) within half a cell, away from zero: a near-constant tensor,
    // one cluster for the cluster stage, which tries every scale worth having; no scan.
    let near_constant = dist.hi() - dist.lo() < 0.5 * cover.scale && dist.lo() * dist.hi() > 0.0;
    let runs = if near_constant {
        let (m1, m0) = dist.pieces().fold((0.0, 0.0), |(s1, s0), (a, b, c)| {
            (s1 + c * 0.5 * (a + b), s0 + c)
        });
        vec![(m1 / m0, m0, dist.hi() - dist.lo())]
    } else {
        narrow_clusters(dist, cover.scale)
    };
    // Few values per bin: the cost is a comb of spikes, rough at every scale.
    let rough = dist.total() < 32.0 * ev_f.nonzero_bins() as f64;
    let (mut x_low, mut bracket) = (lc - LN_2, 0.0);
    if !near_constant {
        let coarse = dist.coarsened(COARSE_BINS);
        let mut ev_c = Evaluator::new(&coarse, *spec, gamma);
        let scan = scan(&mut ev_c, spec, lc, x_top, dist.max_abs());
        x_low = scan.last().map_or(lc, |t| t.0);
        // A rough cost dips wherever a grid point meets a spike: about every quarter bin width
        // (relative to the largest magnitude) of ln Δ, far finer than the coarse copy sees.
        bracket = refine_basins(&scan, rough, &mut ev_c, &mut ev_f, &mut best);
        if !rough {
            comb_near_best(&mut ev_f, &mut best);
        }
        if rough {
            // A rough cost dips wherever a grid point meets a spike: about every quarter bin
            // width (relative to the largest magnitude) of ln Δ, far finer than the coarse copy
            // sees, and a dip anywhere near the best of the scan may be the deepest.
            let width = (dist.hi() - dist.lo()) / dist.n_bins() as f64;
            let per_eval = (ev_f.nonzero_bins() + spec.levels() as usize) as f64;
            let evals = ((ROUGH_WORK / per_eval) as usize).clamp(ROUGH_EVALS, ROUGH_EVALS_MAX);
            // reach grows with the budget: 1.05 at 256 teeth, 1.5 at 8192
            let t = ((evals / ROUGH_EVALS) as f64).log2() / 5.0;
            let reach = ROUGH_REACH + t * (ROUGH_REACH_MAX - ROUGH_REACH);
            let spacing = 0.25 * width / dist.max_abs();
            // the least comb first, then (a tiny histogram) the larger one: it only adds
            comb_rough(
                &scan,
                spacing,
                ROUGH_EVALS,
                ROUGH_REACH,
                &mut ev_f,
                &mut best,
            );
            if evals > ROUGH_EVALS {
                comb_rough(&scan, spacing, evals, reach, &mut ev_f, &mut best);
            }
        }
    }
    if !runs.is_empty() {
        let budget = if near_constant {
            NEAR_CONSTANT_EVALS
        } else {
            CLUSTER_EVALS
        };
        let reach = (x_low, x_top);
        clusters(dist, &runs, reach, budget, &mut ev_f, &mut best);
    }
    if rough {
        comb_sparse(dist, bracket, &mut ev_f, &mut best);
    }
    // A handful of occupied bins: the cost is a few needles. Every grid of half the steps at
    // twice the scale lies inside this one, so this grid's optimum is at most that one's; the
    // needle of the half grid's optimum (found the same way, down to 4 steps) is tried here.
    let half = if rough && ev_f.nonzero_bins() <= TINY_BINS {
        half_grid(spec)
    } else {
        None
    };
    let mut finalists = Vec::new();
    if let Some(half) = half {
        let sub = optimal(dist, &half, gamma);
        if sub.scale.is_finite() && sub.scale > 0.0 {
            // the half grid's own optimum, on this grid, competes as it is (see `reproducible`)
            finalists.push(0.5 * sub.scale);
            let x = (0.5 * sub.scale).ln();
            let width = (dist.hi() - dist.lo()) / dist.n_bins() as f64;
            let eps = (0.25 * width / dist.max_abs()).max(1e-9);
            for r in [
                (x, ev_f.eval(x.exp()).cost),
                brent(|y| ev_f.eval(y.exp()).cost, x - eps, x + eps, 1e-12, 40),
            ] {
                if r.1 < best.1 {
                    best = r;
                }
            }
        }
    }
    let l_best = ev_f.eval(best.0.exp()).lowest_index;
    let around = [(cover.lowest_index(), cover.scale), (l_best, best.0.exp())];
    fit_limits(dist, spec, around, &mut ev_f, &mut best);
    // Store the scale as a float32 value TensorFlow reproduces. Usually the optimum's float32
    // scale is one for its window, and it is kept as it is.
    let l_at_best = ev_f.eval(best.0.exp()).lowest_index;
    let scale = best.0.exp() as f32 as f64;
    let e = ev_f.eval(scale);
    // (stored as float32, a scale at the limit of its window's fit may cross it, and the best
    // window changes: then the reproducible scales of the windows around the unrounded
    // optimum's are tried)
    if finalists.is_empty()
        && e.cost.is_finite()
        && e.lowest_index == l_at_best
        && spec.tf_stable(scale, e.lowest_index)
    {
        let ec = ev_f.eval(cover.scale);
        // (a cost that is not a number never wins)
        if !(e.cost <= ec.cost && scale.is_finite() && scale > 0.0) {
            return spec.encoding(cover.scale, ec.lowest_index);
        }
        return spec.encoding(scale, e.lowest_index);
    }
    finalists.push(best.0.exp());
    reproducible(dist, spec, gamma, &finalists, &mut ev_f, cover)
}

/// Stage 5: a window whose cost still falls where it stops fitting the data (it would rather
/// reach past the data's extremes, to put levels on values near them) has its optimum at that
/// limit ([`QuantSpec::fit_limit`]), a kink no scan lands on: tried for the windows around
/// `around` (the min/max window and the best so far, each with its scale) whose limit lies
/// within [`FIT_REACH`] times that scale.
fn fit_limits(
    dist: &Dist,
    spec: &QuantSpec,
    around: [(i64, f64); 2],
    ev_f: &mut Evaluator,
    best: &mut Best,
) {
    let (l0, l1) = spec.lowest_index_range();
    let mut ls: Vec<(i64, f64)> = around
        .iter()
        .flat_map(|&(c, delta)| {
            ((c - FIT_NEAR).max(l0)..=(c + FIT_NEAR).min(l1)).map(move |l| (l, delta))
        })
        .collect();
    ls.sort_unstable_by_key(|t| t.0);
    ls.dedup_by_key(|t| t.0);
    for (l, delta) in ls {
        let limit = spec.fit_limit(l, dist.min(), dist.max());
        // only a limit near the scale whose windows these are can hold the optimum: far above
        // it the window lies inside the data, where nothing stops its cost's own minimum
        if !(limit.is_finite() && limit > 0.0 && limit <= FIT_REACH * delta) {
            continue;
        }
        let x = (limit * (1.0 - 1e-12)).ln();
        let c = ev_f.eval(x.exp()).cost;
        if c < best.1 {
            *best = (x, c);
        }
    }
}

/// The encoding of least exact cost among those TensorFlow reproduces near the `finalists`
/// (scales): for each, the windows around its best one, each with the nearest reproducible
/// float32 scale and the nearest one above (a window's reproducible scales can lie many float32
/// steps apart, and another window's nearer), that fit the data, and `cover`, which always is
/// one.
fn reproducible(
    dist: &Dist,
    spec: &QuantSpec,
    gamma: f64,
    finalists: &[f64],
    ev_f: &mut Evaluator,
    cover: Encoding,
) -> Encoding {
    let cost = |enc: &Encoding| loss(dist, enc).weighted(gamma);
    let mut best = (cost(&cover), cover);
    let (l_min, l_max) = spec.lowest_index_range();
    for &x in finalists {
        if !(x.is_finite() && x > 0.0) {
            continue;
        }
        let l_best = ev_f.eval(x).lowest_index;
        let x = x as f32 as f64;
        let lows = (l_best - NEAR_WINDOWS).max(l_min)..=(l_best + NEAR_WINDOWS).min(l_max);
        for l in lows {
            for up in [false, true] {
                let s = spec.tf_scale(x, l, up);
                let (fa, fb) =
                    spec.fitting_windows_within(s, dist.min(), dist.max(), FIT_TOLERANCE_STORED);
                if !spec.tf_stable(s, l) || l < fa || l > fb {
                    continue;
                }
                let enc = spec.encoding(s, l);
                let c = cost(&enc);
                // (a cost that is not a number never wins)
                if c < best.0 {
                    best = (c, enc);
                }
            }
        }
    }
    best.1
}

/// The grid of one bit less (about half the steps) whose levels, at twice the scale, are all
/// levels of `spec`'s grid (for some allowed zero point); None below 4 steps or where none has
/// `spec`'s kind. Searching it is searching the same options at one bit less.
fn half_grid(spec: &QuantSpec) -> Option<QuantSpec> {
    let half = if spec.symmetric {
        // grid indices a..=b around the fixed zero point; halved inward
        let z = spec.symmetric_zero_point();
        let (a, b) = (spec.qmin - z, spec.qmax - z);
        let (a2, b2) = (-(-a).div_euclid(2), b.div_euclid(2));
        let h = QuantSpec {
            qmin: a2,
            qmax: b2,
            symmetric: true,
        };
        // its own symmetric zero point must be 0 for the indices to line up
        (h.symmetric_zero_point() == 0).then_some(h)?
    } else {
        // any window of the half grid, doubled, fits the full window with the zero point
        // moved; (steps - 1) / 2 steps is the grid of one bit less, plain or narrow
        QuantSpec {
            qmin: 0,
            qmax: (spec.qmax - spec.qmin - 1) / 2,
            symmetric: false,
        }
    };
    (half.qmax - half.qmin >= 4).then_some(half)
}

/// Stage 1: (ln Δ, cost on the coarse copy) at decreasing Δ.
fn scan(
    ev_c: &mut Evaluator,
    spec: &QuantSpec,
    lc: f64,
    x_top: f64,
    max_abs: f64,
) -> Vec<(f64, f64)> {
    let octaves = (((2.0 * max_abs).ln() - lc) / LN_2).max(1.0) + 6.0;
    let per_eval = (ev_c.nonzero_bins() + 4 * spec.levels() as usize) as f64;
    let per_octave = (SCAN_WORK / (per_eval * octaves)).clamp(PER_OCTAVE, MAX_PER_OCTAVE);
    let step = LN_2 / per_octave;
    let x_mid = lc + 2.0 * LN_2;
    let mut scan: Vec<(f64, f64)> = Vec::new();
    let mut least = f64::INFINITY;
    // Far above the covering scale the cost is rounding alone and grows: sparse steps.
    let mut x = x_top;
    while x > x_mid {
        let e = ev_c.eval(x.exp());
        least = least.min(e.cost);
        scan.push((x, e.cost));
        x -= 3.0 * step.max(LN_2 / 8.0);
    }
    let mut x = x_mid.min(x_top);
    let mut since_least = 0;
    loop {
        let e = ev_c.eval(x.exp());
        scan.push((x, e.cost));
        if e.cost < least {
            least = e.cost;
            since_least = 0;
        } else {
            since_least += 1;
        }
        // Below the covering scale, stop once the clipping bound rules out every smaller Δ (with
        // a margin for the coarsening), or after 60 octaves.
        if (x < lc
            && ((e.lower_bound > 1.25 * least && since_least > per_octave as usize)
                || x < lc - 60.0 * LN_2))
            || scan.len() >= MAX_SCAN
        {
            break;
        }
        x -= step;
    }
    scan
}

/// Stage 2: comb the best basins of the scan on the coarse copy, refine the best teeth on the
/// full histogram. Returns the bracket (in ln Δ) the refinement used.
fn refine_basins(
    scan: &[(f64, f64)],
    rough: bool,
    ev_c: &mut Evaluator,
    ev_f: &mut Evaluator,
    best: &mut Best,
) -> f64 {
    let mut minima: Vec<usize> = (0..scan.len())
        .filter(|&i| {
            let c = scan[i].1;
            (i == 0 || c <= scan[i - 1].1) && (i + 1 == scan.len() || c <= scan[i + 1].1)
        })
        .collect();
    minima.sort_by(|&a, &b| scan[a].1.total_cmp(&scan[b].1));
    minima.truncate(BASINS);
    if rough {
        // A rough cost has narrow dips between scan points anywhere near the best: comb every
        // scan interval whose better end is within 25% of the best point of the scan.
        let least = scan.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
        minima = (0..scan.len())
            .filter(|&i| scan[i].1 <= 1.25 * least)
            .collect();
        minima.sort_by(|&a, &b| scan[a].1.total_cmp(&scan[b].1));
        minima.truncate(ROUGH_BASINS);
    }
    let mut cands: Vec<(f64, f64, f64)> = Vec::new(); // (ln Δ, coarse cost, bracket half-width)
    for &i in &minima {
        let step = if i + 1 < scan.len() {
            scan[i].0 - scan[i + 1].0
        } else {
            scan[i - 1].0 - scan[i].0
        };
        let lo = if i + 1 < scan.len() {
            scan[i + 1].0
        } else {
            scan[i].0 - step
        };
        let hi = if i > 0 {
            scan[i - 1].0
        } else {
            scan[i].0 + step
        };
        let tooth = (hi - lo) / (TEETH + 1) as f64;
        let mut top = (scan[i].0, scan[i].1);
        for t in 1..=TEETH {
            let x = lo + t as f64 * tooth;
            let c = ev_c.eval(x.exp()).cost;
            if c < top.1 {
                top = (x, c);
            }
        }
        cands.push((top.0, top.1, 1.5 * tooth));
    }
    cands.sort_by(|a, b| a.1.total_cmp(&b.1));
    // The best candidate, and the runners-up the coarse copy cannot tell from it.
    let (keep, close) = if rough { (3, 1.03) } else { (2, 1.005) };
    for (n, &(x, c, w)) in cands.iter().enumerate() {
        if n >= keep || (n > 0 && c > cands[0].1 * close) {
            break;
        }
        let r = brent(|y| ev_f.eval(y.exp()).cost, x - w, x + w, 1e-9, 30);
        if r.1 < best.1 {
            *best = r;
        }
    }
    cands.first().map_or(0.0, |c| c.2)
}

/// Stage 2a: on the full histogram, comb [`NEAR_TEETH`] teeth within [`NEAR_REACH`] (in ln Δ)
/// of the best point so far and refine the best two: a dense histogram of spiky data (a
/// small model's ReLU output) has dips a fraction of a percent wide between the comb teeth of
/// the coarse copy, and the deepest may sit a percent away from the refined basin.
fn comb_near_best(ev_f: &mut Evaluator, best: &mut Best) {
    comb_around(ev_f, best, NEAR_REACH, NEAR_TEETH, 2, 1e-10, 24);
}

/// Comb `teeth` + 1 evenly spaced points within `reach` (in ln Δ) on each side of the best
/// point on the full histogram, then take each of the `refined` best teeth and refine it with
/// Brent's method over one tooth spacing on each side (`tol`, at most `iters` steps).
fn comb_around(
    ev_f: &mut Evaluator,
    best: &mut Best,
    reach: f64,
    teeth: usize,
    refined: usize,
    tol: f64,
    iters: usize,
) {
    let step = 2.0 * reach / teeth as f64;
    let x0 = best.0;
    let mut costs: Vec<(f64, f64)> = (0..=teeth)
        .map(|i| {
            let x = x0 - reach + i as f64 * step;
            (x, ev_f.eval(x.exp()).cost)
        })
        .collect();
    costs.sort_by(|a, b| a.1.total_cmp(&b.1));
    for &(x, c) in costs.iter().take(refined) {
        if c < best.1 {
            *best = (x, c);
        }
        let r = brent(|y| ev_f.eval(y.exp()).cost, x - step, x + step, tol, iters);
        if r.1 < best.1 {
            *best = r;
        }
    }
}

/// Stage 2b, for a rough cost: comb, on the full histogram, every stretch of ln Δ whose scan
/// cost is within `reach` times the least, at `spacing` (or wider, to stay within `evals`
/// teeth), then refine the three best teeth.
fn comb_rough(
    scan: &[(f64, f64)],
    spacing: f64,
    evals: usize,
    reach: f64,
    ev_f: &mut Evaluator,
    best: &mut Best,
) {
    let least = scan.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
    // stretches around the selected scan points, merged (the scan runs from large Δ down)
    let mut spans: Vec<(f64, f64)> = Vec::new();
    for i in 0..scan.len() {
        // (a NaN cost is never selected)
        if scan[i].1.partial_cmp(&(reach * least)) == Some(std::cmp::Ordering::Greater)
            || scan[i].1.is_nan()
        {
            continue;
        }
        let lo = scan.get(i + 1).map_or(scan[i].0, |t| t.0);
        let hi = if i > 0 { scan[i - 1].0 } else { scan[i].0 };
        match spans.last_mut() {
            Some(last) if lo <= last.1 && hi >= last.0 => last.0 = last.0.min(lo),
            _ => spans.push((lo, hi)),
        }
    }
    let total: f64 = spans.iter().map(|s| s.1 - s.0).sum();
    if total.is_nan() || total <= 0.0 {
        return;
    }
    let step = spacing.max(total / evals as f64);
    let mut teeth: Vec<(f64, f64)> = Vec::new();
    for &(lo, hi) in &spans {
        let n = ((hi - lo) / step).ceil() as usize;
        for t in 0..=n {
            let x = lo + t as f64 * (hi - lo) / n.max(1) as f64;
            teeth.push((x, ev_f.eval(x.exp()).cost));
        }
    }
    teeth.sort_by(|a, b| a.1.total_cmp(&b.1));
    for &(x, _) in teeth.iter().take(3) {
        let r = brent(|y| ev_f.eval(y.exp()).cost, x - step, x + step, 1e-12, 40);
        if r.1 < best.1 {
            *best = r;
        }
    }
}

/// Runs of bins narrower than two covering cells that hold at least 1% of the values, heaviest
/// (mass times centre²) first, at most four. A cluster can lower the cost by at most its share
/// of it, so a dense histogram's sparse tail is left to the scan.
fn narrow_clusters(dist: &Dist, cover_scale: f64) -> Vec<(f64, f64, f64)> {
    let power = dist.mean_square() * dist.total();
    let mut runs: Vec<(f64, f64, f64)> = dist
        .runs()
        .into_iter()
        .filter(|r| {
            // a cluster with 1% of the values, or a point mass (an extreme) with 1% of the
            // signal power: a lone outlier's error counts with its square
            let heavy =
                r.1 >= 0.01 * dist.total() || (r.2 == 0.0 && r.1 * r.0 * r.0 >= 0.01 * power);
            r.2 < 2.0 * cover_scale && r.0 != 0.0 && heavy
        })
        .collect();
    runs.sort_by(|p, q| (q.1 * q.0 * q.0).total_cmp(&(p.1 * p.0 * p.0)));
    runs.truncate(4);
    runs
}

/// Stage 3: put a grid point on each narrow cluster, at every grid index in reach.
fn clusters(
    dist: &Dist,
    runs: &[(f64, f64, f64)],
    (x_low, x_top): (f64, f64),
    budget: usize,
    ev_f: &mut Evaluator,
    best: &mut Best,
) {
    let (spec, gamma) = (ev_f.spec(), ev_f.gamma());
    let (l0, l1) = spec.lowest_index_range();
    let h = spec.levels() - 1;
    let per_run = (budget / runs.len()).max(16);
    // Candidates are ranked and refined on a 64-bin copy (a cluster that fits a cell needs
    // little resolution, and an evaluation then costs about one per cell); only the chosen one
    // is refined on the full histogram.
    let tiny = dist.coarsened(64);
    let mut ev_t = Evaluator::new(&tiny, spec, gamma);
    // (Δ, cost on the copy, grid index, whether the cluster is a lone extreme)
    let mut tries: Vec<(f64, f64, i64, bool)> = Vec::new();
    for &(c, mass, width) in runs {
        let reach = if c > 0.0 { l1 + h } else { -l0 };
        let m_lo = ((c.abs() / (2.0 * x_top.exp())).floor() as i64).max(1);
        let m_hi = ((c.abs() / x_low.exp()).ceil() as i64).min(reach);
        if m_hi < m_lo {
            continue;
        }
        // All of them when few; else the smallest scales (kept on ties) and a sample; a lone
        // extreme (heavy by its magnitude, not its count) gets a smaller sample, plus the grid
        // points near the one it meets at the best scale so far.
        let lone = width == 0.0 && mass < 0.01 * dist.total();
        let per_run = if lone {
            per_run.min(ATOM_EVALS)
        } else {
            per_run
        };
        let n = (m_hi - m_lo + 1) as usize;
        let near: Vec<i64> = if lone {
            let m = (c.abs() / best.0.exp()).round() as i64;
            ((m - ATOM_NEAR).max(m_lo)..=(m + ATOM_NEAR).min(m_hi)).collect()
        } else {
            Vec::new()
        };
        let ms: Vec<i64> = if n <= per_run {
            (m_lo..=m_hi).collect()
        } else {
            let top = per_run / 2;
            let rest = per_run - top;
            let span = (m_hi - top as i64 - m_lo) as f64;
            (0..top as i64)
                .map(|i| m_hi - i)
                .chain((0..rest).map(|i| m_lo + (span * i as f64 / rest as f64) as i64))
                .collect()
        };
        for m in ms.into_iter().chain(near) {
            let d = c.abs() / m as f64;
            tries.push((d, ev_t.eval(d).cost, m, lone));
        }
    }
    let least = tries.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
    // The best few, and the smallest scales among near-ties.
    tries.sort_by(|p, q| p.1.total_cmp(&q.1));
    let mut pick: Vec<(f64, f64, i64, bool)> = tries.iter().take(2).copied().collect();
    let mut ties: Vec<(f64, f64, i64, bool)> = tries
        .iter()
        .filter(|t| t.1 <= least * (1.0 + 1e-3))
        .copied()
        .collect();
    ties.sort_by(|p, q| p.0.total_cmp(&q.0));
    pick.extend(ties.into_iter().take(3));
    let mut refined: Vec<(f64, f64, f64)> = pick
        .iter()
        .map(|&(d, _, m, lone)| {
            // Grid point m stays the nearest one to the cluster for Δ in this bracket.
            let m = m as f64;
            let (lo, hi) = ((d * m / (m + 0.5)).ln(), (d * m / (m - 0.5).max(0.25)).ln());
            // A lone extreme's dip is where the grid point meets it, at d itself: the copy,
            // which holds it exactly, has nothing to add; the full histogram refines it below.
            let (x, c) = if lone {
                (d.ln(), f64::INFINITY)
            } else {
                brent(|y| ev_t.eval(y.exp()).cost, lo, hi, 1e-10, 60)
            };
            let x = if ev_t.eval(d).cost <= c { d.ln() } else { x };
            // scored as it will be stored: a float32 scale
            let d = x.exp() as f32 as f64;
            (d, ev_f.eval(d).cost, 0.5 * (hi - lo))
        })
        .collect();
    // Within 1e-6 of the best (the precision `optimal` promises), the smallest scale: many
    // grid points fit a near-constant tensor equally well, and the tightest range is kept.
    refined.push((best.0.exp(), best.1, 0.0));
    let least = refined.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
    refined.retain(|t| t.1 <= least * (1.0 + 1e-6));
    if let Some(&(d, c, basin)) = refined.iter().min_by(|p, q| p.0.total_cmp(&q.0)) {
        *best = (d.ln(), c);
        if basin > 0.0 {
            // a close look on the full histogram, a few of its bin widths around
            let width = (dist.hi() - dist.lo()) / dist.n_bins() as f64;
            let w = (4.0 * width / dist.max_abs()).min(basin);
            let (x, _) = brent(
                |y| ev_f.eval(y.exp()).cost,
                d.ln() - w,
                d.ln() + w,
                1e-12,
                20,
            );
            let d2 = x.exp() as f32 as f64;
            let c2 = ev_f.eval(d2).cost;
            if c2 < c {
                *best = (d2.ln(), c2);
            }
        }
    }
}

/// Stage 4: a histogram of few values per bin is a comb of spikes, its cost rough at the scale
/// of one bin width relative to the data's magnitude (each spike meeting a grid point): comb the
/// neighbourhood of the best point at that spacing, then refine the best tooth.
fn comb_sparse(dist: &Dist, bracket: f64, ev_f: &mut Evaluator, best: &mut Best) {
    let width = (dist.hi() - dist.lo()) / dist.n_bins() as f64;
    let span = (1.5 * bracket).max(2e-4);
    let spacing = (0.25 * width / dist.max_abs()).max(span / 64.0);
    let teeth = ((2.0 * span / spacing).ceil() as usize).clamp(8, 256);
    // the best few teeth, each refined: neighbouring dips of a sparse cost differ by less than
    // a tooth's spacing can tell
    comb_around(ev_f, best, span, teeth, SPARSE_REFINED, 1e-12, 40);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::loss;
    use crate::spec::SpecOptions;

    #[test]
    fn beats_a_dense_grid() {
        let d = Dist::gaussian_for_tests(64);
        let spec = QuantSpec::new(&SpecOptions {
            bits: 4,
            ..Default::default()
        })
        .unwrap();
        let enc = optimal(&d, &spec, 1.0);
        let got = loss(&d, &enc).weighted(1.0);
        let (l0, l1) = spec.lowest_index_range();
        let mut best = f64::INFINITY;
        for i in 0..4000 {
            let delta = 0.05 + i as f64 * 1e-4;
            for l in l0..=l1 {
                best = best.min(loss(&d, &spec.encoding(delta, l)).weighted(1.0));
            }
        }
        assert!(got <= best * (1.0 + 1e-6), "{got} vs {best}");
    }
}
