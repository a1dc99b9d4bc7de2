"""Shared helpers for the qfcal test suite: data generators, hypothesis strategies, an exact
reference implementation of the cost model, and the byte-format checksum."""

from __future__ import annotations

import math
import os
import resource
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import qfcal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# TensorFlow and triton (which torch.optim pulls in through torch._dynamo) each carry their own
# LLVM; loaded into one process, the second aborts it ("Option ... registered more than once").
# The suite runs both frameworks in one pytest process and trains torch models on the CPU only,
# which never needs triton: make `import triton` fail, as where it is not installed.
sys.modules.setdefault("triton", None)  # type: ignore[arg-type]

settings.register_profile(
    "qfcal",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("qfcal")

F64_MAX = float(np.finfo(np.float64).max)
# float64 magnitudes kept below this where a test is not about overflow at the top of the range.
F64_SAFE = 2.0**1000

KINDS = ["normal", "relu", "heavy", "bimodal", "near_constant", "uniform", "positive"]


# --------------------------------------------------------------------------------------------
# Comparing histograms


def hist_of(values, bins: int = qfcal.DEFAULT_BINS) -> qfcal.Histogram:
    h = qfcal.Histogram(bins)
    h.update(values)
    return h


def assert_same_histogram(a: qfcal.Histogram, b: qfcal.Histogram) -> None:
    """Bit-identical: every observable agrees exactly."""
    assert a == b
    assert not (a != b)
    assert a.bins == b.bins
    assert np.array_equal(a.counts, b.counts)
    assert a.counts.dtype == b.counts.dtype == np.uint64
    ea, eb = a.edges, b.edges
    assert ea.dtype == eb.dtype == np.float64
    assert ea.tobytes() == eb.tobytes()
    assert a.bin_width == b.bin_width
    assert a.min == b.min
    assert a.max == b.max
    for name in ("total", "finite", "nonzero", "zeros", "nan", "pos_inf", "neg_inf"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.to_bytes() == b.to_bytes()


def expected_counters(values: np.ndarray) -> dict[str, int]:
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v)
    return {
        "total": int(v.size),
        "finite": int(finite.sum()),
        "nonzero": int((finite & (v != 0)).sum()),
        "zeros": int((v == 0).sum()),
        "nan": int(np.isnan(v).sum()),
        "pos_inf": int((v == np.inf).sum()),
        "neg_inf": int((v == -np.inf).sum()),
    }


# --------------------------------------------------------------------------------------------
# Data


def make_data(kind: str, rng: np.random.Generator, n: int, dtype=np.float32) -> np.ndarray:
    """Random data of a few shapes seen in activations and weights."""
    loc = rng.normal(0.0, 2.0)
    scale = 10.0 ** rng.uniform(-3, 3)
    if kind == "normal":
        x = rng.normal(loc, 1.0, n) * scale
    elif kind == "relu":
        x = np.maximum(rng.normal(loc * 0.3, 1.0, n), 0.0) * scale
    elif kind == "heavy":
        x = rng.standard_t(1.5, n) * scale
    elif kind == "bimodal":
        side = rng.random(n) < rng.uniform(0.1, 0.9)
        x = np.where(side, rng.normal(-3.0, 0.5, n), rng.normal(4.0, 1.0, n)) * scale
    elif kind == "near_constant":
        x = (loc + 1e-4 * rng.standard_normal(n)) * scale
    elif kind == "uniform":
        x = rng.uniform(-1.0, 3.0, n) * scale
    elif kind == "positive":
        x = rng.lognormal(0.0, 1.0, n) * scale
    else:  # pragma: no cover - programming error
        raise AssertionError(kind)
    return x.astype(dtype)


@st.composite
def data_histograms(draw, bins=(64, 256, 2048)):
    """A Histogram of random data of a random shape (plus the raw data)."""
    kind = draw(st.sampled_from(KINDS))
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, 3000))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    values = make_data(kind, np.random.default_rng(seed), n, dtype)
    h = qfcal.Histogram(draw(st.sampled_from(bins)))
    h.update(values)
    return h, values


