//! An exact, order-independent, mergeable histogram with bounded memory.
//!
//! Bins lie on a power-of-two grid anchored at zero: bin `g` covers `[g·w, (g+1)·w)` with
//! `w = 2^k`. The state is a function of the multiset of values seen, never of how they arrived:
//! `k` is the smallest exponent (not below `exponent(max|x|) - 52`, where bin edges stop being
//! exact in f64) for which the nonzero finite span fits in `bins` bins, and the window starts at
//! the bin of the smallest value. When new data widens the span, neighbouring bin pairs merge
//! exactly (`g -> g >> 1`) and `k` grows; merging two histograms coarsens both to the union's
//! `k`. Counts are `u64`. Exact zeros, NaN and ±Inf are counted apart and never binned. The
//! exact smallest and largest nonzero values are kept, with how many values equal each (a
//! saturated activation's spike at its clip is a point mass there, not a bin's worth of spread):
//! the density the searches read ([`Histogram::to_dist`]) ends exactly at the data's extremes.
//!
//! The parts, each readable alone:
//! * this file: the [`Histogram`] state, its window and what it reports;
//! * `grid.rs`: exact exponent and bin-index arithmetic;
//! * `kernels.rs`: the vectorized statistics and binning loops, and every `unsafe` block;
//! * `feeder.rs`: values to counts, block by block, and the [`Feeder`];
//! * [`parallel`]: one update split across threads;
//! * `codec.rs`: the versioned byte format.

mod codec;
mod feeder;
mod grid;
mod kernels;
pub mod parallel;
mod weighted;

pub use codec::FORMAT_VERSION;
pub use feeder::Feeder;
pub(crate) use grid::exponent;
pub use kernels::{BlockStats, Sample, SubCounts};
pub use weighted::{WeightedHistogram, WEIGHT_FRACTION_BITS};

use crate::dist::Dist;
use crate::error::{invalid, Error, Result};
use grid::{bin_index, canonical_exponent, coarsen_into, pow2};

pub const DEFAULT_BINS: usize = 4096;
/// Fewest bins a histogram may have.
pub const MIN_BINS: usize = 16;
/// Most bins a histogram may have (`2^20`).
pub const MAX_BINS: usize = 1 << 20;
/// Values per block: stats and binning run block by block so the data is read from cache once.
pub const BLOCK: usize = 1 << 14;

/// Counts of the values seen, on a power-of-two grid anchored at zero (see the module
/// documentation): exact `u64` counts of the nonzero finite values in at most `bins` bins of
/// width `2^k`, the smallest `k` that fits their span, plus separate counts of exact zeros, NaN
/// and ±Inf. Two histograms of the same values are equal (`==`, and byte for byte in
/// [`to_bytes`](Histogram::to_bytes)) however the values were batched, ordered, split across
/// threads or merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    bins: usize,
    /// Bin width exponent; meaningful while `nonzero > 0`.
    k: i32,
    /// Grid index of the first bin of the window.
    lo: i64,
    /// `bins` counts while `nonzero > 0`, else empty.
    counts: Vec<u64>,
    /// Smallest and largest nonzero finite value (bit patterns, so that `Eq` is exact).
    min_nz: u64,
    max_nz: u64,
    /// How many values equal `min_nz` and `max_nz` (both count every value when they are equal;
    /// 0 when unknown: a histogram read from format version 1).
    at_min: u64,
    at_max: u64,
    nonzero: u64,
    zeros: u64,
    nan: u64,
    pos_inf: u64,
    neg_inf: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(DEFAULT_BINS).expect("default bins are valid")
    }
}

impl Histogram {
    /// An empty histogram with `bins` bins (`16..=2^20`; the span always covers at least half).
    pub fn new(bins: usize) -> Result<Histogram> {
        if !(MIN_BINS..=MAX_BINS).contains(&bins) {
            return Err(invalid(format!(
                "bins must be in {MIN_BINS}..={MAX_BINS}, got {bins}"
            )));
        }
        Ok(Histogram {
            bins,
            k: 0,
            lo: 0,
            counts: Vec::new(),
            min_nz: 0,
            max_nz: 0,
            at_min: 0,
            at_max: 0,
            nonzero: 0,
            zeros: 0,
            nan: 0,
            pos_inf: 0,
            neg_inf: 0,
        })
    }

