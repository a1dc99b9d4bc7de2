//! A histogram with a weight beside every count: the loss-aware density.
//!
//! A tensor's quantization error does not cost the model the same everywhere: an activation the
//! loss is sensitive to (a large squared gradient) matters more than one it ignores. The
//! weighted histogram keeps, beside the exact counts of a [`Histogram`], the sum of a
//! non-negative weight per value (for example the squared gradient of the loss with respect to
//! that activation) in every bin, at the exact extremes, and at zero, so that the searches
//! minimize the weighted squared error, `sum w·(x - q(x))²`, instead of the plain one.
//!
//! Weights are summed exactly, like the counts: each is rounded down once to a multiple of
//! `2^-96` ([`WEIGHT_FRACTION_BITS`]) and the sums are 128-bit integers, so the state does not
//! depend on how values were batched, ordered or merged. Weights below `2^-96` count as 0; a sum
//! beyond `2^32` is an error (scale the weights down: only their ratios matter). The weight
//! bins follow the counts' window: when the counts' grid coarsens, the weight bins merge the
//! same way. Weights of NaN and ±Inf values are dropped with them (those values are never
//! binned).

use super::grid::{bin_index, coarsen_into, pow2};
use super::{Histogram, Sample};
use crate::dist::Dist;
use crate::error::{invalid, Error, Result};

/// Fraction bits of the fixed-point weight sums.
pub const WEIGHT_FRACTION_BITS: i32 = 96;

/// Counts and per-bin weight sums on the same grid (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedHistogram {
    counts: Histogram,
    /// Weight sums per bin of the counts' window (`bins` entries while it has values).
    weights: Vec<u128>,
    /// Weight of the values equal to the exact smallest / largest nonzero value, and of zeros.
    at_min: u128,
    at_max: u128,
    zeros: u128,
}

/// A weight as a fixed-point integer, rounded down: `floor(w * 2^96)`, from the float's bits
/// (a float-to-u128 conversion is a slow library call). `w` must be finite, `>= 0` and below
/// `2^32` (checked by the caller).
#[inline]
fn fixed(w: f64) -> u128 {
    let bits = w.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        return 0; // zero or subnormal: far below 2^-96
    }
    let mant = ((bits & ((1u64 << 52) - 1)) | (1u64 << 52)) as u128;
    // w = mant * 2^(exp - 1075), so w * 2^96 = mant * 2^(exp - 1075 + 96)
    let shift = exp - 1075 + WEIGHT_FRACTION_BITS;
    if shift >= 0 {
        mant << shift
    } else if shift > -128 {
        mant >> (-shift)
    } else {
        0
    }
}

fn overflow() -> Error {
    invalid(
        "the weights sum beyond 2^32: scale them down (only their ratios matter to the search)"
            .to_string(),
    )
}

fn add(a: &mut u128, b: u128) -> Result<()> {
    // 2^32 in fixed point is 2^128: the u128 overflows exactly there
    *a = a.checked_add(b).ok_or_else(overflow)?;
    Ok(())
}

impl WeightedHistogram {
    /// An empty weighted histogram with `bins` bins (as [`Histogram::new`]).
    pub fn new(bins: usize) -> Result<WeightedHistogram> {
        Ok(WeightedHistogram {
            counts: Histogram::new(bins)?,
            weights: Vec::new(),
            at_min: 0,
            at_max: 0,
            zeros: 0,
        })
    }

    /// The counts (exactly the [`Histogram`] of the same values).
    pub fn counts(&self) -> &Histogram {
        &self.counts
    }

    /// The total weight of the finite values.
    pub fn total_weight(&self) -> f64 {
        let s: u128 = self.weights.iter().sum::<u128>() + self.zeros;
        s as f64 * pow2(-WEIGHT_FRACTION_BITS)
    }

    /// The weight sums of the occupied bins (as [`Histogram::occupied`]'s counts), of the
    /// values equal to the smallest and largest nonzero value, and of the zeros.
    pub fn weight_sums(&self) -> (Vec<f64>, f64, f64, f64) {
        let (_, occ) = self.counts.occupied();
        let f = |x: u128| x as f64 * pow2(-WEIGHT_FRACTION_BITS);
        let bins = self.weights[..occ.len()].iter().map(|&x| f(x)).collect();
        (bins, f(self.at_min), f(self.at_max), f(self.zeros))
    }

