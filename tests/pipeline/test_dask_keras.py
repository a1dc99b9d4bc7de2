"""qfcal.pipeline.dask_keras: a Keras model file calibrated on Dask workers equals one process,
bit for bit.

The histograms are exact, but the activations themselves are not a function of the image alone.
TensorFlow's CPU kernels (oneDNN) may round differently for another batch composition: on this
project's x86 machine a batch of one image gives last-bit differences in every tensor against
the same image inside a batch of 2..96 (batch sizes >= 2 agreed). So the Keras path cuts the
images at the batch boundaries of the single-process run (``split_batches``) and each worker
computes exactly those batches; the tests compare with the single-process run over the same
images and batch size, including a trailing one-image batch. Thread counts (the workers run
single-threaded under Dask's nanny) did not change results.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qfcal.pipeline import dask_keras as qdk

pytest.importorskip("dask")
pytest.importorskip("distributed")

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_split_batches_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"partitions must be a positive int, got 0"):
        qdk.split_batches(np.zeros((4, 2)), 2, 0)
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        qdk.split_batches(np.zeros((4, 2)), 0, 2)


def test_split_batches_cuts_at_batch_boundaries() -> None:
    x = np.arange(70)
    for parts in (1, 2, 3, 5):
        shards = qdk.split_batches(x, 32, parts)
        assert len(shards) == min(parts, 3)
        assert np.array_equal(np.concatenate(shards), x)
        assert all(len(s) % 32 == 0 for s in shards[:-1])


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("keras")
    from qfcal.pipeline import models

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
    from qfcal.pipeline.fold import fold_batch_norm
    from qfcal.pipeline.taps import collect_histograms
    from qfcal.pipeline.train import load_model

    path = tiny_keras[16]
    # 65 images: batches of 32, 32 and a trailing single image (the batch size that rounds
    # differently on oneDNN, so shards must keep the single-process batches)
    images = np.random.default_rng(3).random((65, 16, 16, 1), dtype=np.float32)
    want = collect_histograms(fold_batch_norm(load_model(path)), images, batch_size=32).histograms
    client = clients(2)
    for parts in (1, 2, 3):
        got = qdk.calibrate_keras_dask(path, qdk.split_batches(images, 32, parts), client)
        assert list(got) == list(want)  # graph order kept
        for name, h in want.items():
            assert got[name].to_bytes() == h.to_bytes(), (parts, name)
    # shards loaded on the workers (what a real cluster does) give the same bits too
    files = []
    for i, shard in enumerate(qdk.split_batches(images, 32, 3)):
        np.save(tmp_path / f"shard{i}.npy", shard)
        files.append(functools.partial(np.load, str(tmp_path / f"shard{i}.npy")))
    got = qdk.calibrate_keras_dask(path, files, client)
    assert all(got[n].to_bytes() == h.to_bytes() for n, h in want.items())
    # errors raised on a worker come back with their type and message
    with pytest.raises(ValueError, match=r"images must have shape \(n, 16, 16, 1\)"):
        qdk.calibrate_keras_dask(path, [np.zeros((2, 8, 8, 1), np.float32)], client)
    with pytest.raises(FileNotFoundError, match=r"model_path .* does not exist"):
        qdk.calibrate_keras_dask(tmp_path / "missing.keras", [images], client)


@pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed (.ci/run installs it)",
)
def test_cli_calibrate_on_dask_writes_the_same_files(
    clients: Callable[[int], Any], tiny_keras: dict[int, Path], tmp_path: Path
) -> None:
    from qfcal import cli
    from qfcal.pipeline import steps

    client = clients(2)
    common = ["--model", str(tiny_keras[28]), "--limit-train", "1000", "--calib-per-class", "7"]
    one, many = tmp_path / "one", tmp_path / "many"
    assert cli.main(["calibrate", "--out", str(one), *common, "--method", "optimal"]) == 0
    address = client.scheduler.address
    # the default method, auto, runs in one process: on Dask the ranges are optimal's, recorded
    assert cli.main(["calibrate", "--out", str(many), *common, "--dask", address]) == 0
    step = json.loads((many / "run.json").read_text())["steps"]["calibrate"]
    assert step["method_used"] == "optimal"
    # 70 images: batches 32, 32, 6 over 2 worker threads
    assert step["dask_shards"] == 2
    assert (one / "ranges.json").read_bytes() == (many / "ranges.json").read_bytes()
    a = steps.load_histograms(one / "histograms.npz")
    b = steps.load_histograms(many / "histograms.npz")
    assert list(a) == list(b) and all(a[n].to_bytes() == b[n].to_bytes() for n in a)


def test_cli_dask_option_is_checked_before_any_step(capsys: pytest.CaptureFixture[str]) -> None:
    from qfcal import cli

    args = cli.parser().parse_args(["run", "--dask", "local:2"])
    assert args.dask == "local:2"
    with pytest.raises(SystemExit) as e:
        cli.parser().parse_args(["calibrate", "--out", "x", "--dask", "local:zero"])
    assert e.value.code == 2
    assert "'local:zero'" in capsys.readouterr().err
