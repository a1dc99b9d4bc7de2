//! The versioned byte format of a histogram (`to_bytes` / `from_bytes`).
//!
//! Version 2, all integers little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `QFCALHST` |
//! | 4 | format version (u32) |
//! | 4 | bins (u32) |
//! | 4 | bin-width exponent `k` (i32) |
//! | 8 | grid index of the first bin (i64) |
//! | 9 × 8 | smallest and largest nonzero value (f64 bit patterns), nonzero, zeros, NaN, +Inf, -Inf counts, and how many values equal the smallest and the largest nonzero value (u64) |
//! | 4 | number `n` of occupied bins (u32) |
//! | n × 8 | their counts (u64) |
//! | 8 | FNV-1a 64 checksum of everything before it |
//!
//! Version 1 (qfcal 0.1 before the extremes' counts) is the same without the last two fields;
//! it still reads, with those counts unknown (0).
//!
//! Reading accepts only what writing produces: a canonical histogram (grid, window and counts
//! consistent with the minimum and maximum), so that equal histograms have equal bytes.

use super::grid::{bin_index, canonical_exponent, pow2};
use super::Histogram;
use crate::error::{Error, Result};

/// Version of the `to_bytes` format.
pub const FORMAT_VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"QFCALHST";
/// u64 fields of the header, by format version.
const fn fields(version: u32) -> usize {
    if version == 1 {
        7
    } else {
        9
    }
}
/// Bytes before the counts: magic, version, bins, k, first index, the u64 fields, bin count.
const fn header_len(version: u32) -> usize {
    8 + 4 + 4 + 4 + 8 + fields(version) * 8 + 4
}
const HEADER_LEN: usize = header_len(FORMAT_VERSION);
/// Bytes of the trailing checksum.
const CHECKSUM_LEN: usize = 8;

impl Histogram {
    /// A self-describing, versioned, checksummed byte string.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (_, occ) = self.occupied();
        let mut out = Vec::with_capacity(HEADER_LEN + 8 * occ.len() + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.bins as u32).to_le_bytes());
        out.extend_from_slice(&self.k.to_le_bytes());
        out.extend_from_slice(&self.lo.to_le_bytes());
        for v in [
            self.min_nz,
            self.max_nz,
            self.nonzero,
            self.zeros,
            self.nan,
            self.pos_inf,
            self.neg_inf,
            self.at_min,
            self.at_max,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(occ.len() as u32).to_le_bytes());
        for &c in occ {
            out.extend_from_slice(&c.to_le_bytes());
        }
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Reads `to_bytes` output; rejects anything corrupted, truncated, foreign or from a newer
    /// format version, and anything that is not a canonical histogram.
    pub fn from_bytes(data: &[u8]) -> Result<Histogram> {
        let bad = |m: &str| Error::Corrupt(format!("not a valid qfcal histogram byte string: {m}"));
        if data.len() < 12 || &data[..8] != MAGIC {
            return Err(bad("it does not start with the qfcal histogram header"));
        }
        let version = u32::from_le_bytes(data[8..12].try_into().unwrap());
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(Error::Corrupt(format!(
                "histogram byte string has format version {version}, this qfcal reads versions 1 to {FORMAT_VERSION}"
            )));
        }
        let header = header_len(version);
        if data.len() < header + CHECKSUM_LEN {
            return Err(bad(&format!("it is truncated ({} bytes)", data.len())));
        }
        let body = &data[..data.len() - CHECKSUM_LEN];
        let sum = u64::from_le_bytes(data[data.len() - CHECKSUM_LEN..].try_into().unwrap());
        if fnv1a(body) != sum {
            return Err(bad("checksum mismatch (corrupted or truncated)"));
        }
        let mut pos = 12;
        let mut take = |n: usize| {
            let s = &body[pos..pos + n];
            pos += n;
            s
        };
        let bins = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
        let k = i32::from_le_bytes(take(4).try_into().unwrap());
        let lo = i64::from_le_bytes(take(8).try_into().unwrap());
        let mut fields = [0u64; 9];
        for x in fields.iter_mut().take(self::fields(version)) {
            *x = u64::from_le_bytes(take(8).try_into().unwrap());
        }
        let n_occ = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
        if body.len() != header + 8 * n_occ {
            return Err(bad("its length does not match its bin count"));
        }
        let occ: Vec<u64> = (0..n_occ)
            .map(|_| u64::from_le_bytes(take(8).try_into().unwrap()))
            .collect();
        let mut h = Histogram::new(bins).map_err(|e| bad(&e.to_string()))?;
        let [min_nz, max_nz, nonzero, zeros, nan, pos_inf, neg_inf, at_min, at_max] = fields;
        h.zeros = zeros;
        h.nan = nan;
        h.pos_inf = pos_inf;
        h.neg_inf = neg_inf;
        if nonzero == 0 {
            if n_occ != 0
                || k != 0
                || lo != 0
                || min_nz != 0
                || max_nz != 0
                || at_min != 0
                || at_max != 0
            {
                return Err(bad("it describes bins but counts no binned value"));
            }
            return Ok(h);
        }
        let (mn, mx) = (f64::from_bits(min_nz), f64::from_bits(max_nz));
        if !(mn.is_finite() && mx.is_finite() && mn != 0.0 && mx != 0.0 && mn <= mx) {
            return Err(bad(
                "its minimum and maximum are not nonzero finite values in order",
            ));
        }
        let expected_k = canonical_exponent(mn, mx, bins);
        let inv = pow2(-expected_k);
        if expected_k != k
            || bin_index(mn, inv) != lo
            || (bin_index(mx, inv) - lo + 1) as usize != n_occ
        {
            return Err(bad("its bin grid does not match its minimum and maximum"));
        }
        let total: u128 = occ.iter().map(|&c| c as u128).sum();
        if total != nonzero as u128 || occ.first() == Some(&0) || occ.last() == Some(&0) {
            return Err(bad("its counts do not add up to its value count"));
        }
        let (first, last) = (occ[0], occ[n_occ - 1]);
        let extremes_fit = if mn == mx {
            at_min == at_max && at_min <= nonzero
        } else if n_occ == 1 {
            at_min as u128 + at_max as u128 <= first as u128
        } else {
            at_min <= first && at_max <= last
        };
        if !extremes_fit {
            return Err(bad(
                "its counts at the minimum and maximum exceed the counts of their bins",
            ));
        }
        h.k = k;
        h.lo = lo;
        h.at_min = at_min;
        h.at_max = at_max;
        h.min_nz = min_nz;
        h.max_nz = max_nz;
        h.nonzero = nonzero;
        h.counts = vec![0; bins];
        h.counts[..n_occ].copy_from_slice(&occ);
        Ok(h)
    }
}

