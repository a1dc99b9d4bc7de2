"""Histogram: the exactness law, count conservation, agreement with np.histogram, bounded memory,
serialization, input forms and repr (one class under test, one file)."""

from __future__ import annotations

import array
import concurrent.futures
import copy
import math
import multiprocessing
import pickle
import re
import textwrap

import numpy as np
import pytest
import qfcal
from conftest import (
    F64_MAX,
    assert_same_histogram,
    expected_counters,
    float_arrays,
    fnv1a64,
    hist_of,
    make_data,
    run_isolated,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

DTYPES = [np.float32, np.float64]
BINS = st.sampled_from([16, 17, 64, 1000, 4096])


def nonzero_finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v) & (v != 0)]


def combine(draw, nodes: list[qfcal.Histogram]) -> qfcal.Histogram:
    """Merges ``nodes`` through a random binary tree with random operators."""
    nodes = list(nodes)
    while len(nodes) > 1:
        i = draw(st.integers(0, len(nodes) - 1))
        a = nodes.pop(i)
        j = draw(st.integers(0, len(nodes) - 1))
        b = nodes.pop(j)
        op = draw(st.sampled_from(["merge", "add", "iadd", "radd"]))
        if op == "merge":
            a.merge(b)
            out = a
        elif op == "add":
            out = a + b
        elif op == "iadd":
            a += b
            out = a
        else:
            out = b.__radd__(a)
        nodes.append(out)
    return nodes[0]


# --------------------------------------------------------------------------------------------
# The exactness law


@settings(max_examples=150)
@given(st.data(), st.sampled_from(DTYPES), BINS)
def test_any_batching_order_and_merge_tree_gives_the_same_histogram(data, dtype, bins):
    values = data.draw(float_arrays(dtype, max_size=200), label="values")
    reference = hist_of(values, bins)
    points = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=8), label="splits"))
    batches = np.split(values, points)
    order = data.draw(st.permutations(range(len(batches))), label="order")
    # consecutive batches (in the drawn order) go into one histogram, update after update
    leaves: list[qfcal.Histogram] = []
    for i in order:
        if not leaves or data.draw(st.booleans(), label="new leaf"):
            leaves.append(qfcal.Histogram(bins))
        leaves[-1].update(batches[i])
    if data.draw(st.booleans(), label="add empty"):
        leaves.append(qfcal.Histogram(bins))
    assert_same_histogram(combine(data.draw, leaves), reference)


