"""Options checked without a search: `check_search_options` fails exactly as `search` does for
the same bad option (type and message), and `MIN_BINS` / `MAX_BINS` are the limits the
Histogram constructor enforces."""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from qfcal import _core

HIST = _core.Histogram(64)
HIST.update(np.random.default_rng(0).standard_normal(2000))


def outcome(f: Any, *args: Any, **kw: Any) -> tuple[type[BaseException], str] | None:
    """The exception type and message `f` raises, or None when it returns."""
    try:
        f(*args, **kw)
    except Exception as e:  # noqa: BLE001 (any exception is an outcome to compare)
        return type(e), str(e)
    return None


BAD_OPTIONS = [
    {"bits": 1},
    {"bits": 17},
    {"bits": -3},
    {"bits": 2**64},
    {"bits": -(2**70)},
    {"bits": 8.0},
    {"bits": "8"},
    {"qmin": 5, "qmax": 5},
    {"qmin": 127},
    {"qmax": 0, "signed": False},
    {"qmin": 0, "qmax": 65536},
    {"qmin": -70000, "qmax": -69990},
    {"qmin": 2**80},
    {"qmax": 1.5},
    {"gamma": 0.0},
    {"gamma": -1.0},
    {"gamma": math.nan},
    {"gamma": math.inf},
    {"gamma": "1"},
    {"percentile": 0.0},
    {"percentile": 100.5},
    {"percentile": math.nan},
    {"method": "foo"},
    {"method": "Optimal"},
    {"method": 3},
    {"symmetric": "yes"},
    {"signed": 1},
    {"narrow_range": None},
    # several bad options: the first one checked is reported, by both
    {"bits": 1, "gamma": -1.0, "method": "foo"},
    {"qmin": 5, "qmax": 5, "percentile": 0.0},
]


@pytest.mark.parametrize("kw", BAD_OPTIONS, ids=repr)
def test_bad_options_fail_as_in_search(kw):
    want = outcome(_core.search, HIST, **kw)
    assert want is not None, "search accepted a bad option"
    assert outcome(_core.check_search_options, **kw) == want
    assert want[0] in (ValueError, TypeError)


GOOD_OPTIONS = [
    {},
    {"bits": 2},
    {"bits": 16, "symmetric": True, "narrow_range": True},
    {"signed": False, "symmetric": True},
    {"qmin": -32768, "qmax": 32767},
    {"qmin": 0, "qmax": 1},
    {"gamma": 1e-9, "percentile": 1e-9},
    {"method": "percentile", "percentile": 100.0},
    {"bits": np.int64(4), "gamma": np.float32(2.0)},
]


@pytest.mark.parametrize("kw", GOOD_OPTIONS, ids=repr)
def test_good_options_pass(kw):
    assert _core.check_search_options(**kw) is None
    assert isinstance(_core.search(HIST, **kw), _core.SearchResult)


@pytest.mark.parametrize("method", _core.methods())
def test_every_method_name_passes(method):
    assert _core.check_search_options(method=method) is None


@given(
    bits=st.integers(-2, 20),
    symmetric=st.booleans(),
    signed=st.booleans(),
    narrow_range=st.booleans(),
    qmin=st.none() | st.integers(-(2**17), 2**17),
    qmax=st.none() | st.integers(-(2**17), 2**17),
    gamma=st.floats(allow_nan=True, allow_infinity=True),
    method=st.sampled_from([*_core.methods(), "nope"]),
    percentile=st.floats(-1.0, 101.0) | st.just(math.nan),
)
def test_check_and_search_agree_on_any_options(**kw):
    got = outcome(_core.check_search_options, **kw)
    want = outcome(_core.search, HIST, **kw)
    # the check passes exactly when the search succeeds (HIST holds ordinary values)
    assert got == want


def test_same_options_and_defaults_as_search():
    search = inspect.signature(_core.search).parameters
    check = inspect.signature(_core.check_search_options).parameters
    assert list(search)[0] == "hist"
    assert list(check) == list(search)[1:]
    for name, p in check.items():
        assert p.kind is inspect.Parameter.KEYWORD_ONLY
        assert p.default == search[name].default, name


# --------------------------------------------------------------------------------------------
# bin limits


def test_bin_limits_are_the_documented_ones():
    assert (_core.MIN_BINS, _core.MAX_BINS) == (16, 2**20)
    assert _core.MIN_BINS <= _core.DEFAULT_BINS <= _core.MAX_BINS


@pytest.mark.parametrize("bins", [_core.MIN_BINS, _core.MAX_BINS])
def test_bins_at_the_limits_work(bins):
    h = _core.Histogram(bins)
    h.update(np.linspace(-1.0, 1.0, 3 * bins))
    assert h.bins == bins
    assert len(h.counts) <= bins


@pytest.mark.parametrize("bins", [_core.MIN_BINS - 1, _core.MAX_BINS + 1])
def test_bins_past_the_limits_raise(bins):
    with pytest.raises(ValueError) as e:
        _core.Histogram(bins)
    assert str(e.value) == f"bins must be in {_core.MIN_BINS}..={_core.MAX_BINS}, got {bins}"


@pytest.mark.parametrize(
    "bins",
    [_core.MIN_BINS, _core.DEFAULT_BINS, _core.MAX_BINS, np.int64(256), _core.MIN_BINS - 1,
     _core.MAX_BINS + 1, 0, -5],
)  # fmt: skip
def test_the_adapters_bins_check_is_the_histograms(bins):
    from qfcal._checks import check_bins

    want = outcome(_core.Histogram, bins)
    got = outcome(check_bins, bins)
    assert got == want, (bins, got, want)
    if want is None:
        assert check_bins(bins) == int(bins) and type(check_bins(bins)) is int


@pytest.mark.parametrize("bins", [4096.0, "4096", None, True])
def test_the_adapters_bins_check_refuses_what_is_not_an_int(bins):
    from qfcal._checks import check_bins

    with pytest.raises(TypeError, match=r"^bins must be an int, got "):
        check_bins(bins)


def test_the_package_exports_the_checks():
    import qfcal

    assert qfcal.check_search_options is _core.check_search_options
    assert (qfcal.MIN_BINS, qfcal.MAX_BINS) == (_core.MIN_BINS, _core.MAX_BINS)
