"""Every bad input gives the documented exception, with a message naming the argument and the
value; byte strings that are corrupted, truncated, foreign or from the future are refused."""

from __future__ import annotations

import math
import pickle
import re
import struct

import numpy as np
import pytest
import qfcal
from conftest import hist_of, with_checksum
from hypothesis import given, settings
from hypothesis import strategies as st

VERSION = slice(8, 12)  # little-endian u32 format version


SAMPLE = np.array([1.0, 2.0, -3.5, 0.0, np.nan, 7.25])
SAMPLE_BYTES = hist_of(SAMPLE, 64).to_bytes()


@pytest.fixture
def h() -> qfcal.Histogram:
    return hist_of(SAMPLE, 64)


# --------------------------------------------------------------------------------------------
# Histogram(bins)


@pytest.mark.parametrize("bins", [15, 0, -1, -(2**40), 2**20 + 1, 2**31])
def test_bins_out_of_range(bins):
    with pytest.raises(ValueError, match=rf"^bins must be in 16..=1048576, got {bins}$"):
        qfcal.Histogram(bins)


@pytest.mark.parametrize("bins", [16, 17, 2**20])
def test_bins_at_the_limits_are_accepted(bins):
    assert qfcal.Histogram(bins).bins == bins


@pytest.mark.parametrize("bins", [2**63, 2**64, -(2**70)])
def test_bins_far_out_of_range_is_a_value_error(bins):
    """BUG: integers beyond 64 bits raise OverflowError ('Python int too large to convert to C
    long'), which is not the documented ValueError and names neither argument nor value."""
    with pytest.raises(ValueError, match=rf"bins.*{bins}"):
        qfcal.Histogram(bins)


# --------------------------------------------------------------------------------------------
# update()


BAD_DTYPES = [
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint64,
    np.bool_,
    np.complex64,
    np.complex128,
    np.longdouble,
    "datetime64[s]",
    "timedelta64[ms]",
    "U3",
    "S3",
    object,
]


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
def test_update_rejects_non_float_dtypes(h, dtype):
    dtype = np.dtype(dtype)
    if dtype == np.longdouble and dtype.itemsize == 8:
        pytest.skip("long double is float64 on this platform")
    before = h.to_bytes()
    values = np.zeros(4, dtype=dtype)
    with pytest.raises(TypeError, match=re.escape(f"got dtype {dtype}")) as e:
        h.update(values)
    assert "float16, float32 or float64" in str(e.value)
    assert h.to_bytes() == before  # nothing was added


@pytest.mark.parametrize(
    "values, dtype",
    [([1, 2, 3], "int64"), ([True, False], "bool"), (["a", "b"], "<U1"), ([1j], "complex128")],
)
def test_update_rejects_lists_that_are_not_floats(h, values, dtype):
    with pytest.raises(TypeError, match=re.escape(f"got dtype {dtype}")):
        h.update(values)


# --------------------------------------------------------------------------------------------
# search() on nothing


@pytest.mark.parametrize(
    "values",
    [[], [np.nan], [np.inf, -np.inf], [np.nan, np.inf, np.nan, -np.inf]],
    ids=["empty", "nan", "infs", "mixed"],
)
@pytest.mark.parametrize("method", qfcal.methods())
def test_search_of_a_histogram_without_finite_values(values, method):
    h = hist_of(np.array(values, dtype=np.float32), 64)
    with pytest.raises(qfcal.EmptyHistogramError, match="no finite value") as e:
        qfcal.search(h, method=method)
    assert isinstance(e.value, ValueError)


def test_empty_histogram_error_is_a_value_error():
    assert issubclass(qfcal.EmptyHistogramError, ValueError)
    assert qfcal.EmptyHistogramError is qfcal._core.EmptyHistogramError


def test_empty_histogram_error_can_be_pickled():
    """BUG: the exception class says it lives in module '_core' (not 'qfcal._core'), so it
    cannot be pickled: raised in a ProcessPoolExecutor worker, it reaches the caller as a
    PicklingError."""
    e = qfcal.EmptyHistogramError("cannot search a range: the histogram holds no finite value")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is qfcal.EmptyHistogramError and back.args == e.args


@pytest.mark.parametrize(
    "pair", [([0, 0, 0], [0, 1, 2, 3]), ([], [0.0]), (np.zeros(2), [-1, 0, 1])]
)
def test_search_of_empty_counts(pair):
    with pytest.raises(qfcal.EmptyHistogramError):
        qfcal.search(pair)


