"""Calibration over a cluster: every worker histograms its shard, the histograms travel as
bytes, and exact merges give the result.

A :class:`qfcal.Histogram` is a function of the multiset of values it has seen (README, "The
histogram"), so a calibration set can be cut into any number of shards, each histogrammed
anywhere, and the merged histograms are bit-identical to those of one process over all the data.
Only two things cross the network: each shard's description (an array, a loader or a seed) on
the way out, and ``Histogram.to_bytes()`` (a few tens of kB per tensor) on the way back.

* :func:`histogram_shard` / :func:`histogram_tensors`: the worker's side, pure functions that
  histogram one shard's batches and return bytes (usable from Ray, Spark, multiprocessing...).
* :func:`merge_bytes` / :func:`merge_tensors`: the driver's side, exact merges of those bytes.
* :func:`calibrate_dask`: both over Dask: your function gives a shard's activations on a worker,
  the bytes are merged by Dask's tree reduction on the workers, one histogram per tensor comes
  back. :func:`map_merge` is the same for any function of a shard that returns bytes.
* :func:`dask_client`: a ``Client`` from a scheduler address, ``"local"`` or ``"local:N"``.

A Keras model file calibrated on Dask workers (each loads the model itself) is the pipeline's
:mod:`qfcal.pipeline.dask_keras`, built on these functions. Importing this module needs numpy
only; Dask (``pip install "dask[distributed]"``) is imported by the functions that use it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

import qfcal
from qfcal._checks import check_bins

__all__ = [
    "SPLIT_EVERY",
    "calibrate_dask",
    "check_scheduler",
    "client_threads",
    "dask_client",
    "histogram_shard",
    "histogram_tensors",
    "map_merge",
    "merge_bytes",
    "merge_tensors",
]

# Merge tasks read at most this many shard results each (a tree of merges on the workers).
SPLIT_EVERY = 8


def histogram_shard(
    batches: npt.ArrayLike | Iterable[npt.ArrayLike], bins: int = qfcal.DEFAULT_BINS
) -> bytes:
    """One tensor's histogram of one shard, as ``Histogram.to_bytes()``.

    Args:
        batches: one array, or an iterable of arrays (batches of the same tensor), float16/32/64
            of any shape.
        bins: bins of the histogram (every shard of one tensor must use the same).

    Raises:
        ValueError: bad `bins`, or no batch at all.
        TypeError: a batch that is not a numeric array.
    """
    check_bins(bins)
    h = qfcal.Histogram(int(bins))
    if isinstance(batches, np.ndarray):
        h.update(batches)
        return h.to_bytes()
    seen = 0
    for b in batches:  # type: ignore[union-attr]
        h.update(b)
        seen += 1
    if seen == 0:
        raise ValueError("batches is empty: a shard needs at least one batch")
    return h.to_bytes()


def histogram_tensors(
    batches: Iterable[Mapping[str, npt.ArrayLike]], bins: int = qfcal.DEFAULT_BINS
) -> dict[str, bytes]:
    """Many tensors' histograms of one shard: ``{tensor name: Histogram.to_bytes()}``.

    Args:
        batches: an iterable of ``{tensor name: array}`` (one mapping per batch; a tensor may be
            missing from some batches).
        bins: bins of every histogram.

    Raises:
        ValueError: bad `bins`, or no batch at all.
        TypeError: a batch that is not a mapping, a tensor name that is not a str.
    """
    check_bins(bins)
    hists: dict[str, qfcal.Histogram] = {}
    seen = 0
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"batch {i} must be a mapping {{tensor name: array}}, got {type(batch).__name__}"
            )
        for name, values in batch.items():
            if not isinstance(name, str):
                raise TypeError(f"tensor names must be str, got {name!r} in batch {i}")
            h = hists.get(name)
            if h is None:
                h = hists[name] = qfcal.Histogram(int(bins))
            h.update(values)
        seen += 1
    if seen == 0:
        raise ValueError("batches is empty: a shard needs at least one batch")
    return {name: h.to_bytes() for name, h in hists.items()}


def _from_bytes(blob: Any, where: str) -> qfcal.Histogram:
    if isinstance(blob, qfcal.Histogram):
        return blob
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"{where} must be bytes (Histogram.to_bytes()), got {type(blob).__name__}")
    try:
        return qfcal.Histogram.from_bytes(bytes(blob))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _merge_into(total: qfcal.Histogram, h: qfcal.Histogram, where: str) -> None:
    if h.bins != total.bins:
        raise ValueError(
            f"{where} has {h.bins} bins, the shards before it {total.bins}: every shard of a "
            "tensor must be histogrammed with the same bins"
        )
    total.merge(h)


def merge_bytes(blobs: Iterable[bytes | qfcal.Histogram]) -> qfcal.Histogram:
    """The exact merge of one tensor's shard histograms (bytes from :func:`histogram_shard`, or
    histograms). The result does not depend on the order or grouping of the shards.

    Raises:
        ValueError: no shard, bytes that are not a qfcal histogram (bad checksum...), or shards
            with different bins.
        TypeError: an element that is neither bytes nor a Histogram.
    """
    total: qfcal.Histogram | None = None
    for i, blob in enumerate(blobs):
        h = _from_bytes(blob, f"blobs[{i}]")
        if total is None:
            total = h.copy()
        else:
            _merge_into(total, h, f"blobs[{i}]")
    if total is None:
        raise ValueError("blobs is empty: nothing to merge")
    return total


def merge_tensors(
    shards: Iterable[Mapping[str, bytes | qfcal.Histogram]],
) -> dict[str, qfcal.Histogram]:
    """The exact merge of many tensors' shard histograms (``{tensor: bytes}`` from
    :func:`histogram_tensors` or :func:`qfcal.pipeline.dask_keras.keras_shard`), tensor by
    tensor, in the order tensors first appear. A tensor may be missing from some shards.

    Raises:
        ValueError: no shard, bad bytes, or one tensor's shards with different bins.
        TypeError: a shard that is not a mapping, or holds neither bytes nor Histograms.
    """
    out: dict[str, qfcal.Histogram] = {}
    count = 0
    for i, shard in enumerate(shards):
        if not isinstance(shard, Mapping):
            raise TypeError(
                f"shards[{i}] must be a mapping {{tensor: bytes}}, got {type(shard).__name__}"
            )
        for name, blob in shard.items():
            where = f"shards[{i}][{name!r}]"
            h = _from_bytes(blob, where)
            if name in out:
                _merge_into(out[name], h, where)
            else:
                out[name] = h.copy()
        count += 1
    if count == 0:
        raise ValueError("shards is empty: nothing to merge")
    return out


# ---------------------------------------------------------------------------------------------
# Dask


def _import_dask() -> tuple[Any, Any]:
    """The ``dask`` and ``distributed`` modules (typed Any: mypy needs no Dask to check this)."""
    try:
        dask = importlib.import_module("dask")
        distributed = importlib.import_module("distributed")
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f'qfcal.distributed needs Dask: pip install "dask[distributed]" ({e})'
        ) from e
    return dask, distributed


def _parse_local(scheduler: str) -> int | None:
    """N of ``"local:N"`` (None for ``"local"``); ValueError for a bad N."""
    if scheduler == "local":
        return None
    text = scheduler.partition(":")[2]
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(
            f"dask scheduler must be an address, 'local' or 'local:N' with N >= 1 workers, "
            f"got {scheduler!r}"
        )
    return n


def check_scheduler(scheduler: str) -> str:
    """`scheduler` (stripped) if :func:`dask_client` accepts it; needs no Dask.

    Raises:
        ValueError: an empty string, or ``local:N`` with N not a positive int.
    """
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise ValueError(
            f"dask scheduler must be an address, 'local' or 'local:N', got {scheduler!r}"
        )
    scheduler = scheduler.strip()
    if scheduler == "local" or scheduler.startswith("local:"):
        _parse_local(scheduler)
    return scheduler


@contextlib.contextmanager
def dask_client(scheduler: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for `scheduler`, closed on exit (with its cluster if it made one).

    Args:
        scheduler: a scheduler address (``"tcp://10.0.0.5:8786"``, a scheduler file path ending
            in ``.json``), ``"local"`` (a ``LocalCluster`` of one single-threaded worker process
            per core) or ``"local:N"`` (N worker processes); a ``Client`` is used as it is and
            left open.

    Raises:
        ValueError: a bad ``local:N``, or an empty string.
        ImportError: Dask is not installed.
    """
    _, distributed = _import_dask()
    Client, LocalCluster = distributed.Client, distributed.LocalCluster

    if isinstance(scheduler, Client):
        yield scheduler
        return
    scheduler = check_scheduler(scheduler)
    if scheduler == "local" or scheduler.startswith("local:"):
        n = _parse_local(scheduler)
        if n is None:
            n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        with (
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    elif scheduler.endswith(".json"):
        with Client(scheduler_file=scheduler) as client:
            yield client
    else:
        with Client(scheduler) as client:
            yield client


def _shard_partition(
    work: Callable[[Any], Mapping[str, bytes]], partition: Sequence[tuple[int, Any]]
) -> dict[str, bytes]:
    """A leaf of the reduction, on a worker: one Dask partition (one shard) to ``{tensor:
    bytes}``."""
    out: list[Mapping[str, bytes]] = []
    for index, shard in partition:
        got = work(shard)
        if not isinstance(got, Mapping):
            raise TypeError(
                f"partition {index}: the shard function must return {{tensor: bytes}}, "
                f"got {type(got).__name__}"
            )
        out.append(got)
    return dict(out[0]) if len(out) == 1 else _merge_results(out)


def _merge_results(results: Iterable[Mapping[str, bytes]]) -> dict[str, bytes]:
    """A merge node of the reduction, on a worker: shard results in, one result (bytes) out."""
    return {name: h.to_bytes() for name, h in merge_tensors(results).items()}


def map_merge(
    work: Callable[[Any], Mapping[str, bytes]],
    partitions: Iterable[Any],
    client: Any = None,
    *,
    split_every: int = SPLIT_EVERY,
) -> dict[str, qfcal.Histogram]:
    """`work` (a function of one partition returning ``{tensor: Histogram.to_bytes()}``) on
    every partition as Dask tasks, the results merged exactly on the workers by Dask's own tree
    reduction (``Bag.reduction``, `split_every` results per merge task); the root's bytes come
    back as ``{tensor: qfcal.Histogram}``. :func:`calibrate_dask` and
    :func:`qfcal.pipeline.dask_keras.calibrate_keras_dask` are this with their own `work`.

    Raises:
        ValueError: no partition, or `split_every` not an int >= 2.
        TypeError: `partitions` is not an iterable; `work` returned something else than a
            mapping.
        ImportError: Dask is not installed.
    """
    if isinstance(split_every, bool) or not isinstance(split_every, int) or split_every < 2:
        raise ValueError(f"split_every must be an int >= 2, got {split_every!r}")
    if isinstance(partitions, (str, bytes, Mapping)) or not isinstance(partitions, Iterable):
        raise TypeError(
            f"partitions must be an iterable of partitions, got {type(partitions).__name__}"
        )
    parts = list(partitions)
    if not parts:
        raise ValueError("partitions is empty: calibration needs at least one partition")
    dask, _ = _import_dask()
    bag = importlib.import_module("dask.bag")
    # one shard per Dask partition, so shards run in parallel and errors name their shard
    shards = bag.from_sequence(list(enumerate(parts)), partition_size=1)
    root = shards.reduction(
        functools.partial(_shard_partition, work),
        _merge_results,
        split_every=split_every,
        # keys unique to this call: a scheduler keeps results of earlier calls under their keys
        name=f"qfcal-merge-{uuid.uuid4().hex[:12]}",
    )
    with dask_client(client) if client is not None else contextlib.nullcontext() as c:
        result = c.compute(root, sync=True) if c is not None else dask.compute(root)[0]
    return merge_tensors([result])


def _activation_shard(
    activations: Callable[[Any], Iterable[Mapping[str, npt.ArrayLike]]],
    bins: int,
    partition: Any,
) -> dict[str, bytes]:
    return histogram_tensors(activations(partition), bins)


def calibrate_dask(
    activations: Callable[[Any], Iterable[Mapping[str, npt.ArrayLike]]],
    partitions: Iterable[Any],
    client: Any = None,
    *,
    bins: int = qfcal.DEFAULT_BINS,
    split_every: int = SPLIT_EVERY,
) -> dict[str, qfcal.Histogram]:
    """Histogram every tensor over a partitioned calibration set on a Dask cluster.

    Each partition becomes one task: on a worker, ``activations(partition)`` yields the shard's
    batches as ``{tensor name: array}`` and :func:`histogram_tensors` turns them into bytes;
    merge tasks on the workers combine the bytes ``split_every`` at a time; one
    ``{tensor: bytes}`` comes back. The histograms are bit-identical to one process running
    ``activations`` over the same partitions, whatever the number of workers or partitions,
    provided ``activations`` computes the same values wherever it runs.

    Args:
        activations: a function of one partition, run on the workers (pickled with cloudpickle:
            a function of an importable module, a ``functools.partial``, or one defined in a
            script or notebook).
        partitions: what each worker needs to find its shard: file names, index ranges, seeds,
            arrays (sent to the workers through the scheduler, so keep them small, or pass
            ``client.scatter`` futures).
        client: a ``distributed.Client``, a scheduler address, ``"local"`` or ``"local:N"``
            (see :func:`dask_client`), or None for Dask's current scheduler (the last
            ``Client`` made in this process, else Dask's local threads).
        bins: bins of every histogram.
        split_every: how many shard results one merge task reads.

    Returns:
        ``{tensor name: qfcal.Histogram}``, tensors in the order they first appear.

    Raises:
        ValueError: no partition, bad `bins` or `split_every`, a shard without batches.
        TypeError: `partitions` is not an iterable, a batch is not a mapping.
        ImportError: Dask is not installed.
    """
    check_bins(bins)
    if not callable(activations):
        raise TypeError(
            f"activations must be a function of one partition, got {type(activations).__name__}"
        )
    work = functools.partial(_activation_shard, activations, int(bins))
    return map_merge(work, partitions, client, split_every=split_every)


def client_threads(client: Any) -> int:
    """Total worker threads of a ``distributed.Client`` (at least 1)."""
    return max(1, int(sum(client.nthreads().values())))