/// `to_bytes` in format version 1 (no counts at the extremes), for the tests of reading it.
#[cfg(test)]
pub(super) fn to_bytes_v1(h: &Histogram) -> Vec<u8> {
    let mut b = h.to_bytes();
    b.truncate(b.len() - CHECKSUM_LEN);
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    let at = 8 + 4 + 4 + 4 + 8 + 7 * 8;
    b.drain(at..at + 16);
    let sum = fnv1a(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

/// The FNV-1a 64-bit hash: the checksum of the byte format.
pub(super) fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Version 1 bytes still read: the same histogram with the extremes' counts unknown, and
    /// the same density wherever the extremes do not sit on a bin edge.
    #[test]
    fn reads_version_1() {
        let mut h = Histogram::new(128).unwrap();
        h.update(&[1.0f64, 2.0, 2.0, -3.5, 0.0, 6.0, 6.0, 6.0], 1);
        let old = Histogram::from_bytes(&to_bytes_v1(&h)).unwrap();
        assert_eq!(old.at_extremes(), (0, 0));
        assert_eq!(old.occupied(), h.occupied());
        // 6.0 sits on a bin edge: its bin holds only values equal to it, a point mass anyway
        let (d_old, d_new) = (old.to_dist().unwrap(), h.to_dist().unwrap());
        assert_eq!(d_old.atoms(), &[(6.0, 3.0)]);
        assert_eq!(d_new.atoms(), &[(-3.5, 1.0), (6.0, 3.0)]);
        assert_eq!((d_old.lo(), d_old.hi()), (d_new.lo(), d_new.hi()));
        assert_eq!(d_old.total(), d_new.total());
    }

    #[test]
    fn bytes_round_trip_and_reject_corruption() {
        let mut h = Histogram::new(128).unwrap();
        h.update(&[1.0f64, 2.0, -3.5, 0.0, f64::NAN], 1);
        let b = h.to_bytes();
        assert_eq!(
            b.len(),
            HEADER_LEN + 8 * h.occupied().1.len() + CHECKSUM_LEN
        );
        assert_eq!(Histogram::from_bytes(&b).unwrap(), h);
        let mut bad = b.clone();
        bad[40] ^= 1;
        assert!(Histogram::from_bytes(&bad).is_err());
        assert!(Histogram::from_bytes(&b[..b.len() - 3]).is_err());
        // a count at an extreme larger than its bin's count is not a histogram
        let mut wrong = b.clone();
        wrong.truncate(wrong.len() - CHECKSUM_LEN);
        let at = 8 + 4 + 4 + 4 + 8 + 8 * 8;
        wrong[at..at + 8].copy_from_slice(&99u64.to_le_bytes());
        let sum = fnv1a(&wrong);
        wrong.extend_from_slice(&sum.to_le_bytes());
        assert!(Histogram::from_bytes(&wrong)
            .unwrap_err()
            .to_string()
            .contains("exceed"));
        let mut future = b.clone();
        future[8] = 3;
        assert!(Histogram::from_bytes(&future)
            .unwrap_err()
            .to_string()
            .contains("version 3"));
    }
}