# --------------------------------------------------------------------------------------------
# search() options


@pytest.mark.parametrize("bits", [1, 17, 0, -3, 100])
def test_bits_out_of_range(h, bits):
    with pytest.raises(ValueError) as e:
        qfcal.search(h, bits=bits)
    assert str(e.value) == f"bits must be in 2..=16, got {bits}"


def test_bits_far_out_of_range_is_a_value_error(h):
    """BUG: as for bins, bits=2**64 raises OverflowError instead of the documented ValueError."""
    with pytest.raises(ValueError, match=r"bits must be in 2..=16"):
        qfcal.search(h, bits=2**64)


@pytest.mark.parametrize(
    "kw, shown",
    [
        ({"qmin": 5, "qmax": 5}, "qmin=5, qmax=5"),
        ({"qmin": 6, "qmax": -6}, "qmin=6, qmax=-6"),
        ({"qmin": 127}, "qmin=127, qmax=127"),  # qmax from bits=8, signed
        ({"qmax": -128}, "qmin=-128, qmax=-128"),
        ({"qmax": 0, "signed": False}, "qmin=0, qmax=0"),
        ({"qmax": 1, "signed": False, "narrow_range": True}, "qmin=1, qmax=1"),
    ],
)
def test_qmin_must_be_below_qmax(h, kw, shown):
    with pytest.raises(ValueError, match=re.escape(f"qmin must be less than qmax, got {shown}")):
        qfcal.search(h, **kw)


@pytest.mark.parametrize(
    "kw, shown",
    [
        ({"qmin": 0, "qmax": 65536}, "qmin=0, qmax=65536"),
        ({"qmin": -40000, "qmax": 40000}, "qmin=-40000, qmax=40000"),
        ({"qmin": -70000, "qmax": -69990}, "qmin=-70000, qmax=-69990"),
        ({"qmin": 65537, "qmax": 65540}, "qmin=65537, qmax=65540"),
    ],
)
def test_integer_range_limits(h, kw, shown):
    with pytest.raises(ValueError, match=re.escape(shown)):
        qfcal.search(h, **kw)


def test_the_widest_integer_range_is_accepted(h):
    r = qfcal.search(h, qmin=-32768, qmax=32767, method="minmax")
    assert (r.qmin, r.qmax) == (-32768, 32767)


@pytest.mark.parametrize(
    "gamma, shown",
    [(0.0, "0"), (-1.0, "-1"), (-1e-300, "-0.000"), (math.nan, "nan"), (math.inf, "inf")],
)
def test_gamma_must_be_positive_and_finite(h, gamma, shown):
    with pytest.raises(ValueError) as e:
        qfcal.search(h, gamma=gamma)
    msg = str(e.value)
    assert msg.startswith("gamma must be a positive finite number, got ")
    assert msg.lower().split("got ")[1].startswith(shown)


def test_negative_infinite_gamma(h):
    with pytest.raises(ValueError, match=r"gamma .*got -inf"):
        qfcal.search(h, gamma=-math.inf)


@pytest.mark.parametrize(
    "p, shown", [(0.0, "0"), (-5.0, "-5"), (100.5, "100.5"), (math.nan, "nan"), (math.inf, "inf")]
)
def test_percentile_must_be_in_0_100(h, p, shown):
    with pytest.raises(ValueError) as e:
        qfcal.search(h, method="percentile", percentile=p)
    msg = str(e.value)
    assert msg.startswith("percentile must be in (0, 100], got ")
    assert msg.lower().endswith(shown)


def test_percentile_limits_are_accepted(h):
    for p in (100.0, 1e-9, 50.0):
        r = qfcal.search(h, method="percentile", percentile=p)
        assert r.method == "percentile"


@pytest.mark.parametrize("method", ["foo", "", "Optimal", "min_max", "optimal "])
def test_unknown_method(h, method):
    with pytest.raises(ValueError) as e:
        qfcal.search(h, method=method)
    msg = str(e.value)
    assert msg.startswith("method must be one of ")
    assert msg.endswith(f'got "{method}"')
    for name in qfcal.methods():
        assert name in msg


# --------------------------------------------------------------------------------------------
# search() of (counts, edges)


