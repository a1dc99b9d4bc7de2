"""Calibration of a Keras model file over Dask: every worker loads the model itself (never a
pickled model), folds batch norm and histograms its shard's taps; the bytes merge exactly.

:func:`split_batches` cuts images at the batch boundaries of a single-process run, because
TensorFlow's kernels may round differently for another batch composition (on x86 with oneDNN a
batch of one image differs in the last bit from the same image in a larger batch): so every
worker computes exactly the activations one process would, and the merged histograms are
bit-identical to :func:`qfcal.pipeline.taps.collect_histograms` in one process. The generic
machinery (shards, merges, clients) is :mod:`qfcal.distributed`.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import qfcal
from qfcal._checks import check_bins
from qfcal.distributed import SPLIT_EVERY, map_merge

__all__ = ["calibrate_keras_dask", "keras_shard", "split_batches"]


_MODEL_LOCK = threading.Lock()
_MODEL_CACHE: dict[tuple[str, int, int, bool], Any] = {}


def _worker_model(path: str, fold: bool) -> Any:
    """The model of the ``.keras`` file at `path` (batch norm folded if `fold`), loaded once per
    worker process and file version."""
    from qfcal.pipeline.train import load_model

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"model_path {path!r} does not exist on worker host {os.uname().nodename!r}: "
            "the workers must see the model file (shared file system)"
        )
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size, fold)
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = load_model(p)
            if fold:
                from qfcal.pipeline.fold import fold_batch_norm

                model = fold_batch_norm(model)
            _MODEL_CACHE.clear()
            _MODEL_CACHE[key] = model
    return model


def keras_shard(
    model_path: str | os.PathLike[str],
    images: Any,
    *,
    batch_size: int = 32,
    bins: int = qfcal.DEFAULT_BINS,
    fold: bool = True,
) -> dict[str, bytes]:
    """One shard's calibration on a Keras model, as ``{tensor: Histogram.to_bytes()}``: what a
    worker of :func:`calibrate_keras_dask` computes (callable from Ray or Spark too).

    Args:
        model_path: the ``.keras`` file (loaded here, once per process; never pickled).
        images: an array ``(n, *input_shape)``, an iterable of such batches, or a function of no
            argument returning either (to load the shard on the worker).
        batch_size: images per inference batch when `images` is an array.
        bins: bins of every histogram.
        fold: fold batch norm into the convolutions first, as the pipeline and TFLite do.

    Raises:
        FileNotFoundError: no file at `model_path` on this host.
        ValueError: no images, images that do not fit the model, bad `batch_size` or `bins`.
    """
    from qfcal.pipeline.taps import collect_histograms

    check_bins(bins)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    data = images() if callable(images) else images
    model = _worker_model(os.fspath(model_path), fold)
    taps = collect_histograms(model, data, batch_size=batch_size, bins=int(bins))
    return {name: h.to_bytes() for name, h in taps.histograms.items()}


def split_batches(images: Any, batch_size: int, partitions: int) -> list[Any]:
    """Cut `images` into at most `partitions` contiguous shards at multiples of `batch_size`.

    A shard is then made of whole batches of the single-process run
    (``collect_histograms(model, images, batch_size=batch_size)``), the last one keeping the
    remainder, so every worker computes exactly the batches that run computes. This matters:
    TensorFlow's kernels may round differently for another batch size (on x86 with oneDNN a
    batch of one image differs from the same image in a larger batch in the last bit).

    Raises:
        ValueError: `batch_size` or `partitions` < 1, or no images.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"partitions must be a positive int, got {partitions!r}")
    n = len(images)
    if n == 0:
        raise ValueError("images is empty: calibration needs at least one image")
    batches = -(-n // batch_size)
    k = min(partitions, batches)
    # partition j holds batches [j * batches // k, (j + 1) * batches // k)
    cuts = [min(n, (j * batches // k) * batch_size) for j in range(k + 1)]
    return [images[cuts[j] : cuts[j + 1]] for j in range(k)]


def calibrate_keras_dask(
    model_path: str | os.PathLike[str],
    partitions: Sequence[Any],
    client: Any = None,
    *,
    batch_size: int = 32,
    bins: int = qfcal.DEFAULT_BINS,
    fold: bool = True,
    split_every: int = SPLIT_EVERY,
) -> dict[str, qfcal.Histogram]:
    """Calibrate a Keras model on a Dask cluster: every worker loads `model_path` itself, runs
    :func:`keras_shard` on its partitions, and the bytes are merged exactly on the workers.

    Args:
        model_path: a ``.keras`` file every worker can read (absolute paths are safest).
        partitions: shards of calibration images: arrays (best cut by :func:`split_batches`),
            iterables of batches, or functions of no argument that load a shard on the worker.
        client, split_every: as for :func:`calibrate_dask`.
        batch_size, bins, fold: as for :func:`keras_shard`.

    Returns:
        ``{tensor name: qfcal.Histogram}`` in graph order, the histograms
        :func:`qfcal.pipeline.taps.collect_histograms` gives over the same batches in one
        process (``TapHistograms(result).search(...)`` gives the ranges).

    Raises:
        FileNotFoundError: no file at `model_path` (checked here and on every worker).
        ValueError, TypeError: as for :func:`keras_shard` and :func:`calibrate_dask`.
    """
    path = os.path.abspath(os.fspath(model_path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model_path {path!r} does not exist")
    check_bins(bins)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    work = functools.partial(keras_shard, path, batch_size=batch_size, bins=int(bins), fold=fold)
    return map_merge(work, partitions, client, split_every=split_every)
