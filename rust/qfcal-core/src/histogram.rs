//! An exact, order-independent, mergeable histogram with bounded memory.
//!
//! Bins lie on a power-of-two grid anchored at zero: bin `g` covers `[g·w, (g+1)·w)` with
//! `w = 2^k`. The state is a function of the multiset of values seen, never of how they arrived:
//! `k` is the smallest exponent (not below `exponent(max|x|) - 52`, where bin edges stop being
//! exact in f64) for which the nonzero finite span fits in `bins` bins, and the window starts at
//! the bin of the smallest value. When new data widens the span, neighbouring bin pairs merge
//! exactly (`g -> g >> 1`) and `k` grows; merging two histograms coarsens both to the union's
//! `k`. Counts are `u64`. Exact zeros, NaN and ±Inf are counted apart and never binned.

use crate::dist::Dist;
use crate::error::{invalid, Error, Result};
use std::hint::select_unpredictable;

pub const DEFAULT_BINS: usize = 4096;
pub const MIN_BINS: usize = 16;
pub const MAX_BINS: usize = 1 << 20;
/// Version of the `to_bytes` format.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"QFCALHST";
/// Values per block: stats and binning run block by block so the data is read from cache once.
pub const BLOCK: usize = 1 << 14;
/// Arrays at least this long are split across threads.
const PAR_MIN: usize = 1 << 18;

/// `2^e` for `-1022 <= e <= 1023`.
fn pow2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// `floor(log2 |x|)` for finite nonzero `x`, exactly.
pub(crate) fn exponent(x: f64) -> i32 {
    let bits = x.abs().to_bits();
    let e = (bits >> 52) as i32;
    if e == 0 {
        let m = bits & ((1 << 52) - 1);
        (63 - m.leading_zeros() as i32) - 1074
    } else {
        e - 1023
    }
}

/// `floor(y)` for finite `|y| < 2^63`, without a libm call.
#[inline(always)]
fn floor_i64(y: f64) -> i64 {
    let t = y as i64;
    t - ((t as f64) > y) as i64
}

/// `floor(x / 2^k)`, exactly (a tiny negative `x` whose quotient underflows still gives -1).
#[inline(always)]
fn index(x: f64, inv_w: f64) -> i64 {
    let f = floor_i64(x * inv_w);
    // A tiny negative x whose quotient underflows to -0.0 still lies in bin -1.
    f - (f == 0 && x < 0.0 && x * inv_w == 0.0) as i64
}

/// The canonical exponent for nonzero finite values spanning `[mn, mx]` in `bins` bins.
fn required_k(mn: f64, mx: f64, bins: usize) -> i32 {
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
        if index(mx, inv) - index(mn, inv) < bins as i64 {
            return k;
        }
        k += 1;
    }
}

/// Summary of one block of values (used by [`Sample`] implementations).
#[derive(Debug, Clone, Copy)]
pub struct BlockStats {
    min: f64,
    max: f64,
    nonzero: u64,
    zeros: u64,
    nan: u64,
    pos_inf: u64,
    neg_inf: u64,
}

/// A float type the histogram reads.
pub trait Sample: Copy + Send + Sync + 'static {
    fn to_f64(self) -> f64;
    /// Bins a block whose window the histogram already covers (see `Histogram::bin_block`).
    fn bin_block(block: &[Self], h: &Histogram, sub: &mut SubCounts);
    fn stats(block: &[Self]) -> BlockStats;
    /// Adds a block (at most `BLOCK` values): statistics first, then binning.
    fn feed(h: &mut Histogram, block: &[Self], sub: &mut Option<SubCounts>) {
        h.feed_block(block, sub);
    }
}