    pub fn bins(&self) -> usize {
        self.bins
    }
    /// Number of nonzero finite values (the binned ones).
    pub fn nonzero(&self) -> u64 {
        self.nonzero
    }
    pub fn zeros(&self) -> u64 {
        self.zeros
    }
    pub fn nan(&self) -> u64 {
        self.nan
    }
    pub fn pos_inf(&self) -> u64 {
        self.pos_inf
    }
    pub fn neg_inf(&self) -> u64 {
        self.neg_inf
    }
    /// Number of finite values (binned plus zeros).
    pub fn finite(&self) -> u64 {
        self.nonzero + self.zeros
    }
    /// Every value seen, non-finite ones included.
    pub fn total(&self) -> u64 {
        self.finite() + self.nan + self.pos_inf + self.neg_inf
    }
    fn min_nz(&self) -> f64 {
        f64::from_bits(self.min_nz)
    }
    fn max_nz(&self) -> f64 {
        f64::from_bits(self.max_nz)
    }
    /// Smallest finite value, zeros included; `None` without finite values.
    pub fn min(&self) -> Option<f64> {
        match (self.nonzero > 0, self.zeros > 0) {
            (true, true) => Some(self.min_nz().min(0.0)),
            (true, false) => Some(self.min_nz()),
            (false, true) => Some(0.0),
            (false, false) => None,
        }
    }
    /// Largest finite value, zeros included; `None` without finite values.
    pub fn max(&self) -> Option<f64> {
        match (self.nonzero > 0, self.zeros > 0) {
            (true, true) => Some(self.max_nz().max(0.0)),
            (true, false) => Some(self.max_nz()),
            (false, true) => Some(0.0),
            (false, false) => None,
        }
    }
    /// How many values equal the smallest and the largest nonzero value (`(0, 0)` without
    /// nonzero values, or when unknown: a histogram read from format version 1).
    pub fn at_extremes(&self) -> (u64, u64) {
        (self.at_min, self.at_max)
    }
    /// Bin width `2^k`, `None` before any nonzero finite value.
    pub fn bin_width(&self) -> Option<f64> {
        (self.nonzero > 0).then(|| pow2(self.k))
    }
    /// Exponent `k` of the bin width, `None` before any nonzero finite value.
    pub fn exponent(&self) -> Option<i32> {
        (self.nonzero > 0).then_some(self.k)
    }

    /// The occupied bins: grid index of the first, and the counts from the bin of the smallest
    /// to the bin of the largest nonzero value (zeros not included).
    pub fn occupied(&self) -> (i64, &[u64]) {
        if self.nonzero == 0 {
            return (0, &[]);
        }
        let inv = pow2(-self.k);
        let last = (bin_index(self.max_nz(), inv) - self.lo) as usize;
        (self.lo, &self.counts[..=last])
    }

    /// Edges of the occupied bins (`occupied().1.len() + 1` values).
    pub fn edges(&self) -> Vec<f64> {
        let (first, counts) = self.occupied();
        grid::edges(first, counts.len(), self.k)
    }

    /// The density the searches read: the occupied bins, cut to end exactly at the smallest and
    /// largest nonzero values, the values equal to those two as point masses there, and the
    /// zeros as a point mass at 0. Fails only for values within a bin of the float64 maximum,
    /// whose upper bin edge overflows.
    pub fn to_dist(&self) -> Result<Dist> {
        let (_, c) = self.occupied();
        let masses: Vec<f64> = c.iter().map(|&x| x as f64).collect();
        self.dist_with(
            masses,
            self.at_min as f64,
            self.at_max as f64,
            self.zeros as f64,
        )
    }

