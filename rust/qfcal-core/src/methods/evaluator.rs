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
    pub l: i64,
    /// A lower bound of the cost at every Δ' <= Δ (clipping alone).
    pub lower_bound: f64,
}

/// Scores every window at a given Δ; holds reusable buffers.
pub struct Evaluator {
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
    cost: Vec<f64>,
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

/// Stores the moments of half cell `k` and starts the next one.
#[inline(always)]
fn close_half(
    h0: &mut [f64],
    h1: &mut [f64],
    h2: &mut [f64],
    k: usize,
    acc: [f64; 3],
) -> (usize, [f64; 3]) {
    h0[k] = acc[0];
    h1[k] = acc[1];
    h2[k] = acc[2];
    (k + 1, [0.0; 3])
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
            cost: Vec::new(),
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
        self.ba.len()
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
                (k, acc) = close_half(&mut self.h0, &mut self.h1, &mut self.h2, k, acc);
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
                (k, acc) = close_half(&mut self.h0, &mut self.h1, &mut self.h2, k, acc);
                hend = hstart(k + 1).min(tb);
                centre = hstart(k) + 0.25 * delta;
            }
        }
        if nh > 0 {
            self.h0[k] += acc[0];
            self.h1[k] += acc[1];
            self.h2[k] += acc[2];
        }
        // Per grid point (index i): rounding loss of its lower and upper half cells, clipping
        // below it (F) and above it (G). A half cell's centre sits ±Δ/4 or ±3Δ/4 from the grid
        // points around it, so moments move between centres with constant offsets.
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
        let (q1, q3) = (0.25 * delta, 0.75 * delta);
        // F(t+Δ) = F(t) - 2Δ·D(t) + Δ²·M(t) + ∫_seg (x - t - Δ)², with D(t) = ∫_{x<t} (x - t) <= 0:
        // every increment is non-negative, so nothing cancels.
        let (mut d1, mut m0) = (below[1], below[0]);
        self.f[0] = below[2];
        let mut run = 0.0;
        for i in 0..ng - 1 {
            let (e, o) = (2 * i, 2 * i + 1);
            let (e0, e1, e2) = (self.h0[e], self.h1[e], self.h2[e]);
            let (o0, o1, o2) = (self.h0[o], self.h1[o], self.h2[o]);
            let up = second_about(e0, e1, e2, q1, 0.0);
            let lo = second_about(o0, o1, o2, -q1, 0.0);
            self.up[i] = up;
            self.lo[i + 1] = lo;
            run += self.lo[i] + up;
            self.p[i] = run;
            let seg_hi = second_about(e0, e1, e2, -q3, 0.0) + lo;
            let seg1_hi = e1 - q3 * e0 + o1 - q1 * o0;
            // (one add on each running value, so the loop is not latency-bound)
            self.f[i + 1] = self.f[i] + ((delta * delta * m0 + seg_hi) - 2.0 * delta * d1);
            d1 += seg1_hi - delta * m0;
            m0 += e0 + o0;
        }
        self.p[ng - 1] = run + self.lo[ng - 1] + self.up[ng - 1];
        let (mut e1s, mut n0) = (above[1], above[0]);
        self.g[ng - 1] = above[2];
        for i in (0..ng - 1).rev() {
            let (e, o) = (2 * i, 2 * i + 1);
            let (o0, o1, o2) = (self.h0[o], self.h1[o], self.h2[o]);
            let seg_lo = self.up[i] + second_about(o0, o1, o2, q3, 0.0);
            let seg1_lo = self.h1[e] + q1 * self.h0[e] + o1 + q3 * o0;
            self.g[i] = self.g[i + 1] + (2.0 * delta * e1s + delta * delta * n0 + seg_lo);
            e1s += delta * n0 + seg1_lo;
            n0 += self.h0[e] + o0;
        }
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
        let idx = |m: i64| -> usize { (m.clamp(ga, gb) - ga) as usize };
        // Every window of a smaller Δ lies inside a window [LΔ, (L+q)Δ] (free zero point) or the
        // same window (fixed zero point), so its clipping loss is at least the least of these.
        let mut lb = f64::INFINITY;
        let gamma = self.gamma;
        let window = |l: i64| -> (f64, f64) {
            let (il, ih) = (idx(l), idx(l + h));
            let r = if ih > il {
                self.p[ih - 1] - self.p[il] + self.up[il] + self.lo[ih]
            } else {
                0.0
            };
            let clip = self.f[il] + self.g[ih];
            (gamma * clip + r.max(0.0), clip)
        };
        let (ua, ub) = (l_first.max(ga), l1.min(gb - 1 - h));
        let mut consider = |l: i64, cost: f64, lbv: f64| {
            if cost < best.cost {
                best.cost = cost;
                best.l = l;
            }
            lb = lb.min(lbv);
        };
        // Windows that lie wholly inside [ga, gb - 1] index the arrays without clamping: they
        // are scored in a straight, vectorizable pass; the others one by one.
        let lb_of = |l: i64, clip: f64| {
            if l0 == l1 {
                clip
            } else {
                self.f[idx(l)] + self.g[idx(l + q)]
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
            let (f, g, p, up, lo) = (&self.f, &self.g, &self.p, &self.up, &self.lo);
            self.cost.clear();
            self.cost.extend((i0..i0 + n_w).map(|i| {
                let r = (p[i + hu - 1] - p[i] + up[i] + lo[i + hu]).max(0.0);
                gamma * (f[i] + g[i + hu]) + r
            }));
            for (j, &c) in self.cost.iter().enumerate() {
                let l = ua + j as i64;
                consider(l, c, lb_of(l, f[i0 + j] + g[i0 + j + hu]));
            }
        }
        if l_first > l0 {
            // the skipped windows (L < ga) all see F = F(ga) and a G no smaller than at L = ga
            lb = lb.min(self.f[0] + self.g[idx(ga - 1 + q)]);
        }
        best.cost /= n;
        best.lower_bound = self.gamma * lb / n;
        best
    }
}