    /// Moves the weight bins onto the counts' current window (coarsening exactly).
    fn follow(&mut self, k_old: i32, lo_old: i64) {
        let (k, lo) = (self.counts.k, self.counts.lo);
        if self.counts.nonzero == 0 {
            return;
        }
        if self.weights.is_empty() {
            self.weights = vec![0; self.counts.bins];
        } else if k != k_old || lo != lo_old {
            let mut fresh = vec![0u128; self.counts.bins];
            coarsen_into(&mut fresh, lo, &self.weights, lo_old, (k - k_old) as u32);
            self.weights = fresh;
        }
    }

    /// The exact total of the weight sums.
    fn total_fixed(&self) -> u128 {
        // never overflows: every update and merge checks the total first
        self.weights.iter().sum::<u128>() + self.zeros
    }

    /// Adds `values` with their `weights` (same length; each weight finite, `>= 0` and below
    /// `2^32`). Fails, changing nothing, on a bad weight or a weight sum beyond `2^32`.
    pub fn update<V: Sample, W: Copy + Into<f64> + Send + Sync>(
        &mut self,
        values: &[V],
        weights: &[W],
    ) -> Result<()> {
        if values.len() != weights.len() {
            return Err(invalid(format!(
                "values and weights must have the same length, got {} and {}",
                values.len(),
                weights.len()
            )));
        }
        // check every weight and the new total before changing anything: then no sum below
        // can overflow (each is part of the total). The float sum settles it unless the total
        // comes within a millionth of the limit; only then is it summed exactly.
        let mut sum = 0.0f64;
        for (i, &w) in weights.iter().enumerate() {
            let w: f64 = w.into();
            if !(w.is_finite() && (0.0..4294967296.0).contains(&w)) {
                return Err(invalid(format!(
                    "weights must be finite, >= 0 and below 2^32, weights[{i}] is {w}"
                )));
            }
            sum += w;
        }
        let before = self.total_fixed();
        if before as f64 * pow2(-WEIGHT_FRACTION_BITS) + sum * (1.0 + 1e-6) >= 4294967296.0 {
            let mut total = before;
            for (&x, &w) in values.iter().zip(weights) {
                if x.to_f64().is_finite() {
                    add(&mut total, fixed(w.into()))?;
                }
            }
        }
        let parts = super::parallel::parts_for(values.len(), 0);
        if parts <= 1 {
            self.add_checked(values, weights);
            return Ok(());
        }
        // one part a thread, each into a histogram of its own, merged back exactly
        let len = values.len().div_ceil(parts);
        let bins = self.counts.bins;
        let parts = values.chunks(len).zip(weights.chunks(len));
        let mine = super::parallel::map_on_threads(parts, |(v, w)| {
            let mut h = WeightedHistogram::new(bins).expect("bins already checked");
            h.add_checked(v, w);
            h
        });
        for h in &mine {
            self.merge(h)?; // cannot fail: the total was checked above
        }
        Ok(())
    }

    /// Adds values whose weights were checked (finite, in range, total below the limit).
    fn add_checked<V: Sample, W: Copy + Into<f64>>(&mut self, values: &[V], weights: &[W]) {
        let (k_old, lo_old) = (self.counts.k, self.counts.lo);
        let (min_old, max_old, had) = (
            self.counts.min_nz,
            self.counts.max_nz,
            self.counts.nonzero > 0,
        );
        self.counts.update(values, 1);
        self.follow(k_old, lo_old);
        if !had || self.counts.min_nz != min_old {
            self.at_min = 0;
        }
        if !had || self.counts.max_nz != max_old {
            self.at_max = 0;
        }
        let (mn, mx) = (self.counts.min_nz(), self.counts.max_nz());
        let (inv, lo) = (pow2(-self.counts.k), self.counts.lo);
        for (&x, &w) in values.iter().zip(weights) {
            let (x, w): (f64, f64) = (x.to_f64(), w.into());
            // a zero weight adds nothing (many: a ReLU passes no gradient to its negatives)
            if w == 0.0 || !x.is_finite() {
                continue;
            }
            let q = fixed(w);
            if x == 0.0 {
                self.zeros += q;
                continue;
            }
            self.weights[(bin_index(x, inv) - lo) as usize] += q;
            if x == mn {
                self.at_min += q;
            }
            if x == mx {
                self.at_max += q;
            }
        }
    }

