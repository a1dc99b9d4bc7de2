//! A piecewise-uniform density: the form every search method reads a histogram in.
//!
//! Bins `[edges[i], edges[i+1])` hold `counts[i]` values spread uniformly; `zeros` exact zeros sit
//! apart as a point mass at 0 (zero is always representable, so they never cost anything, but they
//! count in the total the loss is averaged over). Point masses at nonzero values ("atoms": the
//! values equal to a histogram's exact minimum or maximum, such as a ReLU6 spike at 6) lie at or
//! beyond either end of the bins. Every reader walks [`Dist::pieces`]: the atoms as pieces of
//! zero width, in order with the bins.

use crate::error::{invalid, Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Dist {
    edges: Vec<f64>,
    counts: Vec<f64>,
    zeros: f64,
    /// Point masses (value, count) at nonzero values, sorted, at or beyond the ends of the bins.
    atoms: Vec<(f64, f64)>,
    total: f64,
}

/// `∫ (x - c)² dx` times the density over a piece `[u, v]` of mass `mass`: written with the
/// piece's midpoint so that every term is non-negative and nothing cancels.
#[inline]
pub(crate) fn piece_sq(mass: f64, u: f64, v: f64, c: f64) -> f64 {
    let mid = 0.5 * (u + v) - c;
    let len = v - u;
    mass * (mid * mid + len * len * (1.0 / 12.0))
}

impl Dist {
    /// A density from bin counts and increasing edges (`edges.len() == counts.len() + 1`),
    /// plus a point mass of `zeros` at 0. Empty bins at both ends are trimmed.
    pub fn new(counts: Vec<f64>, edges: Vec<f64>, zeros: f64) -> Result<Dist> {
        if edges.len() != counts.len() + 1 {
            return Err(invalid(format!(
                "edges must have one more entry than counts, got {} counts and {} edges",
                counts.len(),
                edges.len()
            )));
        }
        if let Some((i, c)) = counts
            .iter()
            .enumerate()
            .find(|(_, c)| !(c.is_finite() && **c >= 0.0))
        {
            return Err(invalid(format!(
                "counts must be finite and non-negative, got counts[{i}]={c}"
            )));
        }
        if let Some((i, e)) = edges.iter().enumerate().find(|(_, e)| !e.is_finite()) {
            return Err(invalid(format!("edges must be finite, got edges[{i}]={e}")));
        }
        if let Some(i) = (0..counts.len()).find(|&i| edges[i] >= edges[i + 1]) {
            return Err(invalid(format!(
                "edges must be strictly increasing, got edges[{i}]={} and edges[{}]={}",
                edges[i],
                i + 1,
                edges[i + 1]
            )));
        }
        if !(zeros.is_finite() && zeros >= 0.0) {
            return Err(invalid(format!(
                "zeros must be finite and non-negative, got {zeros}"
            )));
        }
        let first = counts.iter().position(|&c| c > 0.0);
        let (counts, edges) = match first {
            None => (Vec::new(), Vec::new()),
            Some(f) => {
                let last = counts.iter().rposition(|&c| c > 0.0).unwrap_or(f);
                (counts[f..=last].to_vec(), edges[f..=last + 1].to_vec())
            }
        };
        let total = zeros + counts.iter().sum::<f64>();
        Ok(Dist {
            edges,
            counts,
            zeros,
            atoms: Vec::new(),
            total,
        })
    }

    /// The same density with point masses `(value, count)` added: each value nonzero, finite,
    /// and at or beyond an end of the bins (none between two bins).
    pub fn with_atoms(mut self, mut atoms: Vec<(f64, f64)>) -> Result<Dist> {
        atoms.sort_by(|a, b| a.0.total_cmp(&b.0));
        for &(x, m) in &atoms {
            if !(x.is_finite() && x != 0.0) {
                return Err(invalid(format!(
                    "a point mass must sit at a nonzero finite value, got {x}"
                )));
            }
            if !(m.is_finite() && m > 0.0) {
                return Err(invalid(format!(
                    "a point mass must be positive and finite, got {m} at {x}"
                )));
            }
            if let (Some(&lo), Some(&hi)) = (self.edges.first(), self.edges.last()) {
                if x > lo && x < hi {
                    return Err(invalid(format!(
                        "a point mass must lie at or beyond an end of the bins [{lo}, {hi}], got \
                         one at {x}"
                    )));
                }
            }
        }
        if atoms.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(invalid("two point masses at the same value".to_string()));
        }
        self.total += atoms.iter().map(|a| a.1).sum::<f64>();
        self.atoms = atoms;
        Ok(self)
    }

    /// A density on a uniform grid: bin `i` is `[origin + i*width, origin + (i+1)*width)`.
    pub fn uniform(origin: f64, width: f64, counts: &[u64], zeros: u64) -> Result<Dist> {
        let edges: Vec<f64> = (0..=counts.len())
            .map(|i| origin + i as f64 * width)
            .collect();
        if edges.iter().any(|e| !e.is_finite()) {
            return Err(invalid(format!(
                "the histogram's values reach {:e}, where bin edges overflow float64",
                if origin < 0.0 {
                    origin
                } else {
                    origin + counts.len() as f64 * width
                }
            )));
        }
        let counts = counts.iter().map(|&c| c as f64).collect();
        Dist::new(counts, edges, zeros as f64)
    }

    /// The same density with every value multiplied by `2^e` (exact).
    pub fn scaled_pow2(&self, e: i32) -> Dist {
        let f = 2f64.powi(e);
        Dist {
            edges: self.edges.iter().map(|x| x * f).collect(),
            counts: self.counts.clone(),
            zeros: self.zeros,
            atoms: self.atoms.iter().map(|&(x, m)| (x * f, m)).collect(),
            total: self.total,
        }
    }

    /// Maximal runs of touching nonzero bins, and each atom as a run of its own (a point mass
    /// is where a grid point can sit): (centre of mass, mass, width) of each, in order.
    pub fn runs(&self) -> Vec<(f64, f64, f64)> {
        let mut out: Vec<(f64, f64, f64)> = Vec::new();
        // (start, end, mass, first moment) of the run being built
        let mut run: Option<(f64, f64, f64, f64)> = None;
        for (a, b, c) in self.pieces() {
            if c == 0.0 {
                continue;
            }
            let m1 = c * 0.5 * (a + b);
            let point = a == b;
            run = match run {
                Some((s, e, m0, s1)) if e == a && !point && s != e => Some((s, b, m0 + c, s1 + m1)),
                Some((s, e, m0, s1)) => {
                    out.push((s1 / m0, m0, e - s));
                    Some((a, b, c, m1))
                }
                None => Some((a, b, c, m1)),
            };
        }
        if let Some((s, e, m0, s1)) = run {
            out.push((s1 / m0, m0, e - s));
        }
        out
    }

    /// Checks that the density holds at least one value, as every search needs.
    pub fn require_values(&self) -> Result<()> {
        if self.total > 0.0 {
            Ok(())
        } else {
            Err(Error::Empty(
                "cannot search a range: the histogram holds no finite value".to_string(),
            ))
        }
    }

    /// Edges of the bins (atoms not included).
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }
    /// Counts of the bins (atoms not included).
    pub fn counts(&self) -> &[f64] {
        &self.counts
    }
    /// The point masses at nonzero values: (value, count), sorted.
    pub fn atoms(&self) -> &[(f64, f64)] {
        &self.atoms
    }
    /// Number of pieces: bins and atoms (0: only zeros, or nothing).
    pub fn n_bins(&self) -> usize {
        self.counts.len() + self.atoms.len()
    }
    pub fn zeros(&self) -> f64 {
        self.zeros
    }
    /// Number of values (bins, atoms and zeros) the loss is averaged over.
    pub fn total(&self) -> f64 {
        self.total
    }
    /// Lowest nonzero value of the support (bins and atoms), or 0 without them.
    pub fn lo(&self) -> f64 {
        self.pieces().next().map_or(0.0, |p| p.0)
    }
    /// Highest nonzero value of the support (bins and atoms), or 0 without them.
    pub fn hi(&self) -> f64 {
        self.pieces().last().map_or(0.0, |p| p.1)
    }
    /// Smallest value of the support, counting the zeros.
    pub fn min(&self) -> f64 {
        if self.zeros > 0.0 || self.n_bins() == 0 {
            self.lo().min(0.0)
        } else {
            self.lo()
        }
    }
    /// Largest value of the support, counting the zeros.
    pub fn max(&self) -> f64 {
        if self.zeros > 0.0 || self.n_bins() == 0 {
            self.hi().max(0.0)
        } else {
            self.hi()
        }
    }
    pub fn max_abs(&self) -> f64 {
        self.lo().abs().max(self.hi().abs())
    }

    /// Mean of x² (the signal power of the SQNR).
    pub fn mean_square(&self) -> f64 {
        if self.total == 0.0 {
            return 0.0;
        }
        let s: f64 = self.pieces().map(|(a, b, c)| piece_sq(c, a, b, 0.0)).sum();
        s / self.total
    }

    /// The same values on at most `max_bins` bins, merging groups of neighbours.
    pub fn coarsened(&self, max_bins: usize) -> Dist {
        let b = self.counts.len();
        if b <= max_bins || max_bins == 0 {
            return self.clone();
        }
        let g = b.div_ceil(max_bins);
        let counts: Vec<f64> = self.counts.chunks(g).map(|c| c.iter().sum()).collect();
        let edges: Vec<f64> = (0..=counts.len())
            .map(|i| self.edges[(i * g).min(b)])
            .collect();
        Dist {
            edges,
            counts,
            zeros: self.zeros,
            atoms: self.atoms.clone(),
            total: self.total,
        }
    }

    /// The value below which a fraction `p` (0..=1) of the values lie, with the density uniform
    /// inside each bin and the zeros a point mass at 0.
    pub fn quantile(&self, p: f64) -> f64 {
        let target = p.clamp(0.0, 1.0) * self.total;
        let mut acc = 0.0;
        let mut zeros_done = self.zeros == 0.0;
        for (a, b, c) in self.pieces() {
            if !zeros_done && a >= 0.0 {
                if acc + self.zeros >= target {
                    return 0.0;
                }
                acc += self.zeros;
                zeros_done = true;
            }
            if !zeros_done && b > 0.0 {
                // The zeros sit inside this bin: split it at 0.
                let below = c * (-a) / (b - a);
                if acc + below >= target {
                    return a + (target - acc) / below * (-a);
                }
                acc += below;
                if acc + self.zeros >= target {
                    return 0.0;
                }
                acc += self.zeros;
                zeros_done = true;
                let above = c - below;
                if acc + above >= target && above > 0.0 {
                    return (target - acc) / above * b;
                }
                acc += above;
                continue;
            }
            if acc + c >= target && c > 0.0 {
                return a + (target - acc) / c * (b - a);
            }
            acc += c;
        }
        if !zeros_done {
            return 0.0;
        }
        self.max()
    }

    /// Every piece of the density in increasing order, as `(lo, hi, count)`: the bins, and the
    /// atoms as pieces with `lo == hi` (a reader that divides by the width must treat those as
    /// points).
    pub fn pieces(&self) -> impl Iterator<Item = (f64, f64, f64)> + '_ {
        let split = match self.edges.first() {
            Some(&lo) => self.atoms.partition_point(|a| a.0 <= lo),
            None => self.atoms.len(),
        };
        let (below, above) = self.atoms.split_at(split);
        below
            .iter()
            .map(|&(x, m)| (x, x, m))
            .chain(
                (0..self.counts.len())
                    .map(move |i| (self.edges[i], self.edges[i + 1], self.counts[i])),
            )
            .chain(above.iter().map(|&(x, m)| (x, x, m)))
    }
}

