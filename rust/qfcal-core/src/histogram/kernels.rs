//! The hot loops, and every `unsafe` block of the histogram: block statistics, bin indices and
//! counting, compiled twice on x86-64 (baseline and AVX2, picked at run time).
//!
//! Each `unsafe` block is one of: a call of an AVX2 build after the CPU was checked for AVX2; an
//! unchecked store whose index is bounded by the sink (see [`scatter_into_lanes`]); a float to
//! int conversion of a value already clamped into `i32` range; a prefetch hint, which cannot
//! fault. The loops are written branch-free on the bit patterns so that they vectorize.

use super::grid::{bin_index, pow2};
use super::Histogram;
use std::hint::select_unpredictable;

/// Summary of one block of values (used by [`Sample`] implementations).
#[derive(Debug, Clone, Copy)]
pub struct BlockStats {
    pub(super) min: f64,
    pub(super) max: f64,
    pub(super) nonzero: u64,
    pub(super) zeros: u64,
    pub(super) nan: u64,
    pub(super) pos_inf: u64,
    pub(super) neg_inf: u64,
}

/// A float type the histogram reads: the kernels that summarize and bin a block of it.
pub trait Sample: Copy + Send + Sync + 'static {
    fn to_f64(self) -> f64;
    /// Bins a block whose window the histogram already covers (see `Histogram::bin_block`).
    fn bin_block(block: &[Self], h: &Histogram, sub: &mut SubCounts);
    fn stats(block: &[Self]) -> BlockStats;
    /// How many values of `block` (at most `BLOCK`) equal `v`, a value of the block (so exact in
    /// its type): the mass at the minimum or the maximum.
    fn count_equal(block: &[Self], v: f64) -> u64;
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

/// Lane-parallel accumulators per loop: enough independent chains to fill a vector register.
const LANES: usize = 8;

/// How many values of `block` equal `v`: lane-parallel, so the comparisons vectorize.
#[inline(always)]
fn count_equal_kernel<F: Copy + PartialEq>(block: &[F], v: F) -> u64 {
    let mut lanes = [0u64; LANES];
    let chunks = block.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            lanes[j] += (c[j] == v) as u64;
        }
    }
    lanes.iter().sum::<u64>() + rest.iter().filter(|&&x| x == v).count() as u64
}

fn count_equal_f32(block: &[f32], v: f32) -> u64 {
    count_equal_kernel(block, v)
}

fn count_equal_f64(block: &[f64], v: f64) -> u64 {
    count_equal_kernel(block, v)
}