    /// Adds `other` into `self`, exactly (same `bins`).
    pub fn merge(&mut self, other: &WeightedHistogram) -> Result<()> {
        let mut next = self.clone();
        let (k_old, lo_old) = (next.counts.k, next.counts.lo);
        let (min_old, max_old, had) = (
            next.counts.min_nz,
            next.counts.max_nz,
            next.counts.nonzero > 0,
        );
        next.counts.merge(&other.counts)?;
        add(&mut next.zeros, other.zeros)?;
        if other.counts.nonzero == 0 {
            *self = next;
            return Ok(());
        }
        next.follow(k_old, lo_old);
        // the extremes' weights: each side's where its extreme is the merged one
        let (mn, mx) = (next.counts.min_nz, next.counts.max_nz);
        let mut at_min = if had && min_old == mn { next.at_min } else { 0 };
        let mut at_max = if had && max_old == mx { next.at_max } else { 0 };
        if other.counts.min_nz == mn {
            add(&mut at_min, other.at_min)?;
        }
        if other.counts.max_nz == mx {
            add(&mut at_max, other.at_max)?;
        }
        (next.at_min, next.at_max) = (at_min, at_max);
        let shift = (next.counts.k - other.counts.k) as u32;
        let mut theirs = vec![0u128; next.counts.bins];
        coarsen_into(
            &mut theirs,
            next.counts.lo,
            &other.weights,
            other.counts.lo,
            shift,
        );
        for (a, b) in next.weights.iter_mut().zip(theirs) {
            add(a, b)?;
        }
        let mut total = 0u128;
        for &b in next.weights.iter().chain([&next.zeros]) {
            add(&mut total, b)?;
        }
        *self = next;
        Ok(())
    }

    /// The weighted density the searches read: the counts' pieces (see
    /// [`Histogram::to_dist`]) with the weight sums as their masses, scaled so that the total
    /// mass is the number of finite values (only the ratios matter to the search; the scale
    /// keeps the search's per-value heuristics meaningful). Without any weight, the counts.
    pub fn to_dist(&self) -> Result<Dist> {
        let total = self.total_weight();
        if total <= 0.0 {
            return Err(invalid(
                "the weighted histogram has no weight: every weight was 0 (or below 2^-96)"
                    .to_string(),
            ));
        }
        let scale = self.counts.finite() as f64 / total;
        let (bins, at_min, at_max, zeros) = self.weight_sums();
        let bins = bins.into_iter().map(|b| b * scale).collect();
        self.counts
            .dist_with(bins, at_min * scale, at_max * scale, zeros * scale)
    }
}

/// Version of the weighted histogram's `to_bytes` format.
pub const WEIGHTED_FORMAT_VERSION: u32 = 1;
const WEIGHTED_MAGIC: &[u8; 8] = b"QFCALWHS";

