//! Splitting one update across threads: each part is counted into a histogram of its own, on a
//! thread of its own, and the parts are merged back (exactly, as every merge is, so the result
//! does not depend on the split). The core's slices and the bindings' strided array views both
//! go through here.

use super::Histogram;

/// The least each thread gets of an update split across threads: below this, starting a
/// thread costs more than it saves.
pub const MIN_PART: usize = 1 << 17;

/// How many parts to split `len` values into for `threads` threads (0: all available cores):
/// one part (whatever the thread count, and without asking the system for it) when there is
/// not enough for two.
pub fn parts_for(len: usize, threads: usize) -> usize {
    if len < 2 * MIN_PART {
        return 1;
    }
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads
    };
    threads.min(len / MIN_PART).max(1)
}

/// `f` of each of `parts`, each on a scoped thread of its own, in the parts' order. A panic in
/// a worker is raised again here, with its own message.
pub(crate) fn map_on_threads<P: Send, R: Send>(
    parts: impl IntoIterator<Item = P>,
    f: impl Fn(P) -> R + Sync,
) -> Vec<R> {
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || f(part)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

impl Histogram {
    /// Counts each of `parts` with `count`, each on its own thread into a histogram of its own,
    /// and merges them into this one. The workers start from this histogram's window, so that
    /// data like what came before never grows theirs; merging them back is exact whatever
    /// window they end with, since every window lies on the same power-of-two grid. A panic in
    /// a worker is raised again here, with its own message.
    pub fn update_in_parallel<P: Send>(
        &mut self,
        parts: impl IntoIterator<Item = P>,
        count: impl Fn(&mut Histogram, P) + Sync,
    ) {
        let bins = self.bins;
        let seed = (self.nonzero > 0).then(|| (self.min_nz(), self.max_nz()));
        let partials = map_on_threads(parts, |part| {
            let mut mine = Histogram::new(bins).expect("bins already validated");
            if let Some((mn, mx)) = seed {
                mine.cover(mn, mx);
            }
            count(&mut mine, part);
            mine
        });
        for p in &partials {
            self.merge(p).expect("same bins");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_updates_stay_on_one_thread() {
        assert_eq!(parts_for(2 * MIN_PART - 1, 8), 1);
        assert_eq!(parts_for(2 * MIN_PART, 8), 2);
        assert_eq!(parts_for(100 * MIN_PART, 8), 8);
        assert_eq!(parts_for(100 * MIN_PART, 1), 1);
    }

    #[test]
    fn any_split_gives_the_same_histogram() {
        let v: Vec<f64> = (0..10_000)
            .map(|i| ((i * 7919) % 1013) as f64 - 500.5)
            .collect();
        let mut serial = Histogram::new(64).unwrap();
        serial.update(&v, 1);
        for n_parts in [1, 2, 3, 7] {
            let mut h = Histogram::new(64).unwrap();
            h.update(&v[..100], 1);
            h.update_in_parallel(v[100..].chunks(9_900_usize.div_ceil(n_parts)), |h, c| {
                h.update(c, 1)
            });
            assert_eq!(h, serial, "{n_parts} parts");
        }
    }
}