@pytest.mark.parametrize(
    "pair, pattern",
    [
        (([1, 2], [0, 1]), r"edges must have one more entry than counts, got 2 counts and 2 edges"),
        (([1], [0, 1, 2]), r"got 1 counts and 3 edges"),
        (([], []), r"got 0 counts and 0 edges"),
        (([1, -1], [0, 1, 2]), r"counts must be finite and non-negative, got counts\[1\]=-1"),
        (([np.nan, 1], [0, 1, 2]), r"counts.*counts\[0\]=NaN"),
        (([1, np.inf], [0, 1, 2]), r"counts.*counts\[1\]=inf"),
        (
            ([1, 1], [0, 2, 1]),
            r"edges must be strictly increasing, got edges\[1\]=2 and edges\[2\]=1",
        ),
        (([1, 1], [0, 1, 1]), r"strictly increasing.*edges\[1\]=1 and edges\[2\]=1"),
        (([1, 1], [0, np.nan, 2]), r"edges.*edges\[1\]=NaN"),
        (([1], [0, np.inf]), r"edges must be finite, got edges\[1\]=inf"),
        ((np.ones((2, 2)), np.arange(3)), r"counts must be 1-D, got shape \[2, 2\]"),
        (([1, 1], np.arange(6.0).reshape(2, 3)), r"edges must be 1-D, got shape \[2, 3\]"),
        (([1, 1], 3.0), r"edges must be 1-D, got shape \[\]"),
    ],
)
def test_malformed_counts_edges(pair, pattern):
    with pytest.raises(ValueError, match=pattern):
        qfcal.search(pair)


@pytest.mark.parametrize(
    "hist",
    [3, 2.5, None, ([1],), ([1], [0, 1], [2]), (), object(), np.float64(1.0)],
    ids=["int", "float", "None", "1-tuple", "3-tuple", "empty", "object", "np-scalar"],
)
def test_hist_must_be_a_histogram_or_a_pair(hist):
    with pytest.raises(TypeError, match=r"hist must be a qfcal.Histogram or a \(counts, edges\)"):
        qfcal.search(hist)


# --------------------------------------------------------------------------------------------
# merge


def test_merging_different_bins(h):
    other = hist_of([1.0], 128)
    before = h.to_bytes(), other.to_bytes()
    for combine in (h.merge, h.__add__, h.__iadd__):
        with pytest.raises(ValueError, match=r"different bins: 64 and 128"):
            combine(other)
    with pytest.raises(ValueError, match=r"different bins: 64 and 128"):
        h += other
    with pytest.raises(ValueError, match=r"different bins: 128 and 64"):
        other.merge(h)
    assert (h.to_bytes(), other.to_bytes()) == before


@pytest.mark.parametrize("other", [3, None, np.array([1.0]), "h"])
def test_merging_something_else(h, other):
    with pytest.raises(TypeError):
        h.merge(other)
    with pytest.raises(TypeError):
        h + other  # noqa: B018


# --------------------------------------------------------------------------------------------
# from_bytes


def test_from_bytes_accepts_only_bytes(h):
    for data in (h.to_bytes().decode("latin-1"), 3, None):
        with pytest.raises(TypeError):
            qfcal.Histogram.from_bytes(data)


def bad_bytes(data: bytes, *fragments: str) -> None:
    with pytest.raises(ValueError) as e:
        qfcal.Histogram.from_bytes(data)
    msg = str(e.value)
    assert "histogram" in msg
    for fragment in fragments:
        assert fragment in msg


@settings(max_examples=200)
@given(st.data())
def test_any_flipped_byte_is_detected(data):
    b = SAMPLE_BYTES
    i = data.draw(st.integers(0, len(b) - 1))
    mask = data.draw(st.integers(1, 255))
    corrupted = bytearray(b)
    corrupted[i] ^= mask
    bad_bytes(bytes(corrupted))


@settings(max_examples=100)
@given(st.data())
def test_any_truncation_or_extension_is_detected(data):
    b = SAMPLE_BYTES
    n = data.draw(st.integers(0, len(b) - 1))
    bad_bytes(b[:n])
    extra = data.draw(st.binary(min_size=1, max_size=16))
    bad_bytes(b + extra)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_are_refused(data):
    bad_bytes(data)
    bad_bytes(b"QFCALHST" + data)
    bad_bytes(b"QFCALHST\x01\x00\x00\x00" + data)


