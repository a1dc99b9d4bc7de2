//! How values reach the counts: block by block (statistics first, the window grown when they
//! leave it, then binning into the sub-counts), and the [`Feeder`] that gathers values pushed one
//! at a time or a slice at a time into such blocks.

use super::grid::{bin_index, pow2};
use super::kernels::{fused_f32, prefetch_ahead, scatter_into_lanes, Sample, SubCounts, CHUNK};
use super::{Histogram, BLOCK};

impl Histogram {
    /// Adds the sub-counts into the counts.
    pub(super) fn flush(&mut self, sub: &mut SubCounts) {
        if sub.pending == 0 {
            return;
        }
        sub.drain_into(&mut self.counts);
    }

    /// Adds one block (at most `BLOCK` values) through the feeder's sub-counts.
    pub(super) fn feed_block<T: Sample>(&mut self, block: &[T], sub: &mut Option<SubCounts>) {
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
        self.count_extremes(block, s.min, s.max);
        // A block whose nonzero values all lie in one bin (a constant or near-constant block,
        // such as a broadcast value or a saturated activation) is counted without binning.
        let inv = pow2(-self.k);
        let g = bin_index(s.min, inv);
        if g == bin_index(s.max, inv) {
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

    /// Counts the values of `block` equal to the smallest or largest nonzero value seen, when
    /// the block's own least (`min`) or greatest (`max`) nonzero value is that one.
    fn count_extremes<T: Sample>(&mut self, block: &[T], min: f64, max: f64) {
        if min == self.min_nz() {
            self.at_min += T::count_equal(block, min);
        }
        if max == self.max_nz() {
            self.at_max += T::count_equal(block, max);
        }
    }

    /// Whether the float32 fast path (exact `x·2^-k` and floor in float32) applies to the window.
    fn f32_fast(&self) -> bool {
        self.has_window() && self.f32_window_is_exact()
    }

    /// Adds a block of float32 values: once the window is set, statistics and bin indices come
    /// from one fused pass per chunk (the data is read once), and a chunk that widens the window
    /// is recomputed after the window grows.
    pub(super) fn feed_block_f32(&mut self, block: &[f32], sub: &mut Option<SubCounts>) {
        if !self.f32_fast() {
            self.feed_block(block, sub);
            return;
        }
        let sink = self.bins as u32;
        let mut indices = [0u32; CHUNK];
        for (ci, chunk) in block.chunks(CHUNK).enumerate() {
            if !self.f32_fast() {
                self.feed_block(chunk, sub);
                continue;
            }
            let (scale, lo) = (pow2(-self.k) as f32, self.lo as i32);
            prefetch_ahead(chunk);
            let st = fused_f32(chunk, scale, lo, sink, &mut indices);
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
                scatter_into_lanes(&indices[..chunk.len()], sub);
            }
            self.count_extremes(chunk, st.min as f64, st.max as f64);
            sub.pending += chunk.len() as u64;
            self.nonzero += nonzero;
        }
    }

    /// Adds values on this thread.
    pub(super) fn update_serial<T: Sample>(&mut self, values: &[T]) {
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
