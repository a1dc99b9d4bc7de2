//! The power-of-two grid the bins lie on: exact exponent and bin-index arithmetic in f64.
//!
//! Bin `g` at exponent `k` covers `[g·2^k, (g+1)·2^k)`. Every function here is exact (no
//! rounding), which is what makes the histogram's state independent of how values arrive.

/// `2^e` for `-1022 <= e <= 1023`.
pub(crate) fn pow2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// `floor(log2 |x|)` for finite nonzero `x`, exactly.
pub(crate) fn exponent(x: f64) -> i32 {
    let bits = x.abs().to_bits();
    let biased = (bits >> 52) as i32;
    if biased == 0 {
        let mantissa = bits & ((1 << 52) - 1);
        (63 - mantissa.leading_zeros() as i32) - 1074
    } else {
        biased - 1023
    }
}

/// `floor(y)` for finite `|y| < 2^63`, without a libm call.
#[inline(always)]
pub(crate) fn floor_i64(y: f64) -> i64 {
    let truncated = y as i64;
    truncated - ((truncated as f64) > y) as i64
}

/// The grid index of `x`, `floor(x / 2^k)` given `inv_width = 2^-k`, exactly.
#[inline(always)]
pub(crate) fn bin_index(x: f64, inv_width: f64) -> i64 {
    let f = floor_i64(x * inv_width);
    // A tiny negative x whose quotient underflows to -0.0 still lies in bin -1.
    f - (f == 0 && x < 0.0 && x * inv_width == 0.0) as i64
}

/// The canonical exponent for nonzero finite values spanning `[mn, mx]` in `bins` bins: the
/// smallest `k` (not below `exponent(max|x|) - 52`, where bin edges stop being exact in f64)
/// whose grid puts both ends less than `bins` bins apart.
pub(crate) fn canonical_exponent(mn: f64, mx: f64, bins: usize) -> i32 {
    let max_abs = mn.abs().max(mx.abs());
    let k_floor = (exponent(max_abs) - 52).max(-1022);
    let half_span = 0.5 * mx - 0.5 * mn; // cannot overflow
    let mut k = k_floor;
    if half_span > 0.0 {
        let log_bins = usize::BITS as i32 - (bins - 1).leading_zeros() as i32; // ceil(log2 bins)
        k = k.max(exponent(half_span) + 1 - log_bins - 1);
    }
    loop {
        let inv = pow2(-k);
        if bin_index(mx, inv) - bin_index(mn, inv) < bins as i64 {
            return k;
        }
        k += 1;
    }
}

/// The `len + 1` edges of `len` bins from grid index `first` at exponent `k` (none for no bins).
pub(crate) fn edges(first: i64, len: usize, k: i32) -> Vec<f64> {
    if len == 0 {
        return Vec::new();
    }
    let width = pow2(k);
    (0..=len)
        .map(|i| (first + i as i64) as f64 * width)
        .collect()
}

/// Adds counts of bins `src_lo..` at exponent `k` into bins `dst_lo..` at exponent `k + shift`:
/// bin `g` lands in `g >> shift` (floor division by `2^shift`), which is exact on a grid
/// anchored at zero.
pub(crate) fn coarsen_into<T: Copy + Default + PartialEq + std::ops::AddAssign>(
    dst: &mut [T],
    dst_lo: i64,
    src: &[T],
    src_lo: i64,
    shift: u32,
) {
    for (i, &c) in src.iter().enumerate() {
        if c != T::default() {
            let g = src_lo + i as i64;
            let coarse = if shift >= 63 {
                if g < 0 {
                    -1
                } else {
                    0
                }
            } else {
                g >> shift
            };
            dst[(coarse - dst_lo) as usize] += c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponent_and_index_are_exact() {
        assert_eq!(exponent(1.0), 0);
        assert_eq!(exponent(0.75), -1);
        assert_eq!(exponent(f64::from_bits(1)), -1074);
        assert_eq!(exponent(f32::MAX as f64), 127);
        assert_eq!(bin_index(-1e-300, pow2(-10)), -1);
        assert_eq!(bin_index(3.0, pow2(1)), 6);
        assert_eq!(bin_index(-0.25, pow2(2)), -1);
    }

    #[test]
    fn edges_are_grid_multiples() {
        assert_eq!(edges(-2, 3, -1), vec![-1.0, -0.5, 0.0, 0.5]);
        assert!(edges(5, 0, 0).is_empty());
    }
}
