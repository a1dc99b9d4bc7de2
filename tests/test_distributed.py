"""qfcal.distributed: calibration on a Dask cluster equals calibration in one process, bit for bit.

What is bit-identical, and why:

* Histograms (numpy activations): a ``qfcal.Histogram`` is a function of the multiset of values,
  so any cut of the data into partitions, any batching inside a partition, any number of
  workers and any tree of merges give the same bytes as one ``update`` over everything.
* Keras models: see ``tests/pipeline/test_dask_keras.py``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qfcal
from qfcal import distributed as qd
from readme_examples import run as run_readme_example

pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module", params=[1, 2], ids=["1worker", "2workers"])
def client(request: pytest.FixtureRequest, clients: Callable[[int], Any]) -> Any:
    return clients(request.param)


# --------------------------------------------------------------------------------------------
# numpy activations: any partitioning, any number of workers


N_VALUES = 60_000


def _everything() -> dict[str, np.ndarray]:
    """The whole 'dataset' of three tensors: wide, heavy-tailed, with zeros, NaN and infinities
    (so that merges must widen the span and coarsen bins)."""
    rng = np.random.default_rng(7)
    relu = np.maximum(rng.standard_normal(N_VALUES), 0).astype(np.float32)
    heavy = (rng.standard_t(1.5, N_VALUES) * 10.0 ** rng.uniform(-3, 3, N_VALUES)).astype(
        np.float32
    )
    heavy[::997] = np.nan
    heavy[5] = np.inf
    small = (1e-3 * rng.standard_normal(N_VALUES)).astype(np.float64)
    return {"relu": relu, "heavy": heavy, "small": small}


def _cuts(parts: int) -> list[tuple[int, int]]:
    """`parts` uneven index ranges covering 0..N_VALUES."""
    rng = np.random.default_rng(parts)
    inner = np.sort(rng.choice(np.arange(1, N_VALUES), parts - 1, replace=False))
    edges = [0, *inner.tolist(), N_VALUES]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _shard_activations(span: tuple[int, int]) -> Iterator[dict[str, np.ndarray]]:
    """On a worker: the shard's values in batches of uneven size (a nested function, so it
    travels by value: the workers cannot import this test module)."""
    data = _everything()
    lo, hi = span
    step = 1 + (hi - lo) // 3
    for i in range(lo, hi, step):
        yield {k: v[i : min(hi, i + step)] for k, v in data.items()}


def _single_process(bins: int = qfcal.DEFAULT_BINS) -> dict[str, qfcal.Histogram]:
    out = {}
    for name, values in _everything().items():
        h = qfcal.Histogram(bins)
        h.update(values)  # one update over everything
        out[name] = h
    return out


@pytest.fixture(scope="module", autouse=True)
def _pickle_this_module_by_value() -> Iterator[None]:
    import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


@pytest.mark.parametrize("parts", [1, 3, 17])
def test_numpy_shards_are_bit_identical_to_one_process(client: Any, parts: int) -> None:
    want = _single_process()
    for split_every in (2, 8):
        got = qd.calibrate_dask(_shard_activations, _cuts(parts), client, split_every=split_every)
        assert list(got) == ["relu", "heavy", "small"]
        for name, h in want.items():
            assert got[name].to_bytes() == h.to_bytes(), (name, parts, split_every)
    assert got["heavy"].nan == len(range(0, N_VALUES, 997))


def test_bins_and_local_scheduler() -> None:
    """A LocalCluster made from "local:1" (the CLI's form), 256 bins."""
    got = qd.calibrate_dask(_shard_activations, _cuts(4), "local:1", bins=256)
    want = _single_process(256)
    assert all(got[k].bins == 256 and got[k].to_bytes() == want[k].to_bytes() for k in want)


def test_bytes_helpers_in_one_process() -> None:
    """What Ray or Spark would call: histogram_shard on each shard, merge_bytes at the end."""
    x = _everything()["heavy"]
    blobs = [qd.histogram_shard(np.array_split(x[a:b], 3), 512) for a, b in _cuts(5)]
    want = qfcal.Histogram(512)
    want.update(x)
    assert qd.merge_bytes(blobs).to_bytes() == want.to_bytes()
    assert qd.merge_bytes(reversed(blobs)) == want
    assert qd.histogram_shard(x, 512) == want.to_bytes()  # one array is one batch


# --------------------------------------------------------------------------------------------
# Errors


def test_errors_name_the_argument() -> None:
    h64, h128 = qfcal.Histogram(64), qfcal.Histogram(128)
    h64.update(np.ones(3, np.float32))
    h128.update(np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"partitions is empty"):
        qd.calibrate_dask(_shard_activations, [], None)
    with pytest.raises(TypeError, match=r"partitions must be an iterable"):
        qd.calibrate_dask(_shard_activations, 3, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"blobs\[1\] has 128 bins, the shards before it 64"):
        qd.merge_bytes([h64.to_bytes(), h128.to_bytes()])
    with pytest.raises(ValueError, match=r"shards\[1\]\['a'\] has 128 bins"):
        qd.merge_tensors([{"a": h64.to_bytes()}, {"a": h128.to_bytes()}])
    with pytest.raises(ValueError, match=r"blobs\[0\]: not a valid qfcal histogram"):
        qd.merge_bytes([b"not a histogram"])
    corrupt = bytearray(h64.to_bytes())
    corrupt[-12] ^= 1
    with pytest.raises(ValueError, match=r"blobs\[0\]"):
        qd.merge_bytes([bytes(corrupt)])
    with pytest.raises(TypeError, match=r"blobs\[0\] must be bytes"):
        qd.merge_bytes(["text"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"blobs is empty"):
        qd.merge_bytes([])
    with pytest.raises(ValueError, match=r"shards is empty"):
        qd.merge_tensors([])
    with pytest.raises(ValueError, match=r"batches is empty"):
        qd.histogram_shard([])
    with pytest.raises(TypeError, match=r"batch 0 must be a mapping"):
        qd.histogram_tensors([np.ones(3)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"bins"):
        qd.calibrate_dask(_shard_activations, _cuts(2), None, bins=1)
    with pytest.raises(ValueError, match=r"split_every must be an int >= 2, got 1"):
        qd.calibrate_dask(_shard_activations, _cuts(2), None, split_every=1)
    with pytest.raises(ValueError, match=r"'local:0'"):
        with qd.dask_client("local:0"):
            pass


def test_worker_errors_come_back_with_their_type(clients: Callable[[int], Any]) -> None:
    def bad(span: tuple[int, int]) -> Iterator[dict[str, np.ndarray]]:
        if span[0] > 0:
            raise ValueError(f"shard {span} is unreadable")
        yield {"x": np.ones(3)}

    with pytest.raises(ValueError, match=r"is unreadable"):
        qd.calibrate_dask(bad, _cuts(3), clients(2))


def test_import_qfcal_does_not_import_dask() -> None:
    code = (
        "import sys, qfcal, qfcal.distributed, qfcal.cli\n"
        "bad = [m for m in ('dask', 'distributed', 'tensorflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)


# --------------------------------------------------------------------------------------------
# The README's example


def test_readme_example(clients: Callable[[int], Any], tmp_path: Path) -> None:
    data = _everything()["heavy"]
    shards = []
    for i, (a, b) in enumerate(_cuts(6)):
        np.save(tmp_path / f"part{i}.npy", data[a:b])
        shards.append([str(tmp_path / f"part{i}.npy")])
    ns = run_readme_example("dask", {"shards": shards, "client": clients(2)})
    want = qfcal.Histogram()
    want.update(data)
    assert ns["hists"]["relu"] == want  # type: ignore[index]
    assert ns["ranges"]["relu"] == qfcal.search(want, bits=8)  # type: ignore[index]
