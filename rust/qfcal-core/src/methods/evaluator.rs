//! Scores every window (zero point) at one scale Δ in one sweep: the engine of `optimal`.
//!
//! Zero sits on the grid, so at a fixed Δ the grid is the multiples of Δ and the zero point only
//! picks which window of `levels` of them is used. One merged sweep of the bins and the half
//! cells gives, at every grid point, the clipping loss below and above it and the running
//! rounding loss; every window is then scored in O(1).

use crate::dist::Dist;
use crate::spec::QuantSpec;

/// The best window at one Δ.
#[derive(Debug, Clone, Copy)]
pub struct Eval {
    pub cost: f64,
    /// Grid index of the lowest level of the best window.
    pub lowest_index: i64,
    /// A lower bound of the cost at every Δ' <= Δ (clipping alone).
    pub lower_bound: f64,
}

/// Scores every window at a given Δ; holds reusable buffers.
pub struct Evaluator {
    spec: QuantSpec,
    gamma: f64,
    total: f64,
    /// The data's least and greatest value (zeros included): windows reaching more than half a
    /// step beyond them are not scored (see [`QuantSpec::fitting_windows`]).
    data_min: f64,
    data_max: f64,
    /// Nonzero pieces: lower edge, upper edge (the same for a point mass), count.
    bin_lo: Vec<f64>,
    bin_hi: Vec<f64>,
    bin_count: Vec<f64>,
    /// Per half cell: mass, first and second moment about the half's centre.
    half_mass: Vec<f64>,
    half_m1: Vec<f64>,
    half_m2: Vec<f64>,
    /// Per grid point: rounding loss of the half cell above it and of the one below it.
    round_above: Vec<f64>,
    round_below: Vec<f64>,
    /// Per grid point: clipping loss of the data below it and of the data above it.
    clip_below: Vec<f64>,
    clip_above: Vec<f64>,
    /// Per grid point: rounding loss of every half cell from the first grid point up to it
    /// (its upper half included).
    round_prefix: Vec<f64>,
    /// Costs of the windows scored in one straight pass.
    window_costs: Vec<f64>,
}

/// The grid points one evaluation visits: `first..=last` (multiples of Δ), the `2·(points-1)`
/// half cells between them and their span `[start, end]`.
struct Span {
    delta: f64,
    first: i64,
    last: i64,
    points: usize,
    halves: usize,
    start: f64,
    end: f64,
}

impl Span {
    /// Start of half cell `k`: `start + k·Δ/2`, from grid multiples so that neighbouring halves
    /// share their boundary exactly.
    #[inline(always)]
    fn half_start(&self, k: usize) -> f64 {
        let grid_point = (self.first + (k / 2) as i64) as f64 * self.delta;
        if k.is_multiple_of(2) {
            grid_point
        } else {
            grid_point + 0.5 * self.delta
        }
    }
}

/// The data outside the span, clipped by every window: moments about the span's ends, and the
/// bins that reach inside it.
struct Tails {
    below: [f64; 3],
    above: [f64; 3],
    inner: std::ops::Range<usize>,
}

/// Adds a point mass `mass` at `x` to the moments about `c`.
#[inline(always)]
fn add_point(m: &mut [f64; 3], mass: f64, x: f64, c: f64) {
    let d = x - c;
    m[0] += mass;
    m[1] += mass * d;
    m[2] += mass * d * d;
}

/// Adds the piece `[u, v]` of density `dens` to the moments about `c`.
#[inline(always)]
fn add_piece(m: &mut [f64; 3], dens: f64, u: f64, v: f64, c: f64) {
    let mu = dens * (v - u);
    let mid = 0.5 * (u + v) - c;
    let len = v - u;
    m[0] += mu;
    m[1] += mu * mid;
    m[2] += mu * (mid * mid + len * len * (1.0 / 12.0));
}

/// Stores the moments of half cell `k` and starts the next one: its index, empty moments, where
/// it ends and its centre.
#[inline(always)]
fn next_half(
    mass: &mut [f64],
    m1: &mut [f64],
    m2: &mut [f64],
    span: &Span,
    k: usize,
    acc: [f64; 3],
) -> (usize, [f64; 3], f64, f64) {
    mass[k] = acc[0];
    m1[k] = acc[1];
    m2[k] = acc[2];
    let k = k + 1;
    let end = span.half_start(k + 1).min(span.end);
    let centre = span.half_start(k) + 0.25 * span.delta;
    (k, [0.0; 3], end, centre)
}

/// `∫(x - p)²` from moments about `c`.
#[inline(always)]
fn second_about(m0: f64, m1: f64, m2: f64, c: f64, p: f64) -> f64 {
    let d = c - p;
    (m2 + 2.0 * d * m1 + d * d * m0).max(0.0)
}