/// Defines `$name(block: &[$float]) -> BlockStats`; `$bits` is the same-width unsigned integer,
/// `$abs_mask` clears the sign bit and `$inf_bits` is the infinity pattern.
macro_rules! block_stats_kernel {
    ($name:ident, $float:ty, $bits:ty, $abs_mask:expr, $inf_bits:expr) => {
        #[inline(always)]
        fn $name(block: &[$float]) -> BlockStats {
            // Integer tests on the bit pattern and lane-parallel accumulators, so the loop
            // vectorizes on baseline x86-64: |x| bits 0 is a zero, >= the infinity pattern is
            // NaN or Inf, anything between is a nonzero finite value.
            let mut lane_min = [<$float>::INFINITY; LANES];
            let mut lane_max = [<$float>::NEG_INFINITY; LANES];
            let mut zeros = [0 as $bits; LANES];
            let mut special = [0 as $bits; LANES];
            let chunks = block.chunks_exact(LANES);
            let rest = chunks.remainder();
            for c in chunks {
                for j in 0..LANES {
                    let x = c[j];
                    let b = x.to_bits() & $abs_mask;
                    let ok = b.wrapping_sub(1) < $inf_bits - 1;
                    let lo = if ok { x } else { <$float>::INFINITY };
                    let hi = if ok { x } else { <$float>::NEG_INFINITY };
                    lane_min[j] = if lo < lane_min[j] { lo } else { lane_min[j] };
                    lane_max[j] = if hi > lane_max[j] { hi } else { lane_max[j] };
                    zeros[j] += (b == 0) as $bits;
                    special[j] += (b >= $inf_bits) as $bits;
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
            for j in 0..LANES {
                s.min = s.min.min(lane_min[j] as f64);
                s.max = s.max.max(lane_max[j] as f64);
            }
            for &x in rest {
                let a = x.abs();
                if a == 0.0 {
                    s.zeros += 1;
                } else if a < <$float>::INFINITY {
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
                    } else if x == <$float>::INFINITY {
                        s.pos_inf += 1;
                    } else if x == <$float>::NEG_INFINITY {
                        s.neg_inf += 1;
                    }
                }
            }
            s.nonzero = block.len() as u64 - s.zeros - n_special;
            s
        }
    };
}

block_stats_kernel!(stats_f32, f32, u32, 0x7fff_ffffu32, 0x7f80_0000u32);
block_stats_kernel!(
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
    /// Values counted since the last [`SubCounts::drain_into`].
    pub(super) pending: u64,
}

impl SubCounts {
    pub(super) fn new(bins: usize) -> Self {
        SubCounts {
            stride: bins + 1,
            data: vec![0; 4 * (bins + 1)],
            pending: 0,
        }
    }

    /// Adds the four lanes into `counts` (one per bin) and zeroes them, sinks included.
    pub(super) fn drain_into(&mut self, counts: &mut [u64]) {
        let stride = self.stride;
        for j in 0..4 {
            let lane = &mut self.data[j * stride..(j + 1) * stride];
            for (c, s) in counts.iter_mut().zip(lane.iter_mut()) {
                *c += *s as u64;
                *s = 0;
            }
            lane[stride - 1] = 0;
        }
        self.pending = 0;
    }
}

/// Values whose indices are computed in one (vectorizable) pass before they are counted.
pub(super) const CHUNK: usize = 256;

/// Counts `n` values whose bin (or the sink for skipped values) is `idx(i)`: indices are
/// computed a chunk at a time into a small array, then scattered over the four lanes.
#[inline(always)]
fn count_indices<F: Fn(usize) -> u32>(n: usize, idx: F, sub: &mut SubCounts) {
    let sink = (sub.stride - 1) as u32;
    let mut buf = [0u32; CHUNK];
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        for (o, b) in buf[..len].iter_mut().enumerate() {
            *b = idx(start + o).min(sink);
        }
        scatter_into_lanes(&buf[..len], sub);
        start += len;
    }
}