@st.composite
def big_arrays(draw):
    """Large arrays (many 16384-value blocks, up to the multi-threaded path) whose span widens
    from block to block, so that bins are coarsened mid-stream."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.sampled_from([20_000, 70_000, 300_000]))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * np.exp(np.linspace(-8, draw(st.floats(-4, 30)), n))
    if draw(st.booleans()):
        x[rng.random(n) < 0.1] = 0.0
    if draw(st.booleans()):
        x[rng.integers(0, n, 5)] = [np.nan, np.inf, -np.inf, -0.0, np.nan]
    if draw(st.booleans()):
        x = x[::-1]
    return x.astype(dtype)


@settings(max_examples=12)
@given(st.data(), big_arrays(), st.sampled_from([16, 4096, 65536]))
def test_exactness_on_large_arrays(data, values, bins):
    reference = hist_of(values, bins)
    n = len(values)
    points = sorted(data.draw(st.lists(st.integers(0, n), min_size=1, max_size=5)))
    batches = np.split(values, points)
    sequential = qfcal.Histogram(bins)
    for b in reversed(batches):
        sequential.update(b)
    assert_same_histogram(sequential, reference)
    leaves = [hist_of(b, bins) for b in batches]
    assert_same_histogram(combine(data.draw, leaves), reference)
    # a float32 contiguous array is read in place and split over threads; the same values in
    # float64 (exact) take the other path
    if values.dtype == np.float32:
        assert_same_histogram(hist_of(values.astype(np.float64), bins), reference)


def test_histograms_built_in_threads_then_merged():
    rng = np.random.default_rng(5)
    x = (rng.standard_t(2, 400_000) * 3).astype(np.float32)
    x[::97] = 0.0
    chunks = np.array_split(x, 16)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        parts = list(pool.map(lambda c: hist_of(c, 2048), chunks))
    merged = qfcal.Histogram(2048)
    for p in reversed(parts):
        merged.merge(p)
    assert_same_histogram(merged, hist_of(x, 2048))
    # one histogram per thread, each fed many batches concurrently
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:

        def feed(k: int) -> qfcal.Histogram:
            h = qfcal.Histogram(2048)
            for c in chunks[k::4]:
                h.update(c)
            return h

        quarters = list(pool.map(feed, range(4)))
    assert_same_histogram(sum(quarters[1:], quarters[0]), hist_of(x, 2048))


def build_histogram(bins: int, values: np.ndarray, start: qfcal.Histogram | None = None):
    """Runs in a worker process: the histogram travels back (and ``start`` travels in) pickled."""
    h = qfcal.Histogram(bins) if start is None else start
    h.update(values)
    return h


def test_histograms_built_in_other_processes_then_merged():
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.normal(0, 1, 3000), rng.normal(50, 5, 1000), [0.0, np.nan]])
    chunks = np.array_split(rng.permutation(x), 4)
    seed = hist_of(chunks[3], 512)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        futures = [pool.submit(build_histogram, 512, c) for c in chunks[:3]]
        futures.append(pool.submit(build_histogram, 512, chunks[0], seed))
        parts = [f.result() for f in futures]
    assert_same_histogram(parts[0] + parts[1] + parts[2] + hist_of(chunks[3], 512), hist_of(x, 512))
    assert_same_histogram(parts[3], hist_of(np.concatenate([chunks[3], chunks[0]]), 512))


def test_merge_and_add_leave_their_operands_alone():
    a, b = hist_of([1.0, 2.0], 64), hist_of([-5.0, 0.0], 64)
    a_bytes, b_bytes = a.to_bytes(), b.to_bytes()
    c = a + b
    assert c is not a and c is not b
    assert (a.to_bytes(), b.to_bytes()) == (a_bytes, b_bytes)
    assert_same_histogram(c, hist_of([1.0, 2.0, -5.0, 0.0], 64))
    a.merge(b)
    assert b.to_bytes() == b_bytes
    assert_same_histogram(a, c)
    alias = a
    a += b
    assert a is alias
    assert_same_histogram(a, hist_of([1.0, 2.0, -5.0, 0.0, -5.0, 0.0], 64))


def test_adding_a_histogram_to_itself_doubles_it():
    h = hist_of([1.0, 2.0, 0.0, np.nan], 64)
    doubled = hist_of([1.0, 2.0, 0.0, np.nan] * 2, 64)
    assert_same_histogram(h + h, doubled)
    g = h.copy()
    g += g
    assert_same_histogram(g, doubled)


def test_merging_a_histogram_into_itself_doubles_it():
    """BUG: ``h.merge(h)`` raises RuntimeError('Already mutably borrowed') instead of doubling
    every count, although ``h += h`` and ``h + h`` work."""
    h = hist_of([1.0, 2.0, 0.0, np.nan], 64)
    h.merge(h)
    assert_same_histogram(h, hist_of([1.0, 2.0, 0.0, np.nan] * 2, 64))


# --------------------------------------------------------------------------------------------
# Counting


@settings(max_examples=100)
@given(st.sampled_from([np.float16, np.float32, np.float64]), st.data(), BINS)
def test_every_value_is_counted_exactly_once(dtype, data, bins):
    values = data.draw(float_arrays(dtype, max_size=300))
    h = hist_of(values, bins)
    want = expected_counters(values)
    for name, count in want.items():
        assert getattr(h, name) == count, name
    assert h.total == values.size
    assert h.finite == h.nonzero + h.zeros
    assert h.total == h.finite + h.nan + h.pos_inf + h.neg_inf
    assert h.counts.dtype == np.uint64
    assert int(h.counts.sum()) == h.nonzero
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size:
        assert h.min == finite.min() and h.max == finite.max()
    else:
        assert h.min is None and h.max is None
    if h.nonzero:
        assert h.counts[0] > 0 and h.counts[-1] > 0
    else:
        assert len(h.counts) == 0 and len(h.edges) == 0 and h.bin_width is None


def test_specials_are_counted_apart():
    h = hist_of(np.array([0.0, -0.0, 1.0, np.nan, np.inf, -np.inf, -2.5, np.nan], np.float32), 64)
    assert (h.zeros, h.nan, h.pos_inf, h.neg_inf, h.nonzero) == (2, 2, 1, 1, 2)
    assert (h.total, h.finite) == (8, 4)
    assert (h.min, h.max) == (-2.5, 1.0)
    h = hist_of(np.array([-0.0, 0.0]), 64)
    assert (h.zeros, h.nonzero, h.min, h.max, h.bin_width) == (2, 0, 0.0, 0.0, None)
    h = hist_of(np.array([np.nan, np.inf]), 64)
    assert (h.finite, h.total, h.min, h.max) == (0, 2, None, None)


# --------------------------------------------------------------------------------------------
# Agreement with np.histogram on the same grid


@settings(max_examples=150)
@given(st.sampled_from([np.float16, np.float32, np.float64]), st.data(), BINS)
def test_counts_are_np_histogram_on_the_same_edges(dtype, data, bins):
    values = data.draw(float_arrays(dtype, max_size=300))
    h = hist_of(values, bins)
    v = nonzero_finite(values)
    edges, counts, w = h.edges, h.counts, h.bin_width
    if v.size == 0:
        assert len(edges) == 0 and len(counts) == 0
        return
    assert len(edges) == len(counts) + 1
    # edges: consecutive exact multiples of a power-of-two width
    assert math.frexp(w)[0] == 0.5
    grid = edges / w
    assert np.array_equal(grid, np.round(grid))
    assert np.array_equal(np.diff(grid), np.ones(len(counts)))
    assert np.all(np.diff(edges) == w)
    # the first bin holds the smallest value, the last bin the largest: [a, b), half-open
    assert edges[0] <= v.min() < edges[1]
    assert edges[-2] <= v.max() < edges[-1]
    assert np.array_equal(np.histogram(v, bins=edges)[0], counts)
    # the same from first principles: value x is in bin i iff edges[i] <= x < edges[i + 1]
    index = np.searchsorted(edges, v, side="right") - 1
    assert np.array_equal(np.bincount(index, minlength=len(counts)), counts)


def test_values_on_an_edge_go_to_the_bin_above():
    x = np.array([-1.0, -0.5, 0.5, 1.0, 2.5])
    h = hist_of(x, 16)
    w = h.bin_width
    assert w == 0.25
    assert list(h.edges) == [-1.0 + w * i for i in range(len(h.counts) + 1)]
    # every value sits exactly on the left edge of its bin
    for value in x:
        i = int((value - h.edges[0]) / w)
        assert h.edges[i] == value and h.counts[i] == 1


def widened_length(h: qfcal.Histogram) -> int:
    """How many bins ``to_numpy`` returns: the grid widened to reach 0 when there are zeros."""
    if h.nonzero == 0:
        return 1 if h.zeros else 0
    first = int(h.edges[0] / h.bin_width)
    last = first + len(h.counts) - 1
    if h.zeros:
        first, last = min(first, 0), max(last, 0)
    return last - first + 1


@settings(max_examples=150)
@given(st.sampled_from([np.float16, np.float32, np.float64]), st.data(), BINS)
def test_to_numpy_is_np_histogram_of_every_finite_value(dtype, data, bins):
    values = data.draw(float_arrays(dtype, max_size=300))
    h = hist_of(values, bins)
    counts, edges = h.to_numpy()
    assert counts.dtype == np.uint64 and edges.dtype == np.float64
    finite = np.asarray(values, dtype=np.float64).ravel()
    finite = finite[np.isfinite(finite)]
    assert int(counts.sum()) == h.finite == finite.size
    if finite.size == 0:
        assert len(counts) == 0 and len(edges) == 0
        return
    assert len(edges) == len(counts) + 1
    assert edges[0] <= finite.min() and finite.max() < edges[-1]
    assert np.array_equal(np.histogram(finite, bins=edges)[0], counts)
    if h.nonzero:
        # The same grid, or (when reaching 0 needs more than `bins` bins) the grid coarsened
        # exactly by a power of two: as if the zeros had been binned all along.
        w = float(edges[1] - edges[0])
        ratio = w / h.bin_width
        assert ratio >= 1 and ratio == 2.0 ** round(math.log2(ratio))
        assert np.all(np.diff(edges) == w)
        assert np.array_equal(edges / w, np.round(edges / w))
        assert len(counts) <= max(bins, widened_length(h) if ratio == 1 else 0)
        if widened_length(h) <= bins:
            assert ratio == 1
        if h.zeros == 0:
            assert np.array_equal(counts, h.counts) and np.array_equal(edges, h.edges)
    else:
        assert list(counts) == [h.zeros]


def test_to_numpy_puts_the_zeros_back():
    h = hist_of(np.array([0.0, -0.0, 0.5, 1.5, 0.0], np.float32), 16)
    counts, edges = h.to_numpy()
    assert edges[0] == 0.0
    assert counts[0] == 3  # the three zeros share the bin [0, w) ... with nothing else
    assert int(counts.sum()) == 5
    h = hist_of(np.array([-3.0, -2.0, 0.0]), 16)  # zeros to the right of every bin
    counts, edges = h.to_numpy()
    assert np.array_equal(np.histogram([-3.0, -2.0, 0.0], bins=edges)[0], counts)
    assert edges[-2] == 0.0 and counts[-1] == 1


def test_to_numpy_memory_stays_bounded():
    """BUG: with zeros and bins far from 0 relative to the bin width, ``to_numpy`` widens the
    grid down to 0 bin by bin. One nonzero value and one zero ([3.0, 0.0]) ask for 3 * 2**51
    bins: the allocation fails and the interpreter aborts (SIGABRT)."""
    code = textwrap.dedent(
        """
        import numpy as np, qfcal
        h = qfcal.Histogram()
        h.update(np.array([3.0, 0.0], dtype=np.float32))
        counts, edges = h.to_numpy()
        assert int(counts.sum()) == 2, counts
        assert np.array_equal(np.histogram([3.0, 0.0], bins=edges)[0], counts)
        print(len(counts))
        """
    )
    proc = run_isolated(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) <= qfcal.Histogram().bins + 1


# --------------------------------------------------------------------------------------------
# Bounded memory and coverage


def exponent(x: float) -> int:
    """floor(log2 |x|), exactly."""
    return math.frexp(x)[1] - 1


@settings(max_examples=150)
@given(st.sampled_from([np.float16, np.float32, np.float64]), st.data(), BINS)
def test_bins_are_bounded_and_the_span_covers_at_least_half(dtype, data, bins):
    values = data.draw(float_arrays(dtype, max_size=200))
    h = hist_of(values, bins)
    v = nonzero_finite(values)
    assert len(h.counts) <= bins
    if v.size == 0:
        return
    w = h.bin_width
    assert w > 0 and math.frexp(w)[0] == 0.5  # a power of two
    if np.unique(v).size < 2:
        assert len(h.counts) == 1
        return
    if dtype != np.float64:
        # float16/float32 values are never closer than 2**-24 of the largest: the grid always
        # has room to spread them over half the bins
        assert len(h.counts) >= bins // 2
    else:
        # float64 edges must stay exact, so the width never drops below 2**(e - 52) (e the
        # exponent of the largest magnitude): closer values share fewer bins
        floor = 2.0 ** max(exponent(np.abs(v).max()) - 52, -1022)
        assert len(h.counts) >= bins // 2 or w == floor


@pytest.mark.parametrize("dtype", DTYPES)
def test_memory_stays_bounded_as_the_span_keeps_growing(dtype):
    h = qfcal.Histogram(64)
    rng = np.random.default_rng(2)
    for e in range(-30, 30, 3):
        h.update((rng.standard_normal(1000) * 2.0**e).astype(dtype))
        assert len(h.counts) <= 64 and len(h.edges) == len(h.counts) + 1
        assert len(h.to_bytes()) <= 96 + 8 * 64
    assert len(h.counts) >= 32


@pytest.mark.parametrize("bins", [16, 1 << 20])
def test_extreme_bin_counts(bins):
    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    h = hist_of(x, bins)
    assert h.bins == bins
    assert bins // 2 <= len(h.counts) <= bins
    assert int(h.counts.sum()) == 100_000


def test_default_bins():
    assert qfcal.DEFAULT_BINS == 4096
    assert qfcal.Histogram().bins == qfcal.DEFAULT_BINS
    assert qfcal.Histogram(bins=100).bins == 100


def test_the_top_of_float64_is_counted_and_refused_by_search():
    """A value within a bin of the largest float64 is counted exactly, its bin's upper edge is
    2**1024 = inf (documented), and search() refuses it with a ValueError naming the magnitude
    (float32 scales cannot represent such ranges) instead of panicking."""
    h = hist_of(np.array([F64_MAX]), 16)
    assert h.nonzero == 1 and h.max == F64_MAX
    assert np.isfinite(h.edges[0]) and h.edges[-1] == np.inf
    for m in qfcal.methods():
        with pytest.raises(ValueError, match="1.79769"):
            qfcal.search(h, method=m)


# --------------------------------------------------------------------------------------------
# Serialization and copies


@settings(max_examples=80)
@given(st.sampled_from(DTYPES), st.data(), BINS)
def test_pickle_and_bytes_round_trip(dtype, data, bins):
    h = hist_of(data.draw(float_arrays(dtype, max_size=100)), bins)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert_same_histogram(pickle.loads(pickle.dumps(h, protocol=protocol)), h)
    b = h.to_bytes()
    assert isinstance(b, bytes)
    back = qfcal.Histogram.from_bytes(b)
    assert_same_histogram(back, h)
    assert back.to_bytes() == b
    # a round-tripped histogram keeps working like the original
    more = np.array([0.5, -7.0, 0.0, np.inf])
    back.update(more)
    h2 = h.copy()
    h2.update(more)
    assert_same_histogram(back, h2)


def test_bytes_layout():
    h = hist_of(np.array([1.0, 2.0, -3.5, 0.0, np.nan]), 128)
    b = h.to_bytes()
    assert b[:8] == b"QFCALHST"
    assert int.from_bytes(b[8:12], "little") == 2  # format version
    assert int.from_bytes(b[12:16], "little") == 128  # bins
    # the counts of values equal to the smallest and largest nonzero value
    assert (int.from_bytes(b[84:92], "little"), int.from_bytes(b[92:100], "little")) == (1, 1)
    assert int.from_bytes(b[-8:], "little") == fnv1a64(b[:-8])


@pytest.mark.parametrize("how", ["copy", "copy.copy", "copy.deepcopy"])
def test_copies_are_independent(how, sample_histogram):
    h = sample_histogram
    before = h.to_bytes()
    c = {
        "copy": h.copy,
        "copy.copy": lambda: copy.copy(h),
        "copy.deepcopy": lambda: copy.deepcopy(h),
    }[how]()
    assert c is not h
    assert_same_histogram(c, h)
    c.update(np.array([1e6, -1e6, 0.0], dtype=np.float32))
    assert h.to_bytes() == before
    assert c != h and c.total == h.total + 3
    h.update(np.array([3.0]))
    assert c.total == h.total + 2


def test_equality_is_by_value():
    a, b = hist_of([1.0, 2.0], 64), hist_of([2.0, 1.0], 64)
    assert a == b and not (a != b)
    assert hist_of([1.0, 2.0], 64) != hist_of([1.0, 2.0], 65)
    assert hist_of([1.0, 2.0], 64) != hist_of([1.0, 2.5], 64)
    assert hist_of([1.0, 0.0], 64) != hist_of([1.0, -1.0], 64)
    assert hist_of([np.nan], 64) != hist_of([np.inf], 64)
    assert qfcal.Histogram(64) == qfcal.Histogram(64)
    assert (a == 3) is False and (a != "x") is True


# --------------------------------------------------------------------------------------------
# Input forms


@settings(max_examples=80)
@given(hnp.arrays(np.float16, st.integers(0, 300)))
def test_float16_is_read_as_its_float32_conversion(x):
    assert_same_histogram(hist_of(x, 64), hist_of(x.astype(np.float32), 64))


@settings(max_examples=60)
@given(st.sampled_from([np.float16, np.float32, np.float64]), st.data())
def test_layouts_and_byte_orders_give_the_same_histogram(dtype, data):
    x = data.draw(
        hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=3, max_side=12)),
        label="x",
    )
    want = hist_of(np.ascontiguousarray(x).ravel(), 64)
    forms = {
        "C": x,
        "F": np.asfortranarray(x),
        "T": x.T,
        "reversed": x[::-1],
        "swapped": x.astype(x.dtype.newbyteorder()),
        "swapped-strided": x.astype(x.dtype.newbyteorder())[::-1],
        "list": x.tolist() if dtype == np.float64 else x.astype(np.float64).tolist(),
    }
    ro = x.copy()
    ro.flags.writeable = False
    forms["readonly"] = ro
    for name, form in forms.items():
        got = hist_of(form, 64)
        assert got == want, name
        assert_same_histogram(got, want)


@pytest.mark.parametrize("dtype", ["<f2", ">f2", "<f4", ">f4", "<f8", ">f8"])
def test_large_strided_and_byte_swapped_arrays(dtype):
    rng = np.random.default_rng(3)
    base = (rng.standard_normal((700, 1000)) * np.logspace(-3, 3, 1000)).astype(np.float32)
    base[::7, ::3] = 0.0
    native = base.astype(np.dtype(dtype).newbyteorder("="))
    want = hist_of(np.ascontiguousarray(native), 4096)
    x = base.astype(dtype)
    for form in (x, x.T, x[:, ::3], x[::-1, 5:], np.asfortranarray(x)):
        expect = hist_of(np.ascontiguousarray(form).astype(native.dtype), 4096)
        assert_same_histogram(hist_of(form, 4096), expect)
    assert_same_histogram(hist_of(x, 4096), want)


def test_scalars_empty_arrays_lists_and_buffers():
    ref = hist_of(np.array([2.5]), 64)
    for form in (2.5, np.float64(2.5), np.float32(2.5), np.array(2.5), np.array(2.5, np.float32)):
        assert_same_histogram(hist_of(form, 64), ref)
    assert_same_histogram(
        hist_of([[1.5, -2.0], [0.0, 3.0]], 64), hist_of([1.5, -2.0, 0.0, 3.0], 64)
    )
    assert_same_histogram(
        hist_of(array.array("f", [1.5, -2.0]), 64), hist_of(np.array([1.5, -2.0], np.float32), 64)
    )
    empty = qfcal.Histogram(64)
    for form in ([], np.array([]), np.zeros((3, 0), np.float32), np.zeros(0, np.float16)):
        assert_same_histogram(hist_of(form, 64), empty)
    h = hist_of([1.0, -1.0], 64)
    before = h.to_bytes()
    h.update(np.array([], dtype=np.float32))
    assert h.to_bytes() == before


def test_torch_tensors_are_read_like_numpy():
    torch = pytest.importorskip("torch")
    t = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    t[::13] = 0.0
    assert_same_histogram(hist_of(t, 512), hist_of(t.numpy(), 512))
    t64 = t.double()[::2]
    assert_same_histogram(hist_of(t64, 512), hist_of(t64.numpy(), 512))


# --------------------------------------------------------------------------------------------
# repr


def repr_fields(text: str) -> dict[str, str]:
    m = re.fullmatch(r"Histogram\((.*)\)", text)
    assert m, text
    return dict(part.split("=", 1) for part in m.group(1).split(", "))


def test_repr_is_short_and_informative():
    x = make_data("heavy", np.random.default_rng(0), 200_000)
    x[:10] = [0.0, 0.0, np.nan, np.inf, -np.inf, 0.0, 0.0, 0.0, 0.0, 0.0]
    h = hist_of(x, 1 << 20)
    text = repr(h)
    assert len(text) < 200 and "\n" not in text and "[" not in text
    f = repr_fields(text)
    assert int(f["bins"]) == 1 << 20
    assert int(f["total"]) == 200_000
    assert int(f["zeros"]) == 7
    assert (int(f["nan"]), int(f["pos_inf"]), int(f["neg_inf"])) == (1, 1, 1)
    assert float(f["min"]) == pytest.approx(h.min, rel=1e-5)
    assert float(f["max"]) == pytest.approx(h.max, rel=1e-5)
    assert f["bin_width"] == f"2**{exponent(h.bin_width)}"
    empty = repr(qfcal.Histogram(16))
    f = repr_fields(empty)
    assert f["bins"] == "16" and f["total"] == "0"
    assert f["min"] == f["max"] == f["bin_width"] == "None"