impl Evaluator {
    pub fn new(dist: &Dist, spec: QuantSpec, gamma: f64) -> Self {
        let (mut bin_lo, mut bin_hi, mut bin_count) = (Vec::new(), Vec::new(), Vec::new());
        for (a, b, c) in dist.pieces() {
            if c > 0.0 {
                bin_lo.push(a);
                bin_hi.push(b);
                bin_count.push(c);
            }
        }
        Evaluator {
            spec,
            gamma,
            total: dist.total(),
            data_min: dist.min(),
            data_max: dist.max(),
            bin_lo,
            bin_hi,
            bin_count,
            half_mass: Vec::new(),
            half_m1: Vec::new(),
            half_m2: Vec::new(),
            round_above: Vec::new(),
            round_below: Vec::new(),
            clip_below: Vec::new(),
            clip_above: Vec::new(),
            round_prefix: Vec::new(),
            window_costs: Vec::new(),
        }
    }

    pub fn spec(&self) -> QuantSpec {
        self.spec
    }

    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// Number of nonzero bins the sweep visits.
    pub fn nonzero_bins(&self) -> usize {
        self.bin_lo.len()
    }

    /// The best window at scale `delta` (> 0, finite).
    pub fn eval(&mut self, delta: f64) -> Eval {
        let span = self.span(delta);
        let tails = self.tails(&span);
        self.sweep_half_cells(&span, tails.inner.clone());
        self.grid_point_losses(&span, &tails);
        self.best_window(&span)
    }

    /// Grid points that matter: the windows span -(q-1)..=q (one more on the right for the
    /// lower bound), and nothing changes beyond the data.
    fn span(&self, delta: f64) -> Span {
        let q = self.spec.levels();
        let nb = self.bin_lo.len();
        let (data_lo, data_hi) = (self.bin_lo[0], self.bin_hi[nb - 1]);
        let clamp_to = |x: f64, lo: i64, hi: i64| -> i64 { x.clamp(lo as f64, hi as f64) as i64 };
        let first = clamp_to((data_lo / delta).floor(), -(q - 1), 0);
        let last = clamp_to((data_hi / delta).ceil(), 0, q);
        let points = (last - first + 1) as usize;
        Span {
            delta,
            first,
            last,
            points,
            halves: 2 * (points - 1),
            start: first as f64 * delta,
            end: last as f64 * delta,
        }
    }

    /// Moments of the data below the first grid point (about it) and above the last one.
    fn tails(&self, span: &Span) -> Tails {
        let (ta, tb) = (span.start, span.end);
        let nb = self.bin_lo.len();
        let mut below = [0.0f64; 3];
        let mut above = [0.0f64; 3];
        let mut j = 0;
        while j < nb && self.bin_lo[j] < ta {
            let (a, b, c) = (self.bin_lo[j], self.bin_hi[j], self.bin_count[j]);
            if a == b {
                add_point(&mut below, c, a, ta);
            } else {
                add_piece(&mut below, c / (b - a), a, b.min(ta), ta);
            }
            if b > ta {
                break;
            }
            j += 1;
        }
        let mut jb = nb;
        while jb > 0 && self.bin_hi[jb - 1] > tb {
            let (a, b, c) = (
                self.bin_lo[jb - 1],
                self.bin_hi[jb - 1],
                self.bin_count[jb - 1],
            );
            if a == b {
                add_point(&mut above, c, a, tb);
            } else {
                add_piece(&mut above, c / (b - a), a.max(tb), b, tb);
            }
            if a < tb {
                break;
            }
            jb -= 1;
        }
        Tails {
            below,
            above,
            inner: j..jb,
        }
    }

    /// Sweeps the bins `inner` inside the span and the half cells together: the moments of
    /// each half cell about its centre.
    fn sweep_half_cells(&mut self, span: &Span, inner: std::ops::Range<usize>) {
        let (delta, ta, tb, nh) = (span.delta, span.start, span.end, span.halves);
        for v in [&mut self.half_mass, &mut self.half_m1, &mut self.half_m2] {
            v.clear();
            v.resize(nh.max(1), 0.0);
        }
        let mut k = 0usize;
        let mut half_end = if nh > 0 { span.half_start(1) } else { tb };
        let mut acc = [0.0f64; 3];
        let mut centre = ta + 0.25 * delta;
        for i in inner {
            let (a, b, c) = (self.bin_lo[i], self.bin_hi[i], self.bin_count[i]);
            let (u, v) = (a.max(ta), b.min(tb));
            // a point mass goes whole into the half cell that holds it (on a boundary, either
            // one gives the same rounding and clipping); a bin is cut at the half cells' ends
            let point = a == b;
            let inside = if point { a >= ta && a <= tb } else { u < v };
            if !inside || nh == 0 {
                continue;
            }
            while half_end <= u && k + 1 < nh {
                (k, acc, half_end, centre) = next_half(
                    &mut self.half_mass,
                    &mut self.half_m1,
                    &mut self.half_m2,
                    span,
                    k,
                    acc,
                );
            }
            if point {
                add_point(&mut acc, c, a, centre);
                continue;
            }
            let dens = c / (b - a);
            let mut pos = u;
            loop {
                let end = v.min(half_end);
                if end > pos {
                    add_piece(&mut acc, dens, pos, end, centre);
                }
                if end >= v || k + 1 >= nh {
                    break;
                }
                pos = end;
                (k, acc, half_end, centre) = next_half(
                    &mut self.half_mass,
                    &mut self.half_m1,
                    &mut self.half_m2,
                    span,
                    k,
                    acc,
                );
            }
        }
        if nh > 0 {
            self.half_mass[k] += acc[0];
            self.half_m1[k] += acc[1];
            self.half_m2[k] += acc[2];
        }
    }