/// Calls `$f` compiled for AVX2 when the CPU has it (wheels target baseline x86-64).
macro_rules! with_avx2 {
    ($f:ident($($a:ident: $t:ty),*) -> $ret:ty) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn go($($a: $t),*) -> $ret {
            $f($($a),*)
        }
        #[cfg(target_arch = "x86_64")]
        let r = if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { go($($a),*) }
        } else {
            $f($($a),*)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let r = $f($($a),*);
        r
    }};
}

macro_rules! stats_body_impl {
    ($name:ident, $t:ty, $u:ty, $abs:expr, $inf:expr) => {
        #[inline(always)]
        fn $name(block: &[$t]) -> BlockStats {
            // Integer tests on the bit pattern and lane-parallel accumulators, so the loop
            // vectorizes on baseline x86-64: |x| bits 0 is a zero, >= the infinity pattern is
            // NaN or Inf, anything between is a nonzero finite value.
            const L: usize = 8;
            let mut mn = [<$t>::INFINITY; L];
            let mut mx = [<$t>::NEG_INFINITY; L];
            let mut zeros = [0 as $u; L];
            let mut special = [0 as $u; L];
            let chunks = block.chunks_exact(L);
            let rest = chunks.remainder();
            for c in chunks {
                for j in 0..L {
                    let x = c[j];
                    let b = x.to_bits() & $abs;
                    let ok = b.wrapping_sub(1) < $inf - 1;
                    let lo = if ok { x } else { <$t>::INFINITY };
                    let hi = if ok { x } else { <$t>::NEG_INFINITY };
                    mn[j] = if lo < mn[j] { lo } else { mn[j] };
                    mx[j] = if hi > mx[j] { hi } else { mx[j] };
                    zeros[j] += (b == 0) as $u;
                    special[j] += (b >= $inf) as $u;
                }
            }
            let mut s = BlockStats {
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                nonzero: 0,
                zeros: zeros.iter().map(|&z| z as u64).sum(),
                nan: 0,
                pos_inf: 0,
                neg_inf: 0,
            };
            let mut n_special: u64 = special.iter().map(|&z| z as u64).sum();
            for j in 0..L {
                s.min = s.min.min(mn[j] as f64);
                s.max = s.max.max(mx[j] as f64);
            }
            for &x in rest {
                let a = x.abs();
                if a == 0.0 {
                    s.zeros += 1;
                } else if a < <$t>::INFINITY {
                    s.min = s.min.min(x as f64);
                    s.max = s.max.max(x as f64);
                } else {
                    n_special += 1;
                }
            }
            if n_special > 0 {
                for &x in block {
                    if x.is_nan() {
                        s.nan += 1;
                    } else if x == <$t>::INFINITY {
                        s.pos_inf += 1;
                    } else if x == <$t>::NEG_INFINITY {
                        s.neg_inf += 1;
                    }
                }
            }
            s.nonzero = block.len() as u64 - s.zeros - n_special;
            s
        }
    };
}

stats_body_impl!(stats_f32, f32, u32, 0x7fff_ffffu32, 0x7f80_0000u32);
stats_body_impl!(
    stats_f64,
    f64,
    u64,
    0x7fff_ffff_ffff_ffffu64,
    0x7ff0_0000_0000_0000u64
);

/// Four interleaved `u32` count arrays (plus a sink slot each for skipped values): consecutive
/// values hitting one bin then update different memory, and no dependency chain forms.
pub struct SubCounts {
    stride: usize,
    data: Vec<u32>,
    pending: u64,
}

impl SubCounts {
    fn new(bins: usize) -> Self {
        SubCounts {
            stride: bins + 1,
            data: vec![0; 4 * (bins + 1)],
            pending: 0,
        }
    }
}

/// Values whose indices are computed in one (vectorizable) pass before they are counted.
const CHUNK: usize = 256;