def float_elements(dtype, *, allow_nan=True, allow_infinity=True, max_abs=None):
    """Any float of the dtype: zeros, negatives, subnormals, wide ranges, specials mixed in."""
    width = {np.float16: 16, np.float32: 32, np.float64: 64}[dtype]
    if max_abs is None and width == 64:
        max_abs = F64_SAFE
    if max_abs is None:
        general = st.floats(width=width, allow_nan=allow_nan, allow_infinity=allow_infinity)
    else:  # bounded: the specials come from the list below
        general = st.floats(-max_abs, max_abs, width=width)
    moderate = st.floats(-1e3, 1e3, width=width)
    specials = [0.0, -0.0]
    if allow_nan:
        specials.append(math.nan)
    if allow_infinity:
        specials += [math.inf, -math.inf]
    return st.one_of(general, moderate, st.sampled_from(specials))


def float_arrays(dtype, *, max_size=300, min_size=0, **kw):
    return hnp.arrays(
        dtype,
        st.integers(min_size, max_size),
        elements=float_elements(dtype, **kw),
    )


# --------------------------------------------------------------------------------------------
# Reference cost model
#
# A histogram is a piecewise-uniform density: bin [a, b) holds c values spread uniformly, and
# ``zeros`` exact zeros cost nothing but count in the average. An encoding (scale s, integer
# window L..H with L = qmin - zero_point, H = qmax - zero_point) maps x to
# s * clip(round(x / s), L, H). Values inside [L*s, H*s] give the rounding loss, values outside
# the clipping loss. On each interval where the quantized value is constant the integral of
# (x - q)^2 under a uniform density is exact: mass * ((mid - q)^2 + len^2 / 12).


def _piece(mass, u, v, q):
    mid = 0.5 * (u + v) - q
    length = v - u
    return mass * (mid * mid + length * length / 12.0)


def _atoms_loss(atoms, scale, lo, hi):
    """(rounding, clipping) sums of point masses ``[(x, count), ...]`` for one encoding."""
    rounding = clipping = 0.0
    for x, m in atoms:
        if x < lo * scale or x > hi * scale:
            clipping += m * (x - np.clip(x, lo * scale, hi * scale)) ** 2
        else:
            rounding += m * (x - np.clip(np.round(x / scale), lo, hi) * scale) ** 2
    return rounding, clipping


def reference_loss(counts, edges, zeros, scale, lo, hi, atoms=()):
    """(rounding, clipping), each averaged over all values, for one encoding.

    Works for any number of levels: the real line is cut at every bin edge and every decision
    boundary that falls inside the data, and each elementary piece is integrated exactly.
    `atoms` are point masses ``(value, count)`` (a histogram's values equal to its extremes).
    """
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    total = counts.sum() + zeros + sum(m for _, m in atoms)
    keep = counts > 0
    ar, ac = _atoms_loss(atoms, scale, lo, hi)
    if not keep.any():
        return (ar / total, ac / total) if total else (0.0, 0.0)
    a_all, b_all = edges[:-1], edges[1:]
    a, b, c = a_all[keep], b_all[keep], counts[keep]
    dens = c / (b - a)
    t_lo, t_hi = lo * scale, hi * scale
    # Decision boundaries: t_lo, the midpoints between levels, t_hi.
    mids = (np.arange(lo, hi, dtype=np.float64) + 0.5) * scale
    bounds = np.concatenate([[t_lo], mids, [t_hi]])
    x0, x1 = a.min(), b.max()
    inside = bounds[(bounds > x0) & (bounds < x1)]
    cuts = np.unique(np.concatenate([a, b, inside]))
    # Elementary pieces [u, v): each lies in one bin and one decision interval, both found
    # from its left end (a midpoint could round onto the next cut when a bin is 1 ulp wide).
    u, v = cuts[:-1], cuts[1:]
    k = np.searchsorted(a, u, side="right") - 1
    in_bin = (k >= 0) & (u < b[np.clip(k, 0, None)])
    u, v, k = u[in_bin], v[in_bin], k[in_bin]
    j = np.searchsorted(bounds, u, side="right")  # 0: below t_lo, len(bounds): above t_hi
    level = np.clip(lo + j - 1, lo, hi).astype(np.float64)
    q = level * scale
    err = _piece(dens[k] * (v - u), u, v, q)
    clipped = (j == 0) | (j == len(bounds))
    return (
        float((err[~clipped].sum() + ar) / total),
        float((err[clipped].sum() + ac) / total),
    )