    /// Per grid point (index i): rounding loss of its lower and upper half cells, clipping
    /// below it (F) and above it (G), and the running rounding loss. A half cell's centre sits
    /// ±Δ/4 or ±3Δ/4 from the grid points around it, so moments move between centres with
    /// constant offsets.
    fn grid_point_losses(&mut self, span: &Span, tails: &Tails) {
        let (delta, ng) = (span.delta, span.points);
        for v in [
            &mut self.round_above,
            &mut self.round_below,
            &mut self.clip_below,
            &mut self.clip_above,
            &mut self.round_prefix,
        ] {
            v.clear();
            v.resize(ng, 0.0);
        }
        let (mass, m1, m2) = (&self.half_mass, &self.half_m1, &self.half_m2);
        let (q1, q3) = (0.25 * delta, 0.75 * delta);
        // F(t+Δ) = F(t) - 2Δ·D(t) + Δ²·M(t) + ∫_seg (x - t - Δ)², with D(t) = ∫_{x<t} (x - t) <= 0:
        // every increment is non-negative, so nothing cancels.
        let (mut d1, mut m0) = (tails.below[1], tails.below[0]);
        self.clip_below[0] = tails.below[2];
        let mut run = 0.0;
        for i in 0..ng - 1 {
            let (e, o) = (2 * i, 2 * i + 1);
            let (e0, e1, e2) = (mass[e], m1[e], m2[e]);
            let (o0, o1, o2) = (mass[o], m1[o], m2[o]);
            let up = second_about(e0, e1, e2, q1, 0.0);
            let lo = second_about(o0, o1, o2, -q1, 0.0);
            self.round_above[i] = up;
            self.round_below[i + 1] = lo;
            run += self.round_below[i] + up;
            self.round_prefix[i] = run;
            let seg_hi = second_about(e0, e1, e2, -q3, 0.0) + lo;
            let seg1_hi = e1 - q3 * e0 + o1 - q1 * o0;
            // (one add on each running value, so the loop is not latency-bound)
            self.clip_below[i + 1] =
                self.clip_below[i] + ((delta * delta * m0 + seg_hi) - 2.0 * delta * d1);
            d1 += seg1_hi - delta * m0;
            m0 += e0 + o0;
        }
        self.round_prefix[ng - 1] = run + self.round_below[ng - 1] + self.round_above[ng - 1];
        let (mut e1s, mut n0) = (tails.above[1], tails.above[0]);
        self.clip_above[ng - 1] = tails.above[2];
        for i in (0..ng - 1).rev() {
            let (e, o) = (2 * i, 2 * i + 1);
            let (o0, o1, o2) = (mass[o], m1[o], m2[o]);
            let seg_lo = self.round_above[i] + second_about(o0, o1, o2, q3, 0.0);
            let seg1_lo = m1[e] + q1 * mass[e] + o1 + q3 * o0;
            self.clip_above[i] =
                self.clip_above[i + 1] + (2.0 * delta * e1s + delta * delta * n0 + seg_lo);
            e1s += delta * n0 + seg1_lo;
            n0 += mass[e] + o0;
        }
    }