    /// [`to_dist`](Histogram::to_dist) with other masses on the same pieces: `bins` for the
    /// occupied bins (extremes included), `at_min`/`at_max` for the values equal to the
    /// extremes (`at_max` unused where the maximum sits on its bin's lower edge, whose bin then
    /// holds only such values), `zeros` for the exact zeros. The weighted histogram's density.
    pub(crate) fn dist_with(
        &self,
        mut bins: Vec<f64>,
        at_min: f64,
        at_max: f64,
        zeros: f64,
    ) -> Result<Dist> {
        let (g0, c) = self.occupied();
        if c.is_empty() {
            return Dist::new(Vec::new(), vec![0.0], zeros);
        }
        let w = pow2(self.k);
        if !((g0 + c.len() as i64) as f64 * w).is_finite() {
            return Err(invalid(format!(
                "the histogram's values reach {:e}, within a bin of the float64 limit, where bin \
                 edges overflow",
                self.max_nz().abs().max(self.min_nz().abs())
            )));
        }
        let (mn, mx) = (self.min_nz(), self.max_nz());
        if mn == mx {
            let all: f64 = bins.iter().sum();
            return Dist::new(Vec::new(), vec![0.0], zeros)?.with_atoms(vec![(mn, all)]);
        }
        let n = c.len();
        let mut edges: Vec<f64> = (0..=n).map(|i| (g0 + i as i64) as f64 * w).collect();
        edges[0] = mn;
        edges[n] = mx;
        // A maximum on its bin's lower edge leaves that bin only values equal to it, whether or
        // not they were counted (a version 1 histogram).
        let at_max = if edges[n - 1] == mx {
            bins[n - 1]
        } else {
            at_max
        };
        // (never below 0: float rounding of weights summed apart)
        bins[0] = (bins[0] - at_min).max(0.0);
        bins[n - 1] = (bins[n - 1] - at_max).max(0.0);
        if edges[n - 1] == mx {
            bins.pop();
            edges.pop();
        }
        if bins.is_empty() {
            edges = vec![0.0];
        }
        let atoms = [(mn, at_min), (mx, at_max)]
            .into_iter()
            .filter(|&(_, m)| m > 0.0)
            .collect();
        Dist::new(bins, edges, zeros)?.with_atoms(atoms)
    }

    /// The histogram with the zeros binned too, as `np.histogram` would count them: the grid is
    /// coarsened exactly (as if the zeros had been binned all along) until the span from 0 to
    /// the data fits in `bins` bins. Returns the first grid index, the counts and the exponent.
    pub fn with_zeros_binned(&self) -> (i64, Vec<u64>, i32) {
        let (g0, occ) = self.occupied();
        if self.zeros == 0 {
            return (g0, occ.to_vec(), self.k);
        }
        if self.nonzero == 0 {
            return (0, vec![self.zeros], 0);
        }
        let (mn, mx) = (self.min_nz().min(0.0), self.max_nz().max(0.0));
        let k = canonical_exponent(mn, mx, self.bins).max(self.k);
        let inv = pow2(-k);
        let first = bin_index(mn, inv);
        let mut counts = vec![0u64; (bin_index(mx, inv) - first + 1) as usize];
        coarsen_into(&mut counts, first, occ, g0, (k - self.k) as u32);
        counts[(-first) as usize] += self.zeros;
        (first, counts, k)
    }

    /// Counts and edges with the zeros binned (see [`with_zeros_binned`]): what `np.histogram`
    /// gives for the same values on the same edges (`counts.len() + 1` edges; none without
    /// finite values).
    ///
    /// [`with_zeros_binned`]: Histogram::with_zeros_binned
    pub fn to_numpy(&self) -> (Vec<u64>, Vec<f64>) {
        let (first, counts, k) = self.with_zeros_binned();
        let edges = grid::edges(first, counts.len(), k);
        (counts, edges)
    }

    /// Whether a window is set (always, once a nonzero value was counted; before that only in a
    /// worker seeded with its parent's window).
    fn has_window(&self) -> bool {
        !self.counts.is_empty()
    }

    /// Whether float32 arithmetic bins exactly on the current grid: `x·2^-k` cannot underflow
    /// (`2^-k >= 1`) or leave `i32` within the window, so it and its floor are exact.
    fn f32_window_is_exact(&self) -> bool {
        (-126..=0).contains(&self.k) && self.lo.unsigned_abs() + (self.bins as u64) < (1 << 30)
    }

