//! `optimal`: the global minimum of the cost over every scale Δ > 0 and every allowed zero point.
//!
//! Zero sits on the grid, so for a fixed Δ the grid is the multiples of Δ and the zero point only
//! picks which window of `levels` of them is used. [`Evaluator::eval`] sweeps the bins once per Δ
//! to get, at every grid point, the clipping loss below/above it and the running rounding loss;
//! every window is then scored in O(1), so all zero points cost O(levels).
//!
//! Δ is searched in three stages: a geometric scan on a coarsened copy of the histogram (from
//! `2·max|x|`, where everything rounds to zero, at 3 points per octave down to 4x the covering
//! scale, then 8 per octave until a lower bound on the clipping loss of every smaller Δ exceeds
//! the best cost found), golden-section refinement of the best basins on it, and a final
//! refinement on the full-resolution histogram. The min/max-covering scale is always a
//! candidate, so data that sits on a grid (quantized inputs) is found exactly, and for data
//! narrower than two cells every scale that puts a grid point on the data's mean is tried.

use crate::dist::Dist;
use crate::spec::{f32_nearest, Encoding, QuantSpec};

/// Least scan density, points per octave.
const PER_OCTAVE: f64 = 8.0;
/// Scan density is raised, up to this, while the scan stays within `SCAN_WORK` bin-and-cell
/// visits: small, spiky histograms have narrow dips that a sparse scan would step over.
const MAX_PER_OCTAVE: f64 = 128.0;
const SCAN_WORK: f64 = 150_000.0;
/// Bins of the coarsened histogram used by the scan.
const COARSE_BINS: usize = 512;
/// Basins refined.
const BASINS: usize = 3;

/// The best window at one Δ.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Eval {
    pub cost: f64,
    /// Grid index of the lowest level of the best window.
    pub l: i64,
    /// A lower bound of the cost at every Δ' <= Δ (clipping alone).
    pub lower_bound: f64,
}

/// Scores every window at a given Δ; holds reusable buffers.
pub(crate) struct Evaluator {
    spec: QuantSpec,
    gamma: f64,
    total: f64,
    /// Nonzero bins: lower edge, upper edge, count.
    ba: Vec<f64>,
    bb: Vec<f64>,
    bc: Vec<f64>,
    /// Per half cell: mass, first and second moment about the half's centre.
    h0: Vec<f64>,
    h1: Vec<f64>,
    h2: Vec<f64>,
    up: Vec<f64>,
    lo: Vec<f64>,
    f: Vec<f64>,
    g: Vec<f64>,
    p: Vec<f64>,
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

/// `∫(x - p)²` from moments about `c`.
#[inline(always)]
fn second_about(m0: f64, m1: f64, m2: f64, c: f64, p: f64) -> f64 {
    let d = c - p;
    (m2 + 2.0 * d * m1 + d * d * m0).max(0.0)
}

impl Evaluator {
    pub fn new(dist: &Dist, spec: QuantSpec, gamma: f64) -> Self {
        let (mut ba, mut bb, mut bc) = (Vec::new(), Vec::new(), Vec::new());
        for (a, b, c) in dist.bins() {
            if c > 0.0 {
                ba.push(a);
                bb.push(b);
                bc.push(c);
            }
        }
        Evaluator {
            spec,
            gamma,
            total: dist.total(),
            ba,
            bb,
            bc,
            h0: Vec::new(),
            h1: Vec::new(),
            h2: Vec::new(),
            up: Vec::new(),
            lo: Vec::new(),
            f: Vec::new(),
            g: Vec::new(),
            p: Vec::new(),
        }
    }