/// Adds one to the count of each index (each at most the sink), round-robin over the lanes.
#[inline(always)]
pub(super) fn scatter_into_lanes(idx: &[u32], sub: &mut SubCounts) {
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

/// How many chunks ahead of the one being binned its data is prefetched.
const PREFETCH_CHUNKS: usize = 2;
/// How far ahead of the chunk being binned its data is prefetched, in values.
const PREFETCH_AHEAD: usize = PREFETCH_CHUNKS * CHUNK;

/// Asks the CPU to start loading the data `PREFETCH_AHEAD` values past `chunk` (the scatter
/// between two fused passes leaves the hardware prefetcher behind). Prefetching never faults,
/// so the address may lie past the end of the data.
#[inline(always)]
pub(super) fn prefetch_ahead(chunk: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = chunk.as_ptr().wrapping_add(PREFETCH_AHEAD);
        for line in 0..CHUNK / 16 {
            // SAFETY: a prefetch is a hint; it reads nothing and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(16 * line) as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = chunk;
}

/// Statistics of a chunk read by the fused float32 pass.
#[derive(Clone, Copy)]
pub(super) struct ChunkStats {
    pub(super) min: f32,
    pub(super) max: f32,
    pub(super) zeros: u32,
    /// NaN and ±Inf values.
    pub(super) special: u32,
}

/// One pass over a chunk of float32 values: their statistics, and the bin index of each under
/// the current window (`x·scale` floored, minus `lo`; skipped values go to the sink). Values
/// outside the window get meaningless (but in-range) indices: the caller sees them in
/// `min`/`max`, grows the window and recomputes the chunk.
#[inline(always)]
fn fused_f32_kernel(
    chunk: &[f32],
    scale: f32,
    lo: i32,
    sink: u32,
    out: &mut [u32; CHUNK],
) -> ChunkStats {
    const LIM: f32 = (1 << 30) as f32;
    let mut lane_min = [f32::INFINITY; LANES];
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    let mut zeros = [0u32; LANES];
    let mut special = [0u32; LANES];
    let n = chunk.len();
    let full = n - n % LANES;
    for (c, o) in chunk[..full]
        .chunks_exact(LANES)
        .zip(out[..full].chunks_exact_mut(LANES))
    {
        for j in 0..LANES {
            let x = c[j];
            let b = x.to_bits() & 0x7fff_ffff;
            let ok = b.wrapping_sub(1) < 0x7f80_0000 - 1;
            let lo_v = if ok { x } else { f32::INFINITY };
            let hi_v = if ok { x } else { f32::NEG_INFINITY };
            lane_min[j] = if lo_v < lane_min[j] {
                lo_v
            } else {
                lane_min[j]
            };
            lane_max[j] = if hi_v > lane_max[j] {
                hi_v
            } else {
                lane_max[j]
            };
            zeros[j] += (b == 0) as u32;
            special[j] += (b >= 0x7f80_0000) as u32;
            let y = if ok { x * scale } else { 0.0 };
            let y = if y > LIM { LIM } else { y };
            let y = if y < -LIM { -LIM } else { y };
            // SAFETY: y is finite and |y| <= 2^30.
            let t: i32 = unsafe { y.to_int_unchecked() };
            let f = t - ((t as f32) > y) as i32;
            let i = if ok { (f - lo) as u32 } else { sink };
            o[j] = if i < sink { i } else { sink };
        }
    }
    let mut r = ChunkStats {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        zeros: 0,
        special: 0,
    };
    for j in 0..LANES {
        r.min = r.min.min(lane_min[j]);
        r.max = r.max.max(lane_max[j]);
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
            let y = (x * scale).clamp(-LIM, LIM);
            out[i] = ((y.floor() as i32 - lo) as u32).min(sink);
        }
    }
    r
}

/// [`fused_f32_kernel`], on AVX2 where the CPU has it.
#[inline(always)]
pub(super) fn fused_f32(
    chunk: &[f32],
    scale: f32,
    lo: i32,
    sink: u32,
    out: &mut [u32; CHUNK],
) -> ChunkStats {
    with_avx2!(fused_f32_kernel(chunk: &[f32], scale: f32, lo: i32, sink: u32, out: &mut [u32; CHUNK]) -> ChunkStats)
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
    fn count_equal(block: &[f32], v: f64) -> u64 {
        let v = v as f32;
        with_avx2!(count_equal_f32(block: &[f32], v: f32) -> u64)
    }
    fn bin_block(block: &[f32], h: &Histogram, sub: &mut SubCounts) {
        with_avx2!(bin_block_f32(block: &[f32], h: &Histogram, sub: &mut SubCounts) -> ())
    }
}

#[inline(always)]
fn bin_block_f32(block: &[f32], h: &Histogram, sub: &mut SubCounts) {
    let sink = h.bins as u32;
    let (k, lo) = (h.k, h.lo);
    if h.f32_window_is_exact() {
        // float32 fast path: x·2^-k is exact (no underflow since 2^-k >= 1, no overflow in
        // the window) and so is its floor.
        let scale = pow2(-k) as f32;
        let lo = lo as i32;
        count_indices(
            block.len(),
            |i| {
                let x = block[i];
                let b = x.to_bits() & 0x7fff_ffff;
                let ok = b.wrapping_sub(1) < 0x7f80_0000 - 1;
                let y = if ok { x * scale } else { 0.0 };
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
        count_indices(
            block.len(),
            |i| {
                let x = block[i] as f64;
                let a = x.abs();
                let ok = a > 0.0 && a < f64::INFINITY;
                let x = select_unpredictable(ok, x, 0.0);
                select_unpredictable(ok, (bin_index(x, inv) - lo) as u32, sink)
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
    fn count_equal(block: &[f64], v: f64) -> u64 {
        with_avx2!(count_equal_f64(block: &[f64], v: f64) -> u64)
    }
    fn bin_block(block: &[f64], h: &Histogram, sub: &mut SubCounts) {
        let sink = h.bins as u32;
        let (inv, lo) = (pow2(-h.k), h.lo);
        count_indices(
            block.len(),
            |i| {
                let x = block[i];
                let a = x.abs();
                let ok = a > 0.0 && a < f64::INFINITY;
                let x = select_unpredictable(ok, x, 0.0);
                select_unpredictable(ok, (bin_index(x, inv) - lo) as u32, sink)
            },
            sub,
        );
    }
}