    /// Grows the window (coarsening exactly) so that it covers nonzero values in `[mn, mx]`.
    fn cover(&mut self, mn: f64, mx: f64) {
        let (mn, mx) = if self.has_window() {
            (mn.min(self.min_nz()), mx.max(self.max_nz()))
        } else {
            (mn, mx)
        };
        let k = canonical_exponent(mn, mx, self.bins);
        let lo = bin_index(mn, pow2(-k));
        if !self.has_window() || mn < self.min_nz() {
            self.at_min = 0;
        }
        if !self.has_window() || mx > self.max_nz() {
            self.at_max = 0;
        }
        if !self.has_window() {
            self.counts = vec![0; self.bins];
        } else if k != self.k || lo != self.lo {
            debug_assert!(k >= self.k);
            let mut fresh = vec![0u64; self.bins];
            coarsen_into(&mut fresh, lo, &self.counts, self.lo, (k - self.k) as u32);
            self.counts = fresh;
        }
        self.k = k;
        self.lo = lo;
        self.min_nz = mn.to_bits();
        self.max_nz = mx.to_bits();
    }

    /// Adds every value of `values`; large arrays are split across `threads` threads (0: all
    /// available cores, see [`parallel::parts_for`]). The result does not depend on the split.
    pub fn update<T: Sample>(&mut self, values: &[T], threads: usize) {
        let parts = parallel::parts_for(values.len(), threads);
        if parts <= 1 {
            self.update_serial(values);
            return;
        }
        let part_len = values.len().div_ceil(parts);
        self.update_in_parallel(values.chunks(part_len), |h, part| h.update_serial(part));
    }