    /// The best window at scale `delta` (> 0, finite).
    pub fn eval(&mut self, delta: f64) -> Eval {
        let q = self.spec.levels();
        let n = self.total;
        let nb = self.ba.len();
        let (dlo, dhi) = (self.ba[0], self.bb[nb - 1]);
        let clampi = |x: f64, lo: i64, hi: i64| -> i64 { x.clamp(lo as f64, hi as f64) as i64 };
        // Grid points that matter: the windows span -(q-1)..=q (one more on the right for the
        // lower bound), and nothing changes beyond the data.
        let ga = clampi((dlo / delta).floor(), -(q - 1), 0);
        let gb = clampi((dhi / delta).ceil(), 0, q);
        let ng = (gb - ga + 1) as usize;
        let nh = 2 * (ng - 1);
        for v in [&mut self.h0, &mut self.h1, &mut self.h2] {
            v.clear();
            v.resize(nh.max(1), 0.0);
        }
        let ta = ga as f64 * delta;
        let tb = gb as f64 * delta;
        let half = 0.5 * delta;
        // Start and end of half cell k: [ta + k·Δ/2, ta + (k+1)·Δ/2), from grid multiples so that
        // neighbouring halves share their boundary exactly.
        let hstart = |k: usize| -> f64 {
            let gm = (ga + (k / 2) as i64) as f64 * delta;
            if k.is_multiple_of(2) {
                gm
            } else {
                gm + half
            }
        };
        // Data below the first grid point is clipped by every window: moments about ta.
        let mut below = [0.0f64; 3];
        let mut above = [0.0f64; 3];
        let mut j = 0;
        while j < nb && self.ba[j] < ta {
            let (a, b, c) = (self.ba[j], self.bb[j], self.bc[j]);
            let dens = c / (b - a);
            add_piece(&mut below, dens, a, b.min(ta), ta);
            if b > ta {
                break;
            }
            j += 1;
        }
        let mut jb = nb;
        while jb > 0 && self.bb[jb - 1] > tb {
            let (a, b, c) = (self.ba[jb - 1], self.bb[jb - 1], self.bc[jb - 1]);
            let dens = c / (b - a);
            add_piece(&mut above, dens, a.max(tb), b, tb);
            if a < tb {
                break;
            }
            jb -= 1;
        }
        // Sweep the bins inside [ta, tb] and the half cells together.
        let mut k = 0usize;
        let mut hend = if nh > 0 { hstart(1) } else { tb };
        let mut acc = [0.0f64; 3];
        let mut centre = ta + 0.25 * delta;
        for i in j..jb {
            let (a, b, c) = (self.ba[i], self.bb[i], self.bc[i]);
            let (u, v) = (a.max(ta), b.min(tb));
            if u >= v || nh == 0 {
                continue;
            }
            let dens = c / (b - a);
            while hend <= u && k + 1 < nh {
                self.h0[k] = acc[0];
                self.h1[k] = acc[1];
                self.h2[k] = acc[2];
                acc = [0.0; 3];
                k += 1;
                hend = hstart(k + 1).min(tb);
                centre = hstart(k) + 0.25 * delta;
            }
            let mut pos = u;
            loop {
                let end = v.min(hend);
                if end > pos {
                    add_piece(&mut acc, dens, pos, end, centre);
                }
                if end >= v || k + 1 >= nh {
                    break;
                }
                pos = end;
                self.h0[k] = acc[0];
                self.h1[k] = acc[1];
                self.h2[k] = acc[2];
                acc = [0.0; 3];
                k += 1;
                hend = hstart(k + 1).min(tb);
                centre = hstart(k) + 0.25 * delta;
            }
        }
        if nh > 0 {
            self.h0[k] += acc[0];
            self.h1[k] += acc[1];
            self.h2[k] += acc[2];
        }
        // Per grid point m (index i): rounding loss of its lower and upper half cells.
        for v in [
            &mut self.up,
            &mut self.lo,
            &mut self.f,
            &mut self.g,
            &mut self.p,
        ] {
            v.clear();
            v.resize(ng, 0.0);
        }
        let ctr = |k: usize| hstart(k) + 0.25 * delta;
        for i in 0..ng - 1 {
            let gm = (ga + i as i64) as f64 * delta;
            let (e, o) = (2 * i, 2 * i + 1);
            self.up[i] = second_about(self.h0[e], self.h1[e], self.h2[e], ctr(e), gm);
            self.lo[i + 1] = second_about(self.h0[o], self.h1[o], self.h2[o], ctr(o), gm + delta);
        }
        // Clipping below each grid point (F) and above it (G), by non-negative increments:
        // F(t+Δ) = F(t) - 2Δ·D(t) + Δ²·M(t) + ∫_seg (x - t - Δ)², D(t) = ∫_{x<t} (x - t) <= 0.
        let (mut d1, mut m0) = (below[1], below[0]);
        self.f[0] = below[2];
        for i in 0..ng - 1 {
            let gm = (ga + i as i64) as f64 * delta;
            let (e, o) = (2 * i, 2 * i + 1);
            let seg0 = self.h0[e] + self.h0[o];
            let seg_hi = second_about(self.h0[e], self.h1[e], self.h2[e], ctr(e), gm + delta)
                + self.lo[i + 1];
            // ∫_seg (x - (m+1)Δ)
            let seg1_hi = self.h1[e]
                + self.h0[e] * (ctr(e) - gm - delta)
                + self.h1[o]
                + self.h0[o] * (ctr(o) - gm - delta);
            self.f[i + 1] = self.f[i] - 2.0 * delta * d1 + delta * delta * m0 + seg_hi;
            d1 = d1 - delta * m0 + seg1_hi;
            m0 += seg0;
        }
        let (mut e1, mut n0) = (above[1], above[0]);
        self.g[ng - 1] = above[2];
        for i in (0..ng - 1).rev() {
            let gm = (ga + i as i64) as f64 * delta;
            let (e, o) = (2 * i, 2 * i + 1);
            let seg0 = self.h0[e] + self.h0[o];
            let seg_lo = self.up[i] + second_about(self.h0[o], self.h1[o], self.h2[o], ctr(o), gm);
            // ∫_seg (x - mΔ)
            let seg1_lo =
                self.h1[e] + self.h0[e] * (ctr(e) - gm) + self.h1[o] + self.h0[o] * (ctr(o) - gm);
            self.g[i] = self.g[i + 1] + 2.0 * delta * e1 + delta * delta * n0 + seg_lo;
            e1 = e1 + delta * n0 + seg1_lo;
            n0 += seg0;
        }
        // Running rounding loss over whole cells.
        let mut run = 0.0;
        for i in 0..ng {
            run += self.lo[i] + self.up[i];
            self.p[i] = run;
        }
        let idx = |m: i64| -> usize { (m.clamp(ga, gb) - ga) as usize };
        let (l0, l1) = self.spec.l_range();
        let h = q - 1;
        let mut best = Eval {
            cost: f64::INFINITY,
            l: l0,
            lower_bound: 0.0,
        };
        // Windows with L below ga see no data below them; with gamma >= 1 moving such a window up
        // only turns clipping into (smaller) rounding error, so L = ga dominates them.
        let l_first = if self.gamma >= 1.0 {
            l0.max(ga).min(l1)
        } else {
            l0
        };
        for l in l_first..=l1 {
            let (il, ih) = (idx(l), idx(l + h));
            let r = if ih > il {
                self.p[ih - 1] - self.p[il] + self.up[il] + self.lo[ih]
            } else {
                0.0
            };
            let cost = (self.gamma * (self.f[il] + self.g[ih]) + r.max(0.0)) / n;
            if cost < best.cost {
                best.cost = cost;
                best.l = l;
            }
        }
        // Every window of a smaller Δ lies inside a window [LΔ, (L+q)Δ] (free zero point) or the
        // same window (fixed zero point), so its clipping loss is at least this much.
        let mut lb = f64::INFINITY;
        if l0 == l1 {
            lb = self.f[idx(l0)] + self.g[idx(l0 + h)];
        } else {
            for l in l_first..=l1 {
                lb = lb.min(self.f[idx(l)] + self.g[idx(l + q)]);
            }
        }
        best.lower_bound = self.gamma * lb / n;
        best
    }
}

/// Golden-section search of `f` on `[a, b]` (in log Δ), `iters` steps; returns the best point seen.
fn golden(mut f: impl FnMut(f64) -> f64, mut a: f64, mut b: f64, iters: usize) -> (f64, f64) {
    const R: f64 = 0.618_033_988_749_894_9;
    let mut x1 = b - R * (b - a);
    let mut x2 = a + R * (b - a);
    let (mut f1, mut f2) = (f(x1), f(x2));
    let mut best = if f1 <= f2 { (x1, f1) } else { (x2, f2) };
    for _ in 0..iters {
        if f1 <= f2 {
            b = x2;
            x2 = x1;
            f2 = f1;
            x1 = b - R * (b - a);
            f1 = f(x1);
            if f1 < best.1 {
                best = (x1, f1);
            }
        } else {
            a = x1;
            x1 = x2;
            f1 = f2;
            x2 = a + R * (b - a);
            f2 = f(x2);
            if f2 < best.1 {
                best = (x2, f2);
            }
        }
    }
    best
}

/// The optimal encoding of `dist` (which must hold values) for `spec` and `gamma`.
pub fn optimal(dist: &Dist, spec: &QuantSpec, gamma: f64) -> Encoding {
    let cover = spec.covering(dist.min(), dist.max());
    if dist.n_bins() == 0 {
        return cover;
    }
    let coarse = dist.coarsened(COARSE_BINS);
    let mut ev_c = Evaluator::new(&coarse, *spec, gamma);
    let mut ev_f = Evaluator::new(dist, *spec, gamma);
    let lc = cover.scale.ln();
    let octaves = (((2.0 * dist.max_abs()).ln() - lc) / std::f64::consts::LN_2).max(1.0) + 6.0;
    let per_eval = (coarse.n_bins() + 4 * spec.levels() as usize) as f64;
    let per_octave = (SCAN_WORK / (per_eval * octaves)).clamp(PER_OCTAVE, MAX_PER_OCTAVE);
    let fine_step = std::f64::consts::LN_2 / per_octave;
    // Above 2·max|x| everything rounds to zero and the cost no longer changes; far above the
    // covering scale the cost is rounding alone and grows, so the scan is sparser there.
    let x_top = (2.0 * dist.max_abs()).ln().max(lc);
    let x_mid = lc + 2.0 * std::f64::consts::LN_2;
    let mut xs: Vec<f64> = Vec::new();
    let mut x = x_top;
    while x > x_mid {
        xs.push(x);
        x -= 3.0 * fine_step.max(std::f64::consts::LN_2 / 8.0);
    }
    let mut x = x_mid.min(x_top);
    let mut scan: Vec<(f64, f64)> = Vec::new(); // (ln Δ, cost), decreasing Δ
    let mut best = f64::INFINITY;
    for &x in &xs {
        let e = ev_c.eval(x.exp());
        best = best.min(e.cost);
        scan.push((x, e.cost));
    }
    let mut since_best = 0;
    loop {
        let e = ev_c.eval(x.exp());
        scan.push((x, e.cost));
        if e.cost < best {
            best = e.cost;
            since_best = 0;
        } else {
            since_best += 1;
        }
        // Below the covering scale, stop once the clipping bound rules out every smaller Δ (with
        // a margin for the coarsening), or after 60 octaves.
        if x < lc
            && ((e.lower_bound > 1.25 * best && since_best > PER_OCTAVE as usize)
                || x < lc - 60.0 * std::f64::consts::LN_2)
        {
            break;
        }
        x -= fine_step;
    }
    // Local minima of the scan, best first, each refined on the coarse histogram.
    let mut minima: Vec<usize> = (0..scan.len())
        .filter(|&i| {
            let c = scan[i].1;
            (i == 0 || c <= scan[i - 1].1) && (i + 1 == scan.len() || c <= scan[i + 1].1)
        })
        .collect();
    minima.sort_by(|&a, &b| scan[a].1.total_cmp(&scan[b].1));
    minima.truncate(BASINS);
    let mut cands: Vec<(f64, f64, f64)> = Vec::new(); // (ln Δ, coarse cost, bracket half-width)
    for &i in &minima {
        let lo = if i + 1 < scan.len() {
            scan[i + 1].0
        } else {
            scan[i].0 - fine_step
        };
        let hi = if i > 0 {
            scan[i - 1].0
        } else {
            scan[i].0 + fine_step
        };
        let (x, c) = golden(|x| ev_c.eval(x.exp()).cost, lo, hi, 14);
        cands.push((x, c, 0.25 * (hi - lo)));
    }
    cands.sort_by(|a, b| a.1.total_cmp(&b.1));
    // Refine on the full histogram: the best candidate, and the runner-up when the coarse
    // histogram cannot tell them apart.
    let mut best_fine = (lc, ev_f.eval(cover.scale).cost);
    for (n, &(x, c, w)) in cands.iter().enumerate() {
        if n > 0 && c > cands[0].1 * 1.005 || n > 1 {
            break;
        }
        let r = golden(
            |y| ev_f.eval(y.exp()).cost,
            x - w.min(fine_step),
            x + w.min(fine_step),
            14,
        );
        if r.1 < best_fine.1 {
            best_fine = r;
        }
    }
    // Data narrower than two cells (a near-constant tensor) has its optimum where one grid point
    // sits on the data's mean, in dips far narrower than the scan can see: try them all.
    if dist.hi() - dist.lo() < 2.0 * cover.scale {
        let (l0, l1) = spec.l_range();
        let h = spec.levels() - 1;
        let (m1, m0): (f64, f64) = dist.bins().fold((0.0, 0.0), |(s1, s0), (a, b, c)| {
            (s1 + c * 0.5 * (a + b), s0 + c)
        });
        let mean = m1 / m0;
        let reach = if mean > 0.0 { l1 + h } else { -l0 };
        let mut tries: Vec<(f64, f64)> = (1..=reach.max(1))
            .map(|m| {
                let d = mean.abs() / m as f64;
                (d, ev_c.eval(d).cost)
            })
            .collect();
        tries.sort_by(|a, b| a.1.total_cmp(&b.1));
        for &(d, _) in tries.iter().take(3) {
            let c = ev_f.eval(d).cost;
            if c < best_fine.1 {
                best_fine = (d.ln(), c);
            }
        }
    }
    // Store the scale as a float32 value; re-pick the window for it.
    let scale = f32_nearest(best_fine.0.exp());
    let e = ev_f.eval(scale);
    let ec = ev_f.eval(cover.scale);
    if ec.cost < e.cost {
        return spec.encoding(cover.scale, ec.l);
    }
    spec.encoding(scale, e.l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::loss;
    use crate::spec::SpecOptions;

    fn gauss_dist(bins: usize) -> Dist {
        let counts: Vec<f64> = (0..bins)
            .map(|i| {
                let x = (i as f64 + 0.5) / bins as f64 * 8.0 - 4.0;
                (1e6 * (-0.5 * x * x).exp()).round()
            })
            .collect();
        let edges = (0..=bins)
            .map(|i| i as f64 / bins as f64 * 8.0 - 4.0)
            .collect();
        Dist::new(counts, edges, 0.0).unwrap()
    }

    #[test]
    fn evaluator_agrees_with_reference_loss() {
        let d = gauss_dist(300);
        for (bits, sym) in [(4, false), (3, true), (8, false)] {
            let spec = QuantSpec::new(&SpecOptions {
                bits,
                symmetric: sym,
                ..Default::default()
            })
            .unwrap();
            let mut ev = Evaluator::new(&d, spec, 2.0);
            for delta in [0.01, 0.1, 0.37, 1.3, 5.0] {
                let e = ev.eval(delta);
                let enc = spec.encoding(delta, e.l);
                let want = loss(&d, &enc).weighted(2.0);
                assert!(
                    (e.cost - want).abs() <= 1e-10 * want,
                    "bits {bits} Δ {delta}: {} vs {}",
                    e.cost,
                    want
                );
                // and it is the best window
                let (l0, l1) = spec.l_range();
                for l in l0..=l1 {
                    let c = loss(&d, &spec.encoding(delta, l)).weighted(2.0);
                    assert!(c >= e.cost * (1.0 - 1e-10));
                }
            }
        }
    }

    #[test]
    fn beats_a_dense_grid() {
        let d = gauss_dist(64);
        let spec = QuantSpec::new(&SpecOptions {
            bits: 4,
            ..Default::default()
        })
        .unwrap();
        let enc = optimal(&d, &spec, 1.0);
        let got = loss(&d, &enc).weighted(1.0);
        let (l0, l1) = spec.l_range();
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