/// Counts `n` values whose bin (or the sink for skipped values) is `idx(i)`: indices are
/// computed a chunk at a time into a small array, then scattered over the four lanes.
#[inline(always)]
fn bin4<F: Fn(usize) -> u32>(n: usize, idx: F, sub: &mut SubCounts) {
    let sink = (sub.stride - 1) as u32;
    let mut buf = [0u32; CHUNK];
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        for (o, b) in buf[..len].iter_mut().enumerate() {
            *b = idx(start + o).min(sink);
        }
        scatter4(&buf[..len], sub);
        start += len;
    }
}

/// Adds one to the count of each index (each at most the sink), round-robin over the lanes.
#[inline(always)]
fn scatter4(idx: &[u32], sub: &mut SubCounts) {
    let stride = sub.stride;
    let data = &mut sub.data[..4 * stride];
    let mut quads = idx.chunks_exact(4);
    for q in &mut quads {
        for (j, &b) in q.iter().enumerate() {
            debug_assert!((b as usize) < stride);
            // SAFETY: every index is at most the sink (stride - 1), so j*stride + b < 4*stride.
            unsafe { *data.get_unchecked_mut(j * stride + b as usize) += 1 };
        }
    }
    for &b in quads.remainder() {
        data[b as usize] += 1;
    }
}

/// How far ahead of the chunk being binned its data is prefetched, in values.
const PREFETCH_AHEAD: usize = PF * CHUNK;
const PF: usize = 2;

/// Asks the CPU to start loading the data `PREFETCH_AHEAD` values past `chunk` (the scatter
/// between two fused passes leaves the hardware prefetcher behind). Prefetching never faults,
/// so the address may lie past the end of the data.
#[inline(always)]
fn prefetch_ahead(chunk: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = chunk.as_ptr().wrapping_add(PREFETCH_AHEAD);
        for line in 0..CHUNK / 16 {
            // SAFETY: a prefetch is a hint; it reads nothing and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(16 * line) as *const i8) };
        }
    }
}

/// Statistics of a chunk read by the fused float32 pass.
#[derive(Clone, Copy)]
struct Fused {
    min: f32,
    max: f32,
    zeros: u32,
    special: u32,
}

/// One pass over a chunk of float32 values: their statistics, and the bin index of each under
/// the current window (`x·s` floored, minus `lo`; skipped values go to the sink). Values outside
/// the window get meaningless (but in-range) indices: the caller sees them in `min`/`max`,
/// grows the window and recomputes the chunk.
#[inline(always)]
fn fused_f32(chunk: &[f32], s: f32, lo: i32, sink: u32, out: &mut [u32; CHUNK]) -> Fused {
    const L: usize = 8;
    const LIM: f32 = (1 << 30) as f32;
    let mut mn = [f32::INFINITY; L];
    let mut mx = [f32::NEG_INFINITY; L];
    let mut zeros = [0u32; L];
    let mut special = [0u32; L];
    let n = chunk.len();
    let full = n - n % L;
    for (c, o) in chunk[..full]
        .chunks_exact(L)
        .zip(out[..full].chunks_exact_mut(L))
    {
        for j in 0..L {
            let x = c[j];
            let b = x.to_bits() & 0x7fff_ffff;
            let ok = b.wrapping_sub(1) < 0x7f80_0000 - 1;
            let lo_v = if ok { x } else { f32::INFINITY };
            let hi_v = if ok { x } else { f32::NEG_INFINITY };
            mn[j] = if lo_v < mn[j] { lo_v } else { mn[j] };
            mx[j] = if hi_v > mx[j] { hi_v } else { mx[j] };
            zeros[j] += (b == 0) as u32;
            special[j] += (b >= 0x7f80_0000) as u32;
            let y = if ok { x * s } else { 0.0 };
            let y = if y > LIM { LIM } else { y };
            let y = if y < -LIM { -LIM } else { y };
            // SAFETY: y is finite and |y| <= 2^30.
            let t: i32 = unsafe { y.to_int_unchecked() };
            let f = t - ((t as f32) > y) as i32;
            let i = if ok { (f - lo) as u32 } else { sink };
            o[j] = if i < sink { i } else { sink };
        }
    }
    let mut r = Fused {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        zeros: 0,
        special: 0,
    };
    for j in 0..L {
        r.min = r.min.min(mn[j]);
        r.max = r.max.max(mx[j]);
        r.zeros += zeros[j];
        r.special += special[j];
    }
    for i in full..n {
        let x = chunk[i];
        let b = x.to_bits() & 0x7fff_ffff;
        if b == 0 {
            r.zeros += 1;
            out[i] = sink;
        } else if b >= 0x7f80_0000 {
            r.special += 1;
            out[i] = sink;
        } else {
            r.min = r.min.min(x);
            r.max = r.max.max(x);
            let y = (x * s).clamp(-LIM, LIM);
            out[i] = ((y.floor() as i32 - lo) as u32).min(sink);
        }
    }
    r
}