def test_foreign_bytes_are_refused(h):
    b = h.to_bytes()
    bad_bytes(b"", "header")
    bad_bytes(b"QFCAL", "header")
    bad_bytes(b"qfcalhst" + b[8:], "header")
    bad_bytes(b"\x89PNG\r\n\x1a\n" + b[8:], "header")
    bad_bytes(pickle_of(h), "header")


def pickle_of(h: qfcal.Histogram) -> bytes:
    return pickle.dumps(h)


@pytest.mark.parametrize("version", [3, 255, 2**32 - 1, 0])
def test_other_format_versions_are_refused(h, version):
    b = bytearray(h.to_bytes())
    b[VERSION] = struct.pack("<I", version)
    bad_bytes(bytes(b), f"version {version}")
    # the same with a valid checksum: refused for its version, not for its checksum
    bad_bytes(with_checksum(bytes(b[:-8])), f"version {version}")


def version_1_bytes(b: bytes) -> bytes:
    """`b` (format version 2) as format version 1 wrote it: without the two counts at the
    extremes (bytes 84..100)."""
    body = bytearray(b[:-8])
    body[VERSION] = struct.pack("<I", 1)
    del body[84:100]
    return with_checksum(bytes(body))


def test_version_1_bytes_still_read(h):
    old = qfcal.Histogram.from_bytes(version_1_bytes(h.to_bytes()))
    assert h.at_extremes == (1, 1) and old.at_extremes == (0, 0)
    assert (old.min, old.max, old.total, old.bin_width) == (h.min, h.max, h.total, h.bin_width)
    np.testing.assert_array_equal(old.counts, h.counts)
    assert old.to_bytes()[8:12] == struct.pack("<I", 2)
    # without the counts at the extremes the data's ends are still exact
    r = qfcal.search(old, method="minmax")
    assert r.min >= h.min - r.scale / 2 and r.max <= h.max + r.scale / 2


def test_checksum_is_fnv1a_over_the_body(h):
    b = h.to_bytes()
    assert with_checksum(b[:-8]) == b
    assert qfcal.Histogram.from_bytes(with_checksum(b[:-8])) == h


@pytest.mark.parametrize(
    "offset, fmt, value, fragment",
    [
        (12, "<I", 15, "bins"),  # bins out of range
        (12, "<I", 16, "grid"),  # another bins: the grid no longer matches min and max
        (16, "<i", 3, "grid"),  # k
        (20, "<q", -1, "grid"),  # lo
        (28, "<d", 0.0, "minimum and maximum"),  # min_nz
        (36, "<d", math.inf, "minimum and maximum"),  # max_nz
        (44, "<Q", 1, "counts"),  # nonzero
        (84, "<Q", 99, "exceed"),  # values equal to the minimum
        (92, "<Q", 99, "exceed"),  # values equal to the maximum
    ],
)
def test_inconsistent_fields_with_a_valid_checksum_are_refused(h, offset, fmt, value, fragment):
    body = bytearray(h.to_bytes()[:-8])
    struct.pack_into(fmt, body, offset, value)
    bad_bytes(with_checksum(bytes(body)), fragment)


@pytest.mark.parametrize(
    "original",
    [SAMPLE_BYTES, hist_of(np.array([0.0, np.nan, -0.0]), 16).to_bytes()],
    ids=["values", "zeros-only"],
)
@settings(max_examples=200)
@given(data=st.data())
def test_rechecksummed_mutations_are_refused_or_canonical(original, data):
    """Any body with a valid checksum is either refused or read as a histogram whose own bytes
    are exactly that body: from_bytes accepts canonical byte strings only."""
    body = bytearray(original[:-8])
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(12, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    b = with_checksum(bytes(body))
    try:
        back = qfcal.Histogram.from_bytes(b)
    except ValueError:
        return
    assert back.to_bytes() == b


def test_non_canonical_bytes_of_a_zeros_only_histogram_are_refused():
    """BUG: without nonzero values the grid fields (k, lo, min, max) are not checked, so bytes
    that to_bytes never writes are accepted (from_bytes(b).to_bytes() != b)."""
    body = bytearray(hist_of(np.zeros(3), 16).to_bytes()[:-8])
    struct.pack_into("<i", body, 16, 7)  # k
    b = with_checksum(bytes(body))
    try:
        back = qfcal.Histogram.from_bytes(b)
    except ValueError:
        return
    assert back.to_bytes() == b