/// Brent's minimizer of `f` on `[a, b]` (parabolic steps where the function is smooth, golden
/// sections elsewhere) to an absolute tolerance `tol` on x; returns the best point seen.
pub(crate) fn brent(
    mut f: impl FnMut(f64) -> f64,
    mut a: f64,
    mut b: f64,
    tol: f64,
    max_iter: usize,
) -> (f64, f64) {
    const CG: f64 = 0.381_966_011_250_105_1;
    let mut x = a + CG * (b - a);
    let (mut w, mut v) = (x, x);
    let mut fx = f(x);
    let (mut fw, mut fv) = (fx, fx);
    let (mut d, mut e) = (0.0f64, 0.0f64);
    for _ in 0..max_iter {
        let xm = 0.5 * (a + b);
        let tol2 = 2.0 * tol;
        if (x - xm).abs() <= tol2 - 0.5 * (b - a) {
            break;
        }
        let mut golden_step = true;
        if e.abs() > tol {
            let r = (x - w) * (fx - fv);
            let mut q = (x - v) * (fx - fw);
            let mut p = (x - v) * q - (x - w) * r;
            q = 2.0 * (q - r);
            if q > 0.0 {
                p = -p;
            }
            q = q.abs();
            if p.abs() < (0.5 * q * e).abs() && p > q * (a - x) && p < q * (b - x) {
                e = d;
                d = p / q;
                let u = x + d;
                if u - a < tol2 || b - u < tol2 {
                    d = if xm >= x { tol } else { -tol };
                }
                golden_step = false;
            }
        }
        if golden_step {
            e = if x >= xm { a - x } else { b - x };
            d = CG * e;
        }
        let u = if d.abs() >= tol {
            x + d
        } else {
            x + tol.copysign(d)
        };
        let fu = f(u);
        if fu <= fx {
            if u >= x {
                a = x;
            } else {
                b = x;
            }
            (v, fv, w, fw, x, fx) = (w, fw, x, fx, u, fu);
        } else {
            if u < x {
                a = u;
            } else {
                b = u;
            }
            if fu <= fw || w == x {
                (v, fv, w, fw) = (w, fw, u, fu);
            } else if fu <= fv || v == x || v == w {
                (v, fv) = (u, fu);
            }
        }
    }
    (x, fx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::loss;
    use crate::spec::SpecOptions;

    #[test]
    fn evaluator_agrees_with_reference_loss() {
        let d = Dist::gaussian_for_tests(300);
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
}