def reference_loss_grid(counts, edges, zeros, scales, lows, steps, atoms=()):
    """Vectorized reference over many encodings of a small histogram (plus point masses
    `atoms`, ``(value, count)``).

    ``scales``: (S,), ``lows``: (Z,) values of L; every window has ``steps`` = H - L steps.
    Returns (rounding, clipping), each of shape (S, Z).
    """
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    total = counts.sum() + zeros + sum(m for _, m in atoms)
    keep = counts > 0
    a, b, c = edges[:-1][keep], edges[1:][keep], counts[keep]
    dens = c / (b - a)
    s = np.asarray(scales, dtype=np.float64)[:, None, None]
    low = np.asarray(lows, dtype=np.float64)[None, :, None]
    # Decision boundaries B_0 = L s, B_i = (L + i - 1/2) s for i = 1..steps, B_{steps+1} = H s.
    i = np.arange(steps + 2, dtype=np.float64)[None, None, :]
    offsets = np.where(i == 0, 0.0, np.where(i == steps + 1, steps, i - 0.5))
    bounds = (low + offsets) * s
    shape = bounds.shape[:2] + (1,)
    inf = np.full(shape, np.inf)
    # Interval j (j = 0..steps+2) is [B_{j-1}, B_j) with B_{-1} = -inf, B_{steps+2} = inf:
    # j = 0 is clipped to L s, j = steps+2 to H s, and j in between rounds to level L + j - 1.
    lower = np.concatenate([-inf, bounds], axis=-1)
    upper = np.concatenate([bounds, inf], axis=-1)
    j = np.arange(steps + 3, dtype=np.float64)[None, None, :]
    level = np.clip(low + j - 1, low, low + steps)
    q = level * s
    rounding = np.zeros(np.broadcast_shapes(s.shape, low.shape)[:2])
    clipping = np.zeros_like(rounding)
    is_clip = (j == 0) | (j == steps + 2)
    for ai, bi, di in zip(a, b, dens, strict=True):
        u = np.clip(lower, ai, bi)
        v = np.clip(upper, ai, bi)
        err = _piece(di * (v - u), u, v, q)
        rounding += np.where(is_clip, 0.0, err).sum(axis=-1)
        clipping += np.where(is_clip, err, 0.0).sum(axis=-1)
    s2, low2 = s[..., 0], low[..., 0]
    for x, m in atoms:
        t_lo, t_hi = low2 * s2, (low2 + steps) * s2
        outside = (x < t_lo) | (x > t_hi)
        q = np.clip(np.round(x / s2), low2, low2 + steps) * s2
        err = m * (x - q) ** 2
        rounding += np.where(outside, 0.0, err)
        clipping += np.where(outside, err, 0.0)
    return rounding / total, clipping / total


def reference_mean_square(counts, edges, zeros, atoms=()):
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    total = counts.sum() + zeros + sum(m for _, m in atoms)
    power = _piece(counts, edges[:-1], edges[1:], 0.0).sum() + sum(m * x * x for x, m in atoms)
    return float(power / total)


# How far past half a step a window may reach beyond the data, in steps, for the encoding a
# search returns (spec.rs: FIT_TOLERANCE_STORED; the float32 rounding of the scale).
FIT_TOLERANCE_STORED = 1e-3


def fitting_windows(scales, lows, steps, lo, hi, symmetric, tolerance=0.0):
    """Mask (S, Z) of the windows that reach at most half a step (plus `tolerance` steps)
    beyond the data ``[lo, hi]`` widened to include zero; on a symmetric grid, whose smaller
    side reaches at most half a step beyond ``max |x|``. Only those are searched."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = np.asarray(scales, dtype=np.float64)[:, None]
    low = np.asarray(lows, dtype=np.float64)[None, :]
    slack = (0.5 + tolerance) * s
    if symmetric:
        reach = np.minimum(-low, low + steps)
        return np.broadcast_to(
            reach * s <= max(-lo, hi) + slack, np.broadcast_shapes(s.shape, low.shape)
        )
    return (low * s >= lo - slack) & ((low + steps) * s <= hi + slack)


def search_density(hist, values=None):
    """(counts, edges, zeros, atoms): the density a search reads, built independently of the
    core. For a ``(counts, edges)`` pair, that pair; for a Histogram, its occupied bins cut to end
    at the exact smallest and largest nonzero value of `values` (the data it holds), the values
    equal to those as point masses there; checks the histogram's own counts of them."""
    if not isinstance(hist, qfcal.Histogram):
        counts, edges = (np.asarray(x, dtype=np.float64) for x in hist)
        return counts, edges, 0, []
    counts, edges, zeros = hist.counts.astype(np.float64), hist.edges.copy(), hist.zeros
    if len(counts) == 0:
        assert hist.at_extremes == (0, 0)
        return counts, edges, zeros, []
    if values is None:
        raise ValueError("the exact density of a Histogram needs the values it holds")
    v = np.asarray(values).astype(np.float64).ravel()
    v = v[np.isfinite(v) & (v != 0)]
    mn, mx = float(v.min()), float(v.max())
    at_min, at_max = int((v == mn).sum()), int((v == mx).sum())
    assert hist.at_extremes == (at_min, at_max)
    if mn == mx:
        return np.zeros(0), np.zeros(0), zeros, [(mn, float(at_min))]
    edges[0], edges[-1] = mn, mx
    counts[0] -= at_min
    counts[-1] -= at_max
    if edges[-2] == mx:
        counts, edges = counts[:-1], edges[:-1]
    return counts, edges, zeros, [(mn, float(at_min)), (mx, float(at_max))]


