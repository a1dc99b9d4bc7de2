"""Concurrency: many Python threads updating their own histograms and one shared histogram at
once, with the GIL released, stay exact (the shared one equals a serial run) and never fail;
readers, merges and searches run alongside; crossed merges cannot deadlock."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import qfcal
from conftest import assert_same_histogram, hist_of

THREADS = 8


def batches(seed: int, count: int = 48) -> list[np.ndarray]:
    """Batches of every kind update() takes: float16/32/64, contiguous, strided, byte-swapped,
    broadcast; spans that widen from batch to batch (so windows grow mid-run); specials."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(1, 120_000))
        x = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3 + i / 8)
        x[rng.random(n) < 0.2] = 0.0
        x[rng.integers(0, n, 3)] = [np.nan, np.inf, -np.inf]
        kind = i % 6
        if kind == 0:
            out.append(x.astype(np.float32))
        elif kind == 1:
            out.append(x.astype(np.float64)[::-2])
        elif kind == 2:
            with np.errstate(over="ignore"):  # beyond float16's range: inf, counted as such
                out.append(x.astype(np.float16))
        elif kind == 3:
            out.append(x.astype(">f4"))
        elif kind == 4:
            out.append(np.broadcast_to(x[:50].astype(np.float32), (n // 50 + 1, min(n, 50))))
        else:
            out.append(np.repeat(x.astype(np.float32), 3).reshape(-1, 3).T)
    return out


def run_threads(targets: list[Callable[[], None]], timeout: float = 120.0) -> None:
    """Runs every target on its own thread, started together; re-raises the first error."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def wrap(f: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                start.wait()
                f()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        return run

    threads = [threading.Thread(target=wrap(f), daemon=True) for f in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads still running: a deadlock?"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("bins", [64, 4096])
def test_threads_updating_their_own_and_one_shared_histogram_stay_exact(bins):
    work = [batches(seed) for seed in range(THREADS)]
    serial = qfcal.Histogram(bins)
    for w in work:
        for b in w:
            serial.update(b)
    shared = qfcal.Histogram(bins)
    own = [qfcal.Histogram(bins) for _ in range(THREADS)]

    def worker(k: int) -> Callable[[], None]:
        def run() -> None:
            for b in work[k]:
                own[k].update(b)
                shared.update(b)

        return run

    run_threads([worker(k) for k in range(THREADS)])
    assert_same_histogram(shared, serial)
    for k in range(THREADS):
        assert_same_histogram(own[k], hist_of_all(work[k], bins))
    assert_same_histogram(sum(own[1:], own[0]), serial)


def hist_of_all(arrays: list[np.ndarray], bins: int) -> qfcal.Histogram:
    h = qfcal.Histogram(bins)
    for a in arrays:
        h.update(a)
    return h


def test_many_threads_on_one_histogram_with_large_arrays():
    """Large arrays take the multi-core paths inside each update; one thread finds the lock free
    and counts in place, the others count on their own and merge: all exact."""
    rng = np.random.default_rng(3)
    arrays = [
        (rng.standard_t(2, 600_000) * (k + 1)).astype(np.float32 if k % 2 else np.float64)
        for k in range(THREADS)
    ]
    arrays[1] = arrays[1][::-1]  # strided, split across threads by the strided path
    shared = qfcal.Histogram(2048)
    run_threads([lambda a=a: shared.update(a) for a in arrays])
    assert_same_histogram(shared, hist_of_all(arrays, 2048))


def test_update_releases_the_gil():
    """While one thread counts a large array, another keeps running Python code."""
    x = np.broadcast_to(np.float32(2.5), (2**28,))  # a strided view: about a second of work
    h = qfcal.Histogram()
    ticks = [0]
    done = threading.Event()
    seen: list[int] = []

    def count() -> None:
        before = ticks[0]
        h.update(x)
        seen.append(ticks[0] - before)
        done.set()

    t = threading.Thread(target=count)
    t.start()
    while not done.is_set():
        ticks[0] += 1
    t.join()
    assert h.total == x.size
    assert seen[0] > 1000, f"only {seen[0]} Python steps ran during the update"


def test_readers_merges_and_searches_run_alongside_updates():
    bins = 1024
    work = [batches(seed, count=24) for seed in range(4)]
    shared = qfcal.Histogram(bins)
    sink = qfcal.Histogram(bins)
    stop = threading.Event()

    def updater(k: int) -> Callable[[], None]:
        def run() -> None:
            for b in work[k]:
                shared.update(b)

        return run

    def reader() -> None:
        while not stop.is_set():
            # each call sees one consistent state; a copy holds one still
            s = shared.copy()
            c, e = s.counts, s.edges
            assert len(e) == (len(c) + 1 if len(c) else 0)
            assert int(c.sum()) == s.nonzero
            assert s.total == s.finite + s.nan + s.pos_inf + s.neg_inf
            assert pickle.loads(pickle.dumps(s)) == s
            assert shared.total >= 0 and shared.counts.dtype == np.uint64
            repr(shared)
            shared.to_numpy()
            if s.finite:
                r = qfcal.search(shared, method="minmax")
                assert r.min <= 0 <= r.max
            assert (shared == shared) and not (shared != shared)

    def merger() -> None:
        while not stop.is_set():
            sink.merge(shared)
            _ = shared + sink

    updaters = [updater(k) for k in range(4)]
    remaining = [len(updaters)]
    lock = threading.Lock()

    def counted(f: Callable[[], None]) -> Callable[[], None]:
        """Runs an updater; the last one to finish stops the readers and the merger."""

        def run() -> None:
            try:
                f()
            finally:
                with lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        stop.set()

        return run

    run_threads([counted(u) for u in updaters] + [reader, reader, merger])
    assert_same_histogram(shared, hist_of_all([b for w in work for b in w], bins))
    assert sink.total >= 0


def test_crossed_merges_and_comparisons_do_not_deadlock():
    a = hist_of(np.random.default_rng(0).standard_normal(50_000), 256)
    b = hist_of(np.random.default_rng(1).standard_normal(50_000) * 3, 256)
    rounds = 200

    def ab() -> None:
        for _ in range(rounds):
            a.merge(b)
            _ = a == b

    def ba() -> None:
        for _ in range(rounds):
            b.merge(a)
            _ = b != a

    def self_merge() -> None:
        for _ in range(rounds // 4):
            c = a.copy()
            c.merge(c)
            c += c
            _ = c + c

    def update_both() -> None:
        x = np.random.default_rng(2).standard_normal(300_000).astype(np.float32)
        for _ in range(5):
            a.update(x)
            b.update(x[::-1])

    run_threads([ab, ba, self_merge, update_both, ab, ba], timeout=300)
    assert a.total > 0 and b.total > 0
