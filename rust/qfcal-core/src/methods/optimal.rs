//! `optimal`: the global minimum of the cost over every scale Δ > 0 and every allowed zero point.
//!
//! Zero sits on the grid, so for a fixed Δ the grid is the multiples of Δ and the zero point only
//! picks which window of `levels` of them is used. [`Evaluator::eval`] sweeps the bins once per Δ
//! to get, at every grid point, the clipping loss below/above it and the running rounding loss;
//! every window is then scored in O(1), so all zero points cost O(levels).
//!
//! Δ is searched in three stages: a geometric scan on a coarsened copy of the histogram (8 points
//! per octave, from `2·max|x|`, where everything rounds to zero, down until a lower bound on the
//! clipping loss exceeds the best cost found), golden-section refinement of the best basins, and a
//! final refinement on the full-resolution histogram. The min/max-covering scale is always a
//! candidate, so data that sits on a grid (quantized inputs) is found exactly.

use crate::dist::{piece_sq, Dist};
use crate::spec::{f32_nearest, Encoding, QuantSpec};

/// Scan density, points per octave.
const PER_OCTAVE: f64 = 8.0;
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
pub(crate) struct Evaluator<'a> {
    dist: &'a Dist,
    spec: QuantSpec,
    gamma: f64,
    s0: Vec<f64>,
    s1: Vec<f64>,
    s2lo: Vec<f64>,
    s2hi: Vec<f64>,
    up: Vec<f64>,
    lo: Vec<f64>,
    f: Vec<f64>,
    g: Vec<f64>,
    p: Vec<f64>,
}