    /// Scores every allowed window from the per-point losses: the best one that fits the data
    /// (cost infinite when none does), and the lower bound of the cost at smaller scales (over
    /// every window, so a bound for the fitting ones too).
    fn best_window(&mut self, span: &Span) -> Eval {
        let q = self.spec.levels();
        let n = self.total;
        let (ga, gb) = (span.first, span.last);
        let (l0, l1) = self.spec.lowest_index_range();
        let h = q - 1;
        let mut best = Eval {
            cost: f64::INFINITY,
            lowest_index: l0,
            lower_bound: 0.0,
        };
        // Windows with L below ga see no data below them; with gamma >= 1 moving such a window up
        // only turns clipping into (smaller) rounding error, so L = ga dominates them.
        let l_first = if self.gamma >= 1.0 {
            l0.max(ga).min(l1)
        } else {
            l0
        };
        let idx = |m: i64| -> usize { (m.clamp(ga, gb) - ga) as usize };
        // Every window of a smaller Δ lies inside a window [LΔ, (L+q)Δ] (free zero point) or the
        // same window (fixed zero point), so its clipping loss is at least the least of these.
        let mut lb = f64::INFINITY;
        let gamma = self.gamma;
        let (f, g, p, up, lo) = (
            &self.clip_below,
            &self.clip_above,
            &self.round_prefix,
            &self.round_above,
            &self.round_below,
        );
        let window = |l: i64| -> (f64, f64) {
            let (il, ih) = (idx(l), idx(l + h));
            let r = if ih > il {
                p[ih - 1] - p[il] + up[il] + lo[ih]
            } else {
                0.0
            };
            let clip = f[il] + g[ih];
            (gamma * clip + r.max(0.0), clip)
        };
        let (ua, ub) = (l_first.max(ga), l1.min(gb - 1 - h));
        let (fit_a, fit_b) = self
            .spec
            .fitting_windows(span.delta, self.data_min, self.data_max);
        let mut consider = |l: i64, cost: f64, lbv: f64| {
            if cost < best.cost && l >= fit_a && l <= fit_b {
                best.cost = cost;
                best.lowest_index = l;
            }
            lb = lb.min(lbv);
        };
        // Windows that lie wholly inside [ga, gb - 1] index the arrays without clamping: they
        // are scored in a straight, vectorizable pass; the others one by one.
        let lb_of = |l: i64, clip: f64| {
            if l0 == l1 {
                clip
            } else {
                f[idx(l)] + g[idx(l + q)]
            }
        };
        let (before, after) = if ua <= ub {
            (l_first..ua, ub + 1..l1 + 1)
        } else {
            (l_first..l1 + 1, l1 + 1..l1 + 1)
        };
        for l in before.chain(after) {
            let (cost, clip) = window(l);
            consider(l, cost, lb_of(l, clip));
        }
        if ua <= ub {
            let (i0, n_w) = ((ua - ga) as usize, (ub - ua + 1) as usize);
            let hu = h as usize;
            let costs = &mut self.window_costs;
            costs.clear();
            costs.extend((i0..i0 + n_w).map(|i| {
                let r = (p[i + hu - 1] - p[i] + up[i] + lo[i + hu]).max(0.0);
                gamma * (f[i] + g[i + hu]) + r
            }));
            for (j, &c) in costs.iter().enumerate() {
                let l = ua + j as i64;
                consider(l, c, lb_of(l, f[i0 + j] + g[i0 + j + hu]));
            }
        }
        if l_first > l0 {
            // the skipped windows (L < ga) all see F = F(ga) and a G no smaller than at L = ga
            lb = lb.min(f[0] + g[idx(ga - 1 + q)]);
        }
        best.cost /= n;
        best.lower_bound = self.gamma * lb / n;
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::loss;
    use crate::spec::SpecOptions;

    /// The evaluator's best window against the reference loss of every window that fits the
    /// data, on a density with bins and point masses at both ends (and one beyond the bins).
    #[test]
    fn evaluator_agrees_with_reference_loss() {
        let g = Dist::gaussian_for_tests(300);
        let with_atoms = Dist::new(g.counts().to_vec(), g.edges().to_vec(), 5e5)
            .unwrap()
            .with_atoms(vec![(-4.0, 3e6), (4.0, 2e6), (4.5, 1e5)])
            .unwrap();
        for d in [g, with_atoms] {
            for (bits, sym) in [(4, false), (3, true), (8, false), (8, true)] {
                let spec = QuantSpec::new(&SpecOptions {
                    bits,
                    symmetric: sym,
                    ..Default::default()
                })
                .unwrap();
                let mut ev = Evaluator::new(&d, spec, 2.0);
                for delta in [0.01, 0.1, 0.37, 1.3, 5.0] {
                    let e = ev.eval(delta);
                    let (fa, fb) = spec.fitting_windows(delta, d.min(), d.max());
                    if fa > fb {
                        assert_eq!(e.cost, f64::INFINITY, "bits {bits} Δ {delta}");
                        continue;
                    }
                    let enc = spec.encoding(delta, e.lowest_index);
                    let want = loss(&d, &enc).weighted(2.0);
                    assert!(
                        (e.cost - want).abs() <= 1e-10 * want,
                        "bits {bits} Δ {delta}: {} vs {}",
                        e.cost,
                        want
                    );
                    // and it is the best fitting window
                    assert!((fa..=fb).contains(&e.lowest_index));
                    for l in fa..=fb {
                        let c = loss(&d, &spec.encoding(delta, l)).weighted(2.0);
                        assert!(c >= e.cost * (1.0 - 1e-10));
                    }
                }
            }
        }
    }
}