impl Sample for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn feed(h: &mut Histogram, block: &[f32], sub: &mut Option<SubCounts>) {
        h.feed_block_f32(block, sub);
    }
    fn stats(block: &[f32]) -> BlockStats {
        with_avx2!(stats_f32(block: &[f32]) -> BlockStats)
    }
    fn bin_block(block: &[f32], h: &Histogram, sub: &mut SubCounts) {
        with_avx2!(bin_block_f32(block: &[f32], h: &Histogram, sub: &mut SubCounts) -> ())
    }
}

#[inline(always)]
fn bin_block_f32(block: &[f32], h: &Histogram, sub: &mut SubCounts) {
    let sink = h.bins as u32;
    let (k, lo) = (h.k, h.lo);
    if (-126..=0).contains(&k) && lo.unsigned_abs() + (h.bins as u64) < (1 << 30) {
        // float32 fast path: x·2^-k is exact (no underflow since 2^-k >= 1, no overflow in
        // the window) and so is its floor.
        let s = pow2(-k) as f32;
        let lo = lo as i32;
        bin4(
            block.len(),
            |i| {
                let x = block[i];
                let b = x.to_bits() & 0x7fff_ffff;
                let ok = b.wrapping_sub(1) < 0x7f80_0000 - 1;
                let y = if ok { x * s } else { 0.0 };
                // SAFETY: y is finite and |y| < 2^30 (0 for skipped values).
                let t: i32 = unsafe { y.to_int_unchecked() };
                let f = t - ((t as f32) > y) as i32;
                if ok {
                    (f - lo) as u32
                } else {
                    sink
                }
            },
            sub,
        );
    } else {
        let inv = pow2(-k);
        bin4(
            block.len(),
            |i| {
                let x = block[i] as f64;
                let a = x.abs();
                let ok = a > 0.0 && a < f64::INFINITY;
                let x = select_unpredictable(ok, x, 0.0);
                select_unpredictable(ok, (index(x, inv) - lo) as u32, sink)
            },
            sub,
        );
    }
}

impl Sample for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn stats(block: &[f64]) -> BlockStats {
        with_avx2!(stats_f64(block: &[f64]) -> BlockStats)
    }
    fn bin_block(block: &[f64], h: &Histogram, sub: &mut SubCounts) {
        let sink = h.bins as u32;
        let (inv, lo) = (pow2(-h.k), h.lo);
        bin4(
            block.len(),
            |i| {
                let x = block[i];
                let a = x.abs();
                let ok = a > 0.0 && a < f64::INFINITY;
                let x = select_unpredictable(ok, x, 0.0);
                select_unpredictable(ok, (index(x, inv) - lo) as u32, sink)
            },
            sub,
        );
    }
}

