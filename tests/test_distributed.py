"""qfcal.distributed: calibration on a Dask cluster equals calibration in one process, bit for bit.

What is bit-identical, and why:

* Histograms (numpy activations): a ``qfcal.Histogram`` is a function of the multiset of values,
  so any cut of the data into partitions, any batching inside a partition, any number of
  workers and any tree of merges give the same bytes as one ``update`` over everything.
* Keras models: the histograms are exact, but the activations themselves are not a function of
  the image alone. TensorFlow's CPU kernels (oneDNN) may round differently for another batch
  composition: on this project's x86 machine a batch of one image gives last-bit differences in
  every tensor against the same image inside a batch of 2..96 (batch sizes >= 2 agreed). So the
  Keras path cuts the images at the batch boundaries of the single-process run
  (``split_batches``) and each worker computes exactly those batches; the tests compare with the
  single-process run over the same images and batch size, including a trailing one-image batch.
  Thread counts (the workers run single-threaded under Dask's nanny) did not change results.
"""

from __future__ import annotations

import functools
import json
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

FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------------------------
# Clusters: started once per module, at most one per size, closed at the end


@pytest.fixture(scope="module")
def clients() -> Iterator[Callable[[int], Any]]:
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
    with pytest.raises(ValueError, match=r"partitions must be a positive int, got 0"):
        qd.split_batches(np.zeros((4, 2)), 2, 0)
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        qd.split_batches(np.zeros((4, 2)), 0, 2)


def test_worker_errors_come_back_with_their_type(clients: Callable[[int], Any]) -> None:
    def bad(span: tuple[int, int]) -> Iterator[dict[str, np.ndarray]]:
        if span[0] > 0:
            raise ValueError(f"shard {span} is unreadable")
        yield {"x": np.ones(3)}

    with pytest.raises(ValueError, match=r"is unreadable"):
        qd.calibrate_dask(bad, _cuts(3), clients(2))


def test_split_batches_cuts_at_batch_boundaries() -> None:
    x = np.arange(70)
    for parts in (1, 2, 3, 5):
        shards = qd.split_batches(x, 32, parts)
        assert len(shards) == min(parts, 3)
        assert np.array_equal(np.concatenate(shards), x)
        assert all(len(s) % 32 == 0 for s in shards[:-1])


def test_import_qfcal_does_not_import_dask() -> None:
    code = (
        "import sys, qfcal, qfcal.distributed, qfcal.cli\n"
        "bad = [m for m in ('dask', 'distributed', 'tensorflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)


# --------------------------------------------------------------------------------------------
# Keras: every worker loads the model file; same batches -> same bits


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("keras")
    from qfcal import models

    # two models: 16x16 (the fast case) and 28x28 (the pipeline's Fashion-MNIST input)
    out: dict[str, Any] = {}
    folder = tmp_path_factory.mktemp("keras")
    for side in (16, 28):
        m = models.build("v2", "qfriendly", input_shape=(side, side, 1), alpha=0.25)
        path = folder / f"tiny{side}.keras"
        m.save(path)
        out[side] = path
    return out


def test_keras_shards_are_bit_identical_to_one_process(
    clients: Callable[[int], Any], tiny_keras: dict[int, Path], tmp_path: Path
) -> None:
    from qfcal import calibrate as qcal
    from qfcal.fold import fold_batch_norm
    from qfcal.train import load_model

    path = tiny_keras[16]
    # 65 images: batches of 32, 32 and a trailing single image (the batch size that rounds
    # differently on oneDNN, so shards must keep the single-process batches)
    images = np.random.default_rng(3).random((65, 16, 16, 1), dtype=np.float32)
    want = qcal.calibrate(fold_batch_norm(load_model(path)), images, batch_size=32).histograms
    client = clients(2)
    for parts in (1, 2, 3):
        got = qd.calibrate_keras_dask(path, qd.split_batches(images, 32, parts), client)
        assert list(got) == list(want)  # graph order kept
        for name, h in want.items():
            assert got[name].to_bytes() == h.to_bytes(), (parts, name)
    # shards loaded on the workers (what a real cluster does) give the same bits too
    files = []
    for i, shard in enumerate(qd.split_batches(images, 32, 3)):
        np.save(tmp_path / f"shard{i}.npy", shard)
        files.append(functools.partial(np.load, str(tmp_path / f"shard{i}.npy")))
    got = qd.calibrate_keras_dask(path, files, client)
    assert all(got[n].to_bytes() == h.to_bytes() for n, h in want.items())
    # errors raised on a worker come back with their type and message
    with pytest.raises(ValueError, match=r"images must have shape \(n, 16, 16, 1\)"):
        qd.calibrate_keras_dask(path, [np.zeros((2, 8, 8, 1), np.float32)], client)
    with pytest.raises(FileNotFoundError, match=r"model_path .* does not exist"):
        qd.calibrate_keras_dask(tmp_path / "missing.keras", [images], client)


@pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed (.ci/run installs it)",
)
def test_cli_calibrate_on_dask_writes_the_same_files(
    clients: Callable[[int], Any], tiny_keras: dict[int, Path], tmp_path: Path
) -> None:
    from qfcal import cli, pipeline

    client = clients(2)
    common = ["--model", str(tiny_keras[28]), "--limit-train", "1000", "--calib-per-class", "7"]
    one, many = tmp_path / "one", tmp_path / "many"
    assert cli.main(["calibrate", "--out", str(one), *common]) == 0
    address = client.scheduler.address
    assert cli.main(["calibrate", "--out", str(many), *common, "--dask", address]) == 0
    # 70 images: batches 32, 32, 6 over 2 worker threads
    assert json.loads((many / "run.json").read_text())["steps"]["calibrate"]["dask_shards"] == 2
    assert (one / "ranges.json").read_bytes() == (many / "ranges.json").read_bytes()
    a = pipeline.load_histograms(one / "histograms.npz")
    b = pipeline.load_histograms(many / "histograms.npz")
    assert list(a) == list(b) and all(a[n].to_bytes() == b[n].to_bytes() for n in a)


def test_cli_dask_option_is_checked_before_any_step(capsys: pytest.CaptureFixture[str]) -> None:
    from qfcal import cli

    args = cli.parser().parse_args(["run", "--dask", "local:2"])
    assert args.dask == "local:2"
    with pytest.raises(SystemExit) as e:
        cli.parser().parse_args(["calibrate", "--out", "x", "--dask", "local:zero"])
    assert e.value.code == 2
    assert "'local:zero'" in capsys.readouterr().err


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