impl<'a> Evaluator<'a> {
    pub fn new(dist: &'a Dist, spec: QuantSpec, gamma: f64) -> Self {
        Evaluator {
            dist,
            spec,
            gamma,
            s0: Vec::new(),
            s1: Vec::new(),
            s2lo: Vec::new(),
            s2hi: Vec::new(),
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
        let d = self.dist;
        let n = d.total();
        let clampi = |x: f64, lo: i64, hi: i64| -> i64 { x.clamp(lo as f64, hi as f64) as i64 };
        // Grid points that matter: the windows span -(q-1)..=q (one more on the right for the
        // lower bound), and nothing changes beyond the data.
        let ga = clampi((d.lo() / delta).floor(), -(q - 1), 0);
        let gb = clampi((d.hi() / delta).ceil(), 0, q);
        let ng = (gb - ga + 1) as usize;
        for v in [&mut self.s0, &mut self.s1, &mut self.s2lo, &mut self.s2hi, &mut self.up, &mut self.lo] {
            v.clear();
            v.resize(ng, 0.0);
        }
        let ta = ga as f64 * delta;
        let tb = gb as f64 * delta;
        // Data below the first grid point is clipped at every window: its moments about ta.
        let (mut f0, mut d1, mut m0) = (0.0, 0.0, 0.0);
        let (mut g0, mut e1, mut n0) = (0.0, 0.0, 0.0);
        let half = 0.5 * delta;
        for (a, b, c) in d.bins() {
            if c == 0.0 {
                continue;
            }
            let dens = c / (b - a);
            if a < ta {
                let v = b.min(ta);
                let mu = dens * (v - a);
                f0 += piece_sq(mu, a, v, ta);
                d1 += mu * (0.5 * (a + v) - ta);
                m0 += mu;
            }
            if b > tb {
                let u = a.max(tb);
                let mu = dens * (b - u);
                g0 += piece_sq(mu, u, b, tb);
                e1 += mu * (0.5 * (u + b) - tb);
                n0 += mu;
            }
            let (u, v) = (a.max(ta), b.min(tb));
            if u >= v {
                continue;
            }
            // Walk the half cells [ta + k·Δ/2, ta + (k+1)·Δ/2) that meet [u, v).
            let mut k = (((u - ta) / half).floor().max(0.0)) as usize;
            let kmax = 2 * (ng - 1);
            let mut pos = u;
            while pos < v && k < kmax {
                let i = k / 2;
                let m = ga + i as i64;
                let gm = m as f64 * delta;
                let end = (if k % 2 == 0 { gm + half } else { gm + delta }).min(v);
                if end > pos {
                    let mu = dens * (end - pos);
                    let qlo = piece_sq(mu, pos, end, gm);
                    let qhi = piece_sq(mu, pos, end, gm + delta);
                    self.s0[i] += mu;
                    self.s1[i] += mu * (0.5 * (pos + end) - gm);
                    self.s2lo[i] += qlo;
                    self.s2hi[i] += qhi;
                    if k % 2 == 0 {
                        self.up[i] += qlo;
                    } else {
                        self.lo[i + 1] += qhi;
                    }
                    pos = end;
                }
                k += 1;
            }
        }
        // Clipping below each grid point (F) and above it (G), by non-negative increments.
        self.f.clear();
        self.f.resize(ng, 0.0);
        self.g.clear();
        self.g.resize(ng, 0.0);
        self.f[0] = f0;
        for i in 0..ng - 1 {
            self.f[i + 1] = self.f[i] - 2.0 * delta * d1 + delta * delta * m0 + self.s2hi[i];
            d1 = d1 - delta * m0 + (self.s1[i] - delta * self.s0[i]);
            m0 += self.s0[i];
        }
        self.g[ng - 1] = g0;
        for i in (0..ng - 1).rev() {
            self.g[i] = self.g[i + 1] + 2.0 * delta * e1 + delta * delta * n0 + self.s2lo[i];
            e1 = e1 + delta * n0 + self.s1[i];
            n0 += self.s0[i];
        }
        // Running rounding loss over whole cells.
        self.p.clear();
        self.p.resize(ng, 0.0);
        let mut acc = 0.0;
        for i in 0..ng {
            acc += self.lo[i] + self.up[i];
            self.p[i] = acc;
        }
        let idx = |m: i64| -> usize { (m.clamp(ga, gb) - ga) as usize };
        let (l0, l1) = self.spec.l_range();
        let h = q - 1;
        let mut best = Eval { cost: f64::INFINITY, l: l0, lower_bound: 0.0 };
        for l in l0..=l1 {
            let (il, ih) = (idx(l), idx(l + h));
            let r = if ih > il { self.p[ih - 1] - self.p[il] + self.up[il] + self.lo[ih] } else { 0.0 };
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
            for l in l0..=l1 {
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
    let step = std::f64::consts::LN_2 / PER_OCTAVE;
    // Above 2·max|x| everything rounds to zero and the cost no longer changes.
    let top = ((2.0 * dist.max_abs()).ln() - lc).max(0.0);
    let j_top = (top / step).ceil() as i64 + 1;
    let mut scan: Vec<(f64, f64)> = Vec::new(); // (ln Δ, cost), decreasing Δ
    let mut best = f64::INFINITY;
    let mut j = j_top;
    let mut below_best = 0;
    loop {
        let x = lc + j as f64 * step;
        let e = ev_c.eval(x.exp());
        scan.push((x, e.cost));
        if e.cost < best {
            best = e.cost;
            below_best = 0;
        } else {
            below_best += 1;
        }
        // Stop once the clipping bound rules out every smaller Δ (with a margin for the
        // coarsening), or after 60 octaves.
        if j < 0 && ((e.lower_bound > 1.25 * best && below_best > PER_OCTAVE as usize) || j < -60 * PER_OCTAVE as i64) {
            break;
        }
        j -= 1;
    }
    // Local minima of the scan, best first.
    let mut minima: Vec<usize> = (0..scan.len())
        .filter(|&i| {
            let c = scan[i].1;
            (i == 0 || c <= scan[i - 1].1) && (i + 1 == scan.len() || c <= scan[i + 1].1)
        })
        .collect();
    minima.sort_by(|&a, &b| scan[a].1.total_cmp(&scan[b].1));
    minima.truncate(BASINS);
    let mut cands: Vec<(f64, f64)> = Vec::new(); // (ln Δ, coarse cost) after coarse refinement
    for &i in &minima {
        let (a, b) = (scan[i].0 - step, scan[i].0 + step);
        cands.push(golden(|x| ev_c.eval(x.exp()).cost, a, b, 14));
    }
    cands.sort_by(|a, b| a.1.total_cmp(&b.1));
    // Refine on the full histogram around the best two candidates.
    let mut best_fine = (lc, ev_f.eval(cover.scale).cost);
    for &(x, _) in cands.iter().take(2) {
        let r = golden(|y| ev_f.eval(y.exp()).cost, x - 0.5 * step, x + 0.5 * step, 18);
        if r.1 < best_fine.1 {
            best_fine = r;
        }
    }
    // Store the scale as a float32 value; re-pick the window for it.
    let scale = f32_nearest(best_fine.0.exp());
    let e = ev_f.eval(scale);
    let enc = spec.encoding(scale, e.l);
    let ec = ev_f.eval(cover.scale);
    if ec.cost < e.cost {
        return spec.encoding(cover.scale, ec.l);
    }
    enc
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
        let edges = (0..=bins).map(|i| i as f64 / bins as f64 * 8.0 - 4.0).collect();
        Dist::new(counts, edges, 0.0).unwrap()
    }

    #[test]
    fn evaluator_agrees_with_reference_loss() {
        let d = gauss_dist(300);
        for (bits, sym) in [(4, false), (3, true), (8, false)] {
            let spec = QuantSpec::new(&SpecOptions { bits, symmetric: sym, ..Default::default() }).unwrap();
            let mut ev = Evaluator::new(&d, spec, 2.0);
            for delta in [0.01, 0.1, 0.37, 1.3, 5.0] {
                let e = ev.eval(delta);
                let enc = spec.encoding(delta, e.l);
                let want = loss(&d, &enc).weighted(2.0);
                assert!((e.cost - want).abs() <= 1e-10 * want, "bits {bits} Δ {delta}: {} vs {}", e.cost, want);
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
        let spec = QuantSpec::new(&SpecOptions { bits: 4, ..Default::default() }).unwrap();
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