/// Adds counts of bins `src_lo..` at exponent `k` into bins `dst_lo..` at exponent `k + shift`:
/// bin `g` lands in `g >> shift` (floor division by `2^shift`), which is exact on a grid
/// anchored at zero.
fn coarsen_into(dst: &mut [u64], dst_lo: i64, src: &[u64], src_lo: i64, shift: u32) {
    for (i, &c) in src.iter().enumerate() {
        if c != 0 {
            let g = src_lo + i as i64;
            let g2 = if shift >= 63 {
                if g < 0 {
                    -1
                } else {
                    0
                }
            } else {
                g >> shift
            };
            dst[(g2 - dst_lo) as usize] += c;
        }
    }
}

/// See the module documentation.
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
        let last = (index(self.max_nz(), inv) - self.lo) as usize;
        (self.lo, &self.counts[..=last])
    }

    /// Edges of the occupied bins (`occupied().1.len() + 1` values).
    pub fn edges(&self) -> Vec<f64> {
        let (g0, c) = self.occupied();
        if c.is_empty() {
            return Vec::new();
        }
        let w = pow2(self.k);
        (0..=c.len()).map(|i| (g0 + i as i64) as f64 * w).collect()
    }

    /// The density the searches read: occupied bins plus the zeros as a point mass. Fails only
    /// for values within a bin of the float64 maximum, whose upper bin edge overflows.
    pub fn to_dist(&self) -> Result<Dist> {
        let (g0, c) = self.occupied();
        if c.is_empty() {
            return Dist::uniform(0.0, 1.0, &[], self.zeros);
        }
        let w = pow2(self.k);
        if !((g0 + c.len() as i64) as f64 * w).is_finite() {
            return Err(invalid(format!(
                "the histogram's values reach {:e}, within a bin of the float64 limit, where bin \
                 edges overflow",
                self.max_nz().abs().max(self.min_nz().abs())
            )));
        }
        Dist::uniform(g0 as f64 * w, w, c, self.zeros)
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
        let k = required_k(mn, mx, self.bins).max(self.k);
        let inv = pow2(-k);
        let first = index(mn, inv);
        let mut counts = vec![0u64; (index(mx, inv) - first + 1) as usize];
        coarsen_into(&mut counts, first, occ, g0, (k - self.k) as u32);
        counts[(-first) as usize] += self.zeros;
        (first, counts, k)
    }

    /// Whether a window is set (always, once a nonzero value was counted; before that only in a
    /// worker seeded with its parent's window).
    fn has_window(&self) -> bool {
        !self.counts.is_empty()
    }

    /// Grows the window (coarsening exactly) so that it covers nonzero values in `[mn, mx]`.
    fn cover(&mut self, mn: f64, mx: f64) {
        let (mn, mx) = if self.has_window() {
            (mn.min(self.min_nz()), mx.max(self.max_nz()))
        } else {
            (mn, mx)
        };
        let k = required_k(mn, mx, self.bins);
        let lo = index(mn, pow2(-k));
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

    fn flush(&mut self, sub: &mut SubCounts) {
        if sub.pending == 0 {
            return;
        }
        let stride = sub.stride;
        for j in 0..4 {
            let lane = &mut sub.data[j * stride..(j + 1) * stride];
            for (c, s) in self.counts.iter_mut().zip(lane.iter_mut()) {
                *c += *s as u64;
                *s = 0;
            }
            lane[stride - 1] = 0;
        }
        sub.pending = 0;
    }

    /// Adds one block (at most `BLOCK` values) through the feeder's sub-counts.
    fn feed_block<T: Sample>(&mut self, block: &[T], sub: &mut Option<SubCounts>) {
        let s = T::stats(block);
        self.zeros += s.zeros;
        self.nan += s.nan;
        self.pos_inf += s.pos_inf;
        self.neg_inf += s.neg_inf;
        if s.nonzero == 0 {
            return;
        }
        let grows = !self.has_window() || s.min < self.min_nz() || s.max > self.max_nz();
        if grows {
            if let Some(sub) = sub.as_mut() {
                self.flush(sub);
            }
            self.cover(s.min, s.max);
        }
        // A block whose nonzero values all lie in one bin (a constant or near-constant block,
        // such as a broadcast value or a saturated activation) is counted without binning.
        let inv = pow2(-self.k);
        let g = index(s.min, inv);
        if g == index(s.max, inv) {
            self.counts[(g - self.lo) as usize] += s.nonzero;
            self.nonzero += s.nonzero;
            return;
        }
        let sub = sub.get_or_insert_with(|| SubCounts::new(self.bins));
        // Four lanes of u32 cannot overflow before 2^32 pending values.
        if sub.pending + block.len() as u64 >= 1 << 32 {
            self.flush(sub);
        }
        T::bin_block(block, self, sub);
        sub.pending += block.len() as u64;
        self.nonzero += s.nonzero;
    }

    /// Whether the float32 fast path (exact `x·2^-k` and floor in float32) applies to the window.
    fn f32_fast(&self) -> bool {
        self.has_window()
            && (-126..=0).contains(&self.k)
            && self.lo.unsigned_abs() + (self.bins as u64) < (1 << 30)
    }

    /// Adds a block of float32 values: once the window is set, statistics and bin indices come
    /// from one fused pass per chunk (the data is read once), and a chunk that widens the window
    /// is recomputed after the window grows.
    fn feed_block_f32(&mut self, block: &[f32], sub: &mut Option<SubCounts>) {
        if !self.f32_fast() {
            self.feed_block(block, sub);
            return;
        }
        let sink = self.bins as u32;
        let mut buf = [0u32; CHUNK];
        for (ci, chunk) in block.chunks(CHUNK).enumerate() {
            if !self.f32_fast() {
                self.feed_block(chunk, sub);
                continue;
            }
            let (s, lo) = (pow2(-self.k) as f32, self.lo as i32);
            prefetch_ahead(chunk);
            let out = &mut buf;
            let st = with_avx2!(fused_f32(chunk: &[f32], s: f32, lo: i32, sink: u32, out: &mut [u32; CHUNK]) -> Fused);
            self.zeros += st.zeros as u64;
            if st.special > 0 {
                for &x in chunk {
                    if x.is_nan() {
                        self.nan += 1;
                    } else if x == f32::INFINITY {
                        self.pos_inf += 1;
                    } else if x == f32::NEG_INFINITY {
                        self.neg_inf += 1;
                    }
                }
            }
            let nonzero = (chunk.len() as u32 - st.zeros - st.special) as u64;
            if nonzero == 0 {
                continue;
            }
            let sub = sub.get_or_insert_with(|| SubCounts::new(self.bins));
            if sub.pending + chunk.len() as u64 >= 1 << 32 {
                self.flush(sub);
            }
            if (st.min as f64) < self.min_nz() || (st.max as f64) > self.max_nz() {
                // Grow once for the rest of the block, not chunk by chunk (sorted data would
                // otherwise grow the window at every chunk).
                let rest = f32::stats(&block[ci * CHUNK..]);
                self.flush(sub);
                self.cover(rest.min, rest.max);
                f32::bin_block(chunk, self, sub);
            } else {
                scatter4(&buf[..chunk.len()], sub);
            }
            sub.pending += chunk.len() as u64;
            self.nonzero += nonzero;
        }
    }

    /// Adds values on this thread.
    fn update_serial<T: Sample>(&mut self, values: &[T]) {
        let mut sub = None;
        for block in values.chunks(BLOCK) {
            T::feed(self, block, &mut sub);
        }
        if let Some(mut sub) = sub {
            self.flush(&mut sub);
        }
    }

    /// Adds values that arrive in pieces: `fill` refills `buf` and returns `false` when there is
    /// nothing more.
    pub fn update_chunked<T: Sample>(&mut self, mut fill: impl FnMut(&mut Vec<T>) -> bool) {
        let mut feeder = self.feeder();
        let mut buf: Vec<T> = Vec::with_capacity(BLOCK);
        loop {
            buf.clear();
            let more = fill(&mut buf);
            feeder.extend_from_slice(&buf);
            if !more {
                break;
            }
        }
    }

    /// A [`Feeder`]: adds values pushed one at a time or a slice at a time (strided, byte-swapped
    /// or converted input), on this thread.
    pub fn feeder<T: Sample>(&mut self) -> Feeder<'_, T> {
        Feeder {
            h: self,
            sub: None,
            buf: Vec::with_capacity(BLOCK),
        }
    }

    /// Adds every value of `values`; large arrays are split across `threads` threads (0: all
    /// available cores). The result does not depend on the split.
    pub fn update<T: Sample>(&mut self, values: &[T], threads: usize) {
        if values.len() < PAR_MIN {
            // one part whatever the thread count (and no system call to count the cores)
            self.update_serial(values);
            return;
        }
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let parts = threads.min(values.len() / (PAR_MIN / 2)).max(1);
        if parts <= 1 {
            self.update_serial(values);
            return;
        }
        let chunk = values.len().div_ceil(parts);
        let bins = self.bins;
        // Workers start from this histogram's window, so that data like what came before never
        // grows theirs; merging them back is exact whatever window they end with, since every
        // window lies on the same power-of-two grid.
        let seed = (self.nonzero > 0).then(|| (self.min_nz(), self.max_nz()));
        let partials: Vec<Histogram> = std::thread::scope(|scope| {
            let handles: Vec<_> = values
                .chunks(chunk)
                .map(|c| {
                    scope.spawn(move || {
                        let mut h = Histogram::new(bins).expect("bins already validated");
                        if let Some((mn, mx)) = seed {
                            h.cover(mn, mx);
                        }
                        h.update_serial(c);
                        h
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("histogram worker panicked"))
                .collect()
        });
        for p in &partials {
            self.merge(p).expect("same bins");
        }
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
        let shift = (self.k - other.k) as u32;
        coarsen_into(&mut self.counts, self.lo, &other.counts, other.lo, shift);
        self.nonzero += other.nonzero;
        Ok(())
    }

    /// A self-describing, versioned, checksummed byte string.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (_, occ) = self.occupied();
        let mut out = Vec::with_capacity(96 + 8 * occ.len());
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
        if version != FORMAT_VERSION {
            return Err(Error::Corrupt(format!(
                "histogram byte string has format version {version}, this qfcal reads version {FORMAT_VERSION}"
            )));
        }
        const HEAD: usize = 8 + 4 + 4 + 4 + 8 + 7 * 8 + 4;
        if data.len() < HEAD + 8 {
            return Err(bad(&format!("it is truncated ({} bytes)", data.len())));
        }
        let body = &data[..data.len() - 8];
        let sum = u64::from_le_bytes(data[data.len() - 8..].try_into().unwrap());
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
        let mut v = [0u64; 7];
        for x in v.iter_mut() {
            *x = u64::from_le_bytes(take(8).try_into().unwrap());
        }
        let n_occ = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
        if body.len() != HEAD + 8 * n_occ {
            return Err(bad("its length does not match its bin count"));
        }
        let occ: Vec<u64> = (0..n_occ)
            .map(|_| u64::from_le_bytes(take(8).try_into().unwrap()))
            .collect();
        let mut h = Histogram::new(bins).map_err(|e| bad(&e.to_string()))?;
        let [min_nz, max_nz, nonzero, zeros, nan, pos_inf, neg_inf] = v;
        h.zeros = zeros;
        h.nan = nan;
        h.pos_inf = pos_inf;
        h.neg_inf = neg_inf;
        if nonzero == 0 {
            if n_occ != 0 || k != 0 || lo != 0 || min_nz != 0 || max_nz != 0 {
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
        let kk = required_k(mn, mx, bins);
        let inv = pow2(-kk);
        if kk != k || index(mn, inv) != lo || (index(mx, inv) - lo + 1) as usize != n_occ {
            return Err(bad("its bin grid does not match its minimum and maximum"));
        }
        let total: u128 = occ.iter().map(|&c| c as u128).sum();
        if total != nonzero as u128 || occ.first() == Some(&0) || occ.last() == Some(&0) {
            return Err(bad("its counts do not add up to its value count"));
        }
        h.k = k;
        h.lo = lo;
        h.min_nz = min_nz;
        h.max_nz = max_nz;
        h.nonzero = nonzero;
        h.counts = vec![0; bins];
        h.counts[..n_occ].copy_from_slice(&occ);
        Ok(h)
    }
}

/// Adds values to a histogram as they come, a block at a time: [`push`](Feeder::push) and
/// [`extend_from_slice`](Feeder::extend_from_slice) may be mixed freely, and the histogram is the
/// same as after one [`Histogram::update`] with all the values. The counts are complete once the
/// feeder is dropped (or [`finish`](Feeder::finish)ed).
pub struct Feeder<'a, T: Sample> {
    h: &'a mut Histogram,
    sub: Option<SubCounts>,
    buf: Vec<T>,
}

impl<T: Sample> Feeder<'_, T> {
    /// Adds one value.
    #[inline(always)]
    pub fn push(&mut self, x: T) {
        self.buf.push(x);
        if self.buf.len() == BLOCK {
            self.drain();
        }
    }

    /// Adds every value of `values`; whole blocks are read in place.
    pub fn extend_from_slice(&mut self, mut values: &[T]) {
        if !self.buf.is_empty() {
            let n = (BLOCK - self.buf.len()).min(values.len());
            self.buf.extend_from_slice(&values[..n]);
            values = &values[n..];
            if self.buf.len() == BLOCK {
                self.drain();
            }
        }
        let mut blocks = values.chunks_exact(BLOCK);
        for block in &mut blocks {
            T::feed(self.h, block, &mut self.sub);
        }
        self.buf.extend_from_slice(blocks.remainder());
    }

    fn drain(&mut self) {
        if !self.buf.is_empty() {
            T::feed(self.h, &self.buf, &mut self.sub);
            self.buf.clear();
        }
    }

    /// Completes the counts (as dropping the feeder does).
    pub fn finish(self) {}
}

impl<T: Sample> Drop for Feeder<'_, T> {
    fn drop(&mut self) {
        // After a panic the histogram is incomplete anyway: do not risk a second one.
        if std::thread::panicking() {
            return;
        }
        self.drain();
        if let Some(sub) = self.sub.as_mut() {
            self.h.flush(sub);
        }
    }
}

fn fnv1a(data: &[u8]) -> u64 {
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

    #[test]
    fn exponent_and_index_are_exact() {
        assert_eq!(exponent(1.0), 0);
        assert_eq!(exponent(0.75), -1);
        assert_eq!(exponent(f64::from_bits(1)), -1074);
        assert_eq!(exponent(f32::MAX as f64), 127);
        assert_eq!(index(-1e-300, pow2(-10)), -1);
        assert_eq!(index(3.0, pow2(1)), 6);
        assert_eq!(index(-0.25, pow2(2)), -1);
    }

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

    #[test]
    fn bytes_round_trip_and_reject_corruption() {
        let mut h = Histogram::new(128).unwrap();
        h.update(&[1.0f64, 2.0, -3.5, 0.0, f64::NAN], 1);
        let b = h.to_bytes();
        assert_eq!(Histogram::from_bytes(&b).unwrap(), h);
        let mut bad = b.clone();
        bad[40] ^= 1;
        assert!(Histogram::from_bytes(&bad).is_err());
        assert!(Histogram::from_bytes(&b[..b.len() - 3]).is_err());
        let mut future = b.clone();
        future[8] = 2;
        assert!(Histogram::from_bytes(&future)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
    }
}