    /// Adds `other` into `self`, exactly. Both must have the same `bins`.
    pub fn merge(&mut self, other: &Histogram) -> Result<()> {
        if other.bins != self.bins {
            return Err(Error::Incompatible(format!(
                "cannot merge histograms with different bins: {} and {}",
                self.bins, other.bins
            )));
        }
        self.zeros += other.zeros;
        self.nan += other.nan;
        self.pos_inf += other.pos_inf;
        self.neg_inf += other.neg_inf;
        if other.nonzero == 0 {
            return Ok(());
        }
        self.cover(other.min_nz(), other.max_nz());
        if other.min_nz == self.min_nz {
            self.at_min += other.at_min;
        }
        if other.max_nz == self.max_nz {
            self.at_max += other.at_max;
        }
        let shift = (self.k - other.k) as u32;
        coarsen_into(&mut self.counts, self.lo, &other.counts, other.lo, shift);
        self.nonzero += other.nonzero;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_specials_apart() {
        let mut h = Histogram::new(64).unwrap();
        h.update(
            &[
                0.0f32,
                -0.0,
                1.0,
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                -2.5,
            ],
            1,
        );
        assert_eq!(
            (h.zeros(), h.nan(), h.pos_inf(), h.neg_inf(), h.nonzero()),
            (2, 1, 1, 1, 2)
        );
        assert_eq!((h.min(), h.max()), (Some(-2.5), Some(1.0)));
        let (_, c) = h.occupied();
        assert_eq!(c.iter().sum::<u64>(), 2);
    }

    #[test]
    fn span_covers_at_least_half_the_bins() {
        let mut h = Histogram::new(256).unwrap();
        h.update(&[-3.0f32, 7.25], 1);
        let (_, c) = h.occupied();
        assert!(c.len() >= 128 && c.len() <= 256, "{}", c.len());
    }

    #[test]
    fn batching_does_not_matter() {
        let v: Vec<f32> = (0..100_000)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.37 - 100.0)
            .collect();
        let mut a = Histogram::new(512).unwrap();
        a.update(&v, 1);
        let mut b = Histogram::new(512).unwrap();
        for c in v.chunks(777).rev() {
            b.update(c, 1);
        }
        let mut c = Histogram::new(512).unwrap();
        c.update(&v, 2);
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn one_bin_blocks_count_like_any_other() {
        // Blocks whose values all share a bin are counted without binning each value: the same
        // histogram as when they are mixed with other values into every block.
        let c = 1.5f32;
        let near = f32::from_bits(c.to_bits() + 3); // 3 ulps away: its own one-bin blocks
        let others: Vec<f32> = (0..5000).map(|i| (i as f32 - 2500.0) * 0.01).collect();
        let mut constant: Vec<f32> = vec![c; 3 * BLOCK + 17];
        constant.extend(std::iter::repeat_n(near, BLOCK));
        constant.extend([0.0, f32::NAN, -0.0]);
        let mut a = Histogram::new(256).unwrap();
        a.update(&constant, 1);
        assert!(a.occupied().1.len() > 128); // c and near at either end of the window
        a.update(&others, 1);
        let mut mixed: Vec<f32> = constant.iter().chain(&others).copied().collect();
        let n = mixed.len();
        for i in 0..n {
            mixed.swap(i, (i * 7919) % n);
        }
        let mut b = Histogram::new(256).unwrap();
        b.update(&mixed, 1);
        assert_eq!(a, b);
        let mut f = Histogram::new(256).unwrap();
        let mut feeder = f.feeder::<f32>();
        mixed.iter().rev().for_each(|&x| feeder.push(x));
        feeder.finish();
        assert_eq!(f, b);
        assert_eq!(b.total(), n as u64);
    }

    /// The values equal to the extremes are counted however the values arrive (batches,
    /// threads, merges, the float32 fast path), and the density ends exactly at the extremes,
    /// with those values as point masses there.
    #[test]
    fn extremes_are_exact_point_masses() {
        // a ReLU6-like tensor: a spike at exactly 6.0 (a grid edge), zeros, values between
        let v: Vec<f32> = (0..300_000)
            .map(|i| match i % 7 {
                0 | 1 => 6.0,
                2 => 0.0,
                _ => ((i as u64 * 7919) % 5999) as f32 * 1e-3 + 1e-3,
            })
            .collect();
        let sixes = v.iter().filter(|&&x| x == 6.0).count() as u64;
        let smallest = v
            .iter()
            .filter(|&&x| x > 0.0)
            .fold(f32::INFINITY, |a, &b| a.min(b));
        let at_smallest = v.iter().filter(|&&x| x == smallest).count() as u64;
        let mut a = Histogram::new(512).unwrap();
        a.update(&v, 1);
        assert_eq!(a.at_extremes(), (at_smallest, sixes));
        let mut b = Histogram::new(512).unwrap();
        for c in v.chunks(1001).rev() {
            b.update(c, 2);
        }
        let mut c = Histogram::new(512).unwrap();
        c.update(&v, 3);
        let v64: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        let (mut d, mut e) = (Histogram::new(512).unwrap(), Histogram::new(512).unwrap());
        d.update(&v64[..1000], 1);
        e.update(&v64[1000..], 1);
        d.merge(&e).unwrap();
        for h in [&b, &c, &d] {
            assert_eq!(h, &a);
        }
        // a larger maximum later resets the count; an equal one adds to it
        let mut f = a.clone();
        f.update(&[7.0f32, 7.0], 1);
        assert_eq!(f.at_extremes(), (at_smallest, 2));
        f.update(&[7.0f32, 6.5], 1);
        assert_eq!(f.at_extremes(), (at_smallest, 3));
        let dist = a.to_dist().unwrap();
        assert_eq!((dist.lo(), dist.hi()), (smallest as f64, 6.0));
        assert_eq!(
            dist.atoms(),
            &[(smallest as f64, at_smallest as f64), (6.0, sixes as f64)]
        );
        assert_eq!(dist.total(), v.len() as f64);
        // one distinct nonzero value: a single point mass
        let mut g = Histogram::new(64).unwrap();
        g.update(&[2.5f32, 2.5, 0.0, 2.5], 1);
        assert_eq!(g.at_extremes(), (3, 3));
        let dist = g.to_dist().unwrap();
        assert_eq!(
            (dist.atoms(), dist.n_bins(), dist.zeros()),
            (&[(2.5, 3.0)][..], 1, 1.0)
        );
    }

    #[test]
    fn numpy_view_bins_the_zeros() {
        let mut h = Histogram::new(64).unwrap();
        h.update(&[0.0f64, 0.0, 3.0, -1.0], 1);
        let (counts, edges) = h.to_numpy();
        assert_eq!(counts.iter().sum::<u64>(), 4);
        assert_eq!(edges.len(), counts.len() + 1);
        let zero_bin = edges.iter().position(|&e| e > 0.0).unwrap() - 1;
        assert!(counts[zero_bin] >= 2);
        assert_eq!(Histogram::new(64).unwrap().to_numpy(), (vec![], vec![]));
        let mut zeros_only = Histogram::new(64).unwrap();
        zeros_only.update(&[0.0f32], 1);
        assert_eq!(zeros_only.to_numpy(), (vec![1], vec![0.0, 1.0]));
    }
}