def grid_range(bits=8, signed=True, narrow_range=False, qmin=None, qmax=None):
    """(qmin, qmax) as documented: explicit values override bits/signed/narrow_range."""
    levels = 1 << bits
    lo, hi = (-(levels // 2), levels // 2 - 1) if signed else (0, levels - 1)
    if narrow_range:
        lo += 1
    return (lo if qmin is None else qmin), (hi if qmax is None else qmax)


# --------------------------------------------------------------------------------------------
# Byte format


def int8_tensors(tflite: bytes) -> dict[str, tuple[float, int]]:
    """Every per-tensor int8 tensor of a ``.tflite``: name -> (scale, zero point)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=bytes(tflite))
    out = {}
    for d in it.get_tensor_details():
        q = d["quantization_parameters"]
        if d["dtype"] == np.int8 and len(q["scales"]) == 1:
            out[d["name"]] = (float(q["scales"][0]), int(q["zero_points"][0]))
    return out


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def with_checksum(body: bytes) -> bytes:
    """``body`` followed by its FNV-1a 64 checksum, little-endian (as ``to_bytes`` writes)."""
    return bytes(body) + struct.pack("<Q", fnv1a64(body))


def run_isolated(code: str, timeout: float = 120.0, memory: int = 3 << 30):
    """Runs ``code`` in a fresh interpreter with capped address space, for inputs that may abort
    the process or allocate without bound. Returns the CompletedProcess."""

    def limit() -> None:  # pragma: no cover - runs in the child
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
        env={**os.environ, "RUST_BACKTRACE": "0"},
        check=False,
    )


@pytest.fixture
def sample_histogram() -> qfcal.Histogram:
    rng = np.random.default_rng(1234)
    x = rng.standard_normal(5000).astype(np.float32)
    x[:50] = 0.0
    x[50:53] = [np.nan, np.inf, -np.inf]
    return hist_of(x, 256)


# --------------------------------------------------------------------------------------------
# Clusters: started once per module, at most one per size, closed at the end


@pytest.fixture(scope="module")
def clients() -> Iterator[Callable[[int], Any]]:
    """Dask clients of local clusters by worker count (skips without Dask)."""
    distributed = pytest.importorskip("distributed")
    made: dict[int, tuple[Any, Any]] = {}

    def get(n_workers: int) -> Any:
        if n_workers not in made:
            cluster = distributed.LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",
                host="127.0.0.1",
            )
            made[n_workers] = (cluster, distributed.Client(cluster))
        return made[n_workers][1]

    yield get
    for cluster, client in made.values():
        client.close()
        cluster.close()


@pytest.fixture(autouse=True)
def _library_logging() -> Iterator[None]:
    """Every test runs with the ``qfcal`` logger as a library user has it: the command line
    (``qfcal._progress.show_info``) gives it a stdout handler and stops propagation, which would
    otherwise outlive the test (or module fixture) that ran the command and hide records from
    ``caplog``. Reset before and after each test."""
    from qfcal import _progress

    def reset() -> None:
        log = _progress.log
        log.handlers[:] = [h for h in log.handlers if not isinstance(h, _progress._CurrentStdout)]
        log.setLevel(0)
        log.propagate = True

    reset()
    yield
    reset()