impl WeightedHistogram {
    /// A self-describing, versioned, checksummed byte string. Version 1, little-endian:
    /// magic `QFCALWHS`, version (u32), the counts' [`Histogram::to_bytes`] (u32 length, then
    /// the bytes), the weight at the smallest and the largest nonzero value and at zero (u128
    /// fixed point, 2^-96), the number `n` of weight bins (u32: the counts' occupied bins), `n`
    /// u128 weight sums, and an FNV-1a 64 checksum of everything before it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let counts = self.counts.to_bytes();
        let (_, occ) = self.counts.occupied();
        let mut out = Vec::with_capacity(12 + 4 + counts.len() + 48 + 4 + 16 * occ.len() + 8);
        out.extend_from_slice(WEIGHTED_MAGIC);
        out.extend_from_slice(&WEIGHTED_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(counts.len() as u32).to_le_bytes());
        out.extend_from_slice(&counts);
        for v in [self.at_min, self.at_max, self.zeros] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let n = if self.weights.is_empty() {
            0
        } else {
            occ.len()
        };
        out.extend_from_slice(&(n as u32).to_le_bytes());
        for &w in &self.weights[..n] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        let sum = super::codec::fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Reads `to_bytes` output; rejects anything corrupted, truncated, foreign or from a newer
    /// format version, and any state updates and merges cannot produce (weight where there is
    /// no value, extremes' weights beyond their bins', a total beyond 2^32).
    pub fn from_bytes(data: &[u8]) -> Result<WeightedHistogram> {
        let bad = |m: &str| {
            Error::Corrupt(format!(
                "not a valid qfcal weighted histogram byte string: {m}"
            ))
        };
        if data.len() < 12 || &data[..8] != WEIGHTED_MAGIC {
            return Err(bad(
                "it does not start with the qfcal weighted histogram header",
            ));
        }
        let version = u32::from_le_bytes(data[8..12].try_into().unwrap());
        if version != WEIGHTED_FORMAT_VERSION {
            return Err(Error::Corrupt(format!(
                "weighted histogram byte string has format version {version}, this qfcal reads version {WEIGHTED_FORMAT_VERSION}"
            )));
        }
        if data.len() < 12 + 4 + 8 {
            return Err(bad(&format!("it is truncated ({} bytes)", data.len())));
        }
        let body = &data[..data.len() - 8];
        let sum = u64::from_le_bytes(data[data.len() - 8..].try_into().unwrap());
        if super::codec::fnv1a(body) != sum {
            return Err(bad("checksum mismatch (corrupted or truncated)"));
        }
        let mut pos = 12usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            if pos + n > body.len() {
                return Err(bad("its length does not match its contents"));
            }
            let s = &body[pos..pos + n];
            pos += n;
            Ok(s)
        };
        let len = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let counts = Histogram::from_bytes(take(len)?)?;
        let u128_at = |b: &[u8]| u128::from_le_bytes(b.try_into().unwrap());
        let at_min = u128_at(take(16)?);
        let at_max = u128_at(take(16)?);
        let zeros = u128_at(take(16)?);
        let n = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let mut sums = Vec::with_capacity(n);
        for _ in 0..n {
            sums.push(u128_at(take(16)?));
        }
        if pos != body.len() {
            return Err(bad("its length does not match its contents"));
        }
        let (_, occ) = counts.occupied();
        let expected = if counts.nonzero == 0 { 0 } else { occ.len() };
        if n != expected {
            return Err(bad(&format!(
                "{n} weight bins for {expected} occupied bins of counts"
            )));
        }
        if sums.iter().zip(occ).any(|(&w, &c)| w > 0 && c == 0) || (zeros > 0 && counts.zeros == 0)
        {
            return Err(bad("weight where no value was counted"));
        }
        let (lo_bin, hi_bin) = (sums.first().copied(), sums.last().copied());
        if counts.nonzero == 0 && (at_min > 0 || at_max > 0) {
            return Err(bad("extremes' weight without values"));
        }
        if lo_bin.is_some_and(|b| at_min > b) || hi_bin.is_some_and(|b| at_max > b) {
            return Err(bad("the extremes' weight exceeds their bins'"));
        }
        let mut total = 0u128;
        for &w in sums.iter().chain([&zeros]) {
            total = total
                .checked_add(w)
                .ok_or_else(|| bad("its weights sum beyond 2^32"))?;
        }
        let mut weights = Vec::new();
        if counts.nonzero > 0 {
            weights = vec![0u128; counts.bins];
            weights[..n].copy_from_slice(&sums);
        }
        Ok(WeightedHistogram {
            counts,
            weights,
            at_min,
            at_max,
            zeros,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if i % 17 == 0 {
                    0.0
                } else {
                    ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.3) * (1 + i % 5) as f64
                }
            })
            .collect()
    }

    /// `data` with its checksum recomputed (to reach the checks behind it).
    fn resealed(mut data: Vec<u8>) -> Vec<u8> {
        let n = data.len() - 8;
        let sum = crate::histogram::codec::fnv1a(&data[..n]);
        data[n..].copy_from_slice(&sum.to_le_bytes());
        data
    }

    #[test]
    fn bytes_round_trip_exactly() {
        let empty = WeightedHistogram::new(128).unwrap();
        assert_eq!(
            WeightedHistogram::from_bytes(&empty.to_bytes()).unwrap(),
            empty
        );
        let mut only_zeros = WeightedHistogram::new(128).unwrap();
        only_zeros.update(&[0.0f64, 0.0], &[1.5f64, 2.0]).unwrap();
        let back = WeightedHistogram::from_bytes(&only_zeros.to_bytes()).unwrap();
        assert_eq!(back, only_zeros);
        let v = values(3000, 7);
        let w: Vec<f64> = v.iter().map(|x| x.abs() + 0.125).collect();
        let mut h = WeightedHistogram::new(256).unwrap();
        h.update(&v[..1000], &w[..1000]).unwrap();
        let mut other = WeightedHistogram::new(256).unwrap();
        other.update(&v[1000..], &w[1000..]).unwrap();
        h.merge(&other).unwrap();
        let bytes = h.to_bytes();
        let back = WeightedHistogram::from_bytes(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.to_dist().unwrap(), h.to_dist().unwrap());
        // merging after a round trip is the same as before it
        let mut a = back.clone();
        a.merge(&other).unwrap();
        let mut b = h.clone();
        b.merge(&other).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_bytes_are_rejected() {
        // a gap between the clusters leaves empty bins inside the span
        let v: Vec<f64> = values(500, 3)
            .iter()
            .map(|x| x.signum() * (1.0 + x.abs()))
            .collect();
        let w: Vec<f64> = v.iter().map(|x| x * x).collect();
        let mut h = WeightedHistogram::new(64).unwrap();
        h.update(&v, &w).unwrap();
        let good = h.to_bytes();
        let msg = |d: &[u8]| WeightedHistogram::from_bytes(d).unwrap_err().to_string();
        assert!(msg(&good[..good.len() - 1]).contains("checksum"));
        assert!(msg(b"QFCALHST").contains("header"));
        let mut flipped = good.clone();
        flipped[40] ^= 1;
        assert!(msg(&flipped).contains("checksum"));
        let mut newer = good.clone();
        newer[8] = 9;
        assert!(msg(&resealed(newer)).contains("format version 9"));
        // a weight in a bin without values: the first empty bin of the counts gets weight
        let (_, occ) = h.counts().occupied();
        let empty = occ
            .iter()
            .position(|&c| c == 0)
            .expect("an empty bin inside the span");
        let counts_len = u32::from_le_bytes(good[12..16].try_into().unwrap()) as usize;
        let at = 16 + counts_len + 48 + 4 + 16 * empty;
        let mut forged = good.clone();
        forged[at] = 1;
        assert!(msg(&resealed(forged)).contains("weight where no value was counted"));
        // the extremes' weight beyond their bin's
        let mut forged = good.clone();
        forged[16 + counts_len..16 + counts_len + 16].copy_from_slice(&u128::MAX.to_le_bytes());
        assert!(msg(&resealed(forged)).contains("exceeds"));
    }

    #[test]
    fn order_and_batching_free_and_merges_exactly() {
        let v = values(5000, 1);
        let w: Vec<f64> = v.iter().map(|x| x * x + 0.25).collect();
        let mut one = WeightedHistogram::new(64).unwrap();
        one.update(&v, &w).unwrap();
        let mut parts = WeightedHistogram::new(64).unwrap();
        // reversed, in uneven batches, then merged from two halves
        let mut a = WeightedHistogram::new(64).unwrap();
        let mut b = WeightedHistogram::new(64).unwrap();
        let rv: Vec<f64> = v.iter().rev().copied().collect();
        let rw: Vec<f64> = w.iter().rev().copied().collect();
        for (i, (cv, cw)) in rv.chunks(333).zip(rw.chunks(333)).enumerate() {
            let h = if i % 2 == 0 { &mut a } else { &mut b };
            h.update(cv, cw).unwrap();
        }
        parts.merge(&b).unwrap();
        parts.merge(&a).unwrap();
        assert_eq!(one, parts);
        // the counts are the plain histogram's
        let mut plain = Histogram::new(64).unwrap();
        plain.update(&v, 1);
        assert_eq!(one.counts(), &plain);
        // the weight sums, exactly: total, extremes and zeros
        let (bins, at_min, at_max, zeros) = one.weight_sums();
        let exact = |xs: &mut dyn Iterator<Item = f64>| -> f64 {
            (xs.map(fixed).sum::<u128>()) as f64 * pow2(-WEIGHT_FRACTION_BITS)
        };
        let nz = exact(&mut v.iter().zip(&w).filter(|p| *p.0 != 0.0).map(|p| *p.1));
        assert_eq!(bins.iter().sum::<f64>(), nz);
        let mn = v
            .iter()
            .cloned()
            .filter(|x| *x != 0.0)
            .fold(f64::INFINITY, f64::min);
        let mx = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(
            at_min,
            exact(&mut v.iter().zip(&w).filter(|p| *p.0 == mn).map(|p| *p.1))
        );
        assert_eq!(
            at_max,
            exact(&mut v.iter().zip(&w).filter(|p| *p.0 == mx).map(|p| *p.1))
        );
        assert_eq!(
            zeros,
            exact(&mut v.iter().zip(&w).filter(|p| *p.0 == 0.0).map(|p| *p.1))
        );
    }

    #[test]
    fn fixed_point_is_floor_of_the_scaled_weight() {
        for w in [
            0.0,
            1e-40,
            2f64.powi(-96),
            2f64.powi(-97),
            0.1,
            0.75,
            1.0,
            3.5e9,
            4294967295.9,
        ] {
            assert_eq!(fixed(w), (w * pow2(WEIGHT_FRACTION_BITS)) as u128, "{w}");
        }
        let mut s = 7u64;
        for _ in 0..10_000 {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            let w = f64::from_bits(s >> 2) % 4.0e9;
            if w.is_finite() && w >= 0.0 {
                assert_eq!(fixed(w), (w * pow2(WEIGHT_FRACTION_BITS)) as u128, "{w}");
            }
        }
    }

    #[test]
    fn a_large_update_split_over_threads_is_the_same() {
        let v: Vec<f32> = values(600_000, 9).iter().map(|&x| x as f32).collect();
        let w: Vec<f32> = v.iter().map(|x| x * x).collect();
        let mut whole = WeightedHistogram::new(256).unwrap();
        whole.update(&v, &w).unwrap(); // split over threads
        let mut pieces = WeightedHistogram::new(256).unwrap();
        for (cv, cw) in v.chunks(1000).zip(w.chunks(1000)) {
            pieces.update(cv, cw).unwrap(); // one thread each
        }
        assert_eq!(whole, pieces);
    }

    #[test]
    fn equal_weights_give_the_counts_density() {
        let v = values(3000, 2);
        let mut h = WeightedHistogram::new(128).unwrap();
        h.update(&v, &vec![0.5; v.len()]).unwrap();
        let (a, b) = (h.to_dist().unwrap(), h.counts().to_dist().unwrap());
        let pa: Vec<_> = a.pieces().collect();
        let pb: Vec<_> = b.pieces().collect();
        assert_eq!(pa.len(), pb.len());
        for (x, y) in pa.iter().zip(&pb) {
            assert_eq!((x.0, x.1), (y.0, y.1));
            assert!((x.2 - y.2).abs() <= 1e-9 * y.2.max(1.0));
        }
    }

    #[test]
    fn bad_weights_change_nothing() {
        let mut h = WeightedHistogram::new(64).unwrap();
        h.update(&[1.0, 2.0], &[1.0, 1.0]).unwrap();
        let before = h.clone();
        assert!(h.update(&[3.0], &[f64::NAN]).is_err());
        assert!(h.update(&[3.0], &[-1.0]).is_err());
        assert!(h.update(&[3.0, 4.0], &[1.0]).is_err());
        assert!(h.update(&[3.0, 4.0], &[3e9, 3e9]).is_err()); // sum beyond 2^32
        assert_eq!(h, before);
        assert!(WeightedHistogram::new(64).unwrap().to_dist().is_err());
        let mut z = WeightedHistogram::new(64).unwrap();
        z.update(&[1.0], &[0.0]).unwrap();
        assert!(z.to_dist().is_err());
    }
}