impl Dist {
    /// Number of values `<= x` (the zeros count once `x >= 0`).
    pub fn cdf(&self, x: f64) -> f64 {
        let mut acc = if x >= 0.0 { self.zeros } else { 0.0 };
        for (a, b, c) in self.pieces() {
            if x >= b {
                acc += c;
            } else {
                if x > a {
                    acc += c * (x - a) / (b - a);
                }
                break;
            }
        }
        acc
    }

    /// The value `t >= 0` with a fraction `p` of the values in `[-t, t]`.
    pub fn abs_quantile(&self, p: f64) -> f64 {
        let target = p.clamp(0.0, 1.0) * self.total;
        let below = |t: f64| self.cdf(t) - self.cdf(-t) + self.mass_at(-t);
        let (mut lo, mut hi) = (0.0, self.max_abs());
        if below(lo) >= target {
            return 0.0;
        }
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mid <= lo || mid >= hi {
                break;
            }
            if below(mid) >= target {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }

    /// Point mass at `x` (the zeros at 0, an atom at its value).
    fn mass_at(&self, x: f64) -> f64 {
        if x == 0.0 {
            self.zeros
        } else {
            self.atoms.iter().filter(|a| a.0 == x).map(|a| a.1).sum()
        }
    }

    /// The density of `|x|` resampled on `bins` equal bins over `[0, max|x|]` (zeros in bin 0).
    pub fn abs_resampled(&self, bins: usize) -> (Vec<f64>, f64) {
        let top = self.max_abs();
        let mut out = vec![0.0; bins];
        if bins == 0 {
            return (out, 0.0);
        }
        out[0] += self.zeros;
        if top <= 0.0 {
            return (out, 0.0);
        }
        let w = top / bins as f64;
        let mut spread = |u: f64, v: f64, dens: f64| {
            // |x| over [u, v], 0 <= u < v
            let mut i = ((u / w) as usize).min(bins - 1);
            let mut pos = u;
            while pos < v {
                let end = if i + 1 >= bins {
                    v
                } else {
                    ((i + 1) as f64 * w).min(v)
                };
                out[i] += dens * (end - pos);
                pos = end;
                i += 1;
                if i >= bins {
                    break;
                }
            }
        };
        let mut points = Vec::new();
        for (a, b, c) in self.pieces() {
            if a == b {
                points.push((((a.abs() / w) as usize).min(bins - 1), c));
                continue;
            }
            let dens = c / (b - a);
            if b <= 0.0 {
                spread(-b, -a, dens);
            } else if a >= 0.0 {
                spread(a, b, dens);
            } else {
                spread(0.0, -a, dens);
                spread(0.0, b, dens);
            }
        }
        for (i, c) in points {
            out[i] += c;
        }
        (out, w)
    }
}

#[cfg(test)]
impl Dist {
    /// A Gaussian (1e6 values at the peak) on `bins` bins over [-4, 4], for tests.
    pub(crate) fn gaussian_for_tests(bins: usize) -> Dist {
        let at = |i: usize| i as f64 / bins as f64 * 8.0 - 4.0;
        let counts = (0..bins)
            .map(|i| {
                let x = at(i) + 4.0 / bins as f64;
                (1e6 * (-0.5 * x * x).exp()).round()
            })
            .collect();
        Dist::new(counts, (0..=bins).map(at).collect(), 0.0).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_validates() {
        let d = Dist::new(
            vec![0.0, 2.0, 0.0, 1.0, 0.0],
            vec![0., 1., 2., 3., 4., 5.],
            3.0,
        )
        .unwrap();
        assert_eq!(d.counts(), &[2.0, 0.0, 1.0]);
        assert_eq!((d.lo(), d.hi(), d.total()), (1.0, 4.0, 6.0));
        assert_eq!(d.min(), 0.0);
        let e = Dist::new(vec![1.0], vec![1.0, 1.0], 0.0).unwrap_err();
        assert!(e.to_string().contains("strictly increasing"));
        let e = Dist::new(vec![-1.0], vec![0.0, 1.0], 0.0).unwrap_err();
        assert!(e.to_string().contains("counts[0]=-1"));
    }

    #[test]
    fn quantiles_of_uniform_bins() {
        let d = Dist::new(vec![1.0, 1.0], vec![-1.0, 0.0, 1.0], 2.0).unwrap();
        assert_eq!(d.quantile(0.0), -1.0);
        assert!((d.quantile(0.125) + 0.5).abs() < 1e-12);
        assert_eq!(d.quantile(0.5), 0.0);
        assert!((d.quantile(1.0) - 1.0).abs() < 1e-12);
        assert!((d.quantile(0.875) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn mean_square_is_exact() {
        let d = Dist::new(vec![3.0], vec![0.0, 1.0], 1.0).unwrap();
        assert!((d.mean_square() - 3.0 / 3.0 / 4.0).abs() < 1e-15);
    }
}
