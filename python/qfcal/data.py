"""Image datasets for the pipeline, read offline from IDX files.

Fashion-MNIST (default) and MNIST come as four IDX ``.gz`` files. They are looked for, in order:
in ``data_dir`` (the ``--data-dir`` option), in ``$QFCAL_DATA``, where Debian's package installs
them (``apt-get install dataset-fashion-mnist`` puts Fashion-MNIST in
``/usr/share/datasets/fashion-mnist``), in the Keras cache (``~/.keras/datasets/<name>``), and
only then, with ``download=True``, fetched by Keras. Nothing here needs TensorFlow.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

DATASETS: dict[str, dict[str, object]] = {
    "fashion_mnist": {
        "dirs": ["fashion-mnist", "fashion_mnist"],
        "system": ["/usr/share/datasets/fashion-mnist"],
        "classes": [
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ],
    },
    "mnist": {
        "dirs": ["mnist"],
        "system": ["/usr/share/datasets/mnist"],
        "classes": [str(d) for d in range(10)],
    },
}  # fmt: skip
FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are in none of the places looked at."""


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 ``(n, height, width, 1)``, labels as int64, and the class names."""

    name: str
    x_train: npt.NDArray[np.uint8]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.uint8]
    y_test: npt.NDArray[np.int64]
    classes: list[str]
    source: str


def read_idx(path: str | os.PathLike[str]) -> npt.NDArray[np.uint8]:
    """An IDX file (gzipped or not) of unsigned bytes as an array of its shape.

    Raises:
        ValueError: the file is not an IDX file of unsigned bytes, or is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{path} holds IDX type 0x{raw[2]:02x}; only unsigned bytes (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated (no room for its {ndim} dimensions)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != size:
        raise ValueError(
            f"{path} is truncated or padded: shape {shape} needs {size} bytes, "
            f"it holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(name: str, base: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in FILES.items():
        for candidate in (base / f"{stem}.gz", base / stem):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def candidate_dirs(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders looked at for `name`, in order."""
    spec = DATASETS[name]
    dirs: list[Path] = []
    roots = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get("QFCAL_DATA"):
        roots.append(Path(os.environ["QFCAL_DATA"]))
    for root in roots:
        dirs.append(root)
        dirs.extend(root / d for d in spec["dirs"])  # type: ignore[attr-defined]
    dirs.extend(Path(d) for d in spec["system"])  # type: ignore[attr-defined]
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    dirs.extend(keras_home / "datasets" / d for d in spec["dirs"])  # type: ignore[attr-defined]
    return dirs


def load(
    name: str = "fashion_mnist",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
) -> Dataset:
    """Load `name` (``fashion_mnist`` or ``mnist``) from the first folder that has its files.

    Raises:
        ValueError: unknown dataset name.
        DatasetNotFoundError: no folder has the files (and ``download`` is off or failed); the
            message lists where it looked and how to get the data.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    looked = candidate_dirs(name, data_dir)
    for base in looked:
        files = _find(name, base)
        if files is not None:
            return _read(name, files, str(base))
    if download:
        return _download(name)
    where = "\n  ".join(str(d) for d in looked)
    hint = (
        "install Debian's package (apt-get install dataset-fashion-mnist), "
        if name == "fashion_mnist"
        else ""
    )
    raise DatasetNotFoundError(
        f"dataset {name!r} not found: none of these folders holds its four IDX files "
        f"({', '.join(s + '.gz' for s in FILES.values())}):\n  {where}\n"
        f"To get it: {hint}put the files in a folder and pass --data-dir or set QFCAL_DATA, "
        "or allow a download (--download) on a machine with internet access."
    )


def _read(name: str, files: dict[str, Path], source: str) -> Dataset:
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{name} {split} files disagree: images {x.shape}, labels {y.shape} in {source}"
            )
    classes = list(DATASETS[name]["classes"])  # type: ignore[call-overload]
    return Dataset(
        name=name,
        x_train=arrays["x_train"][..., None],
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"][..., None],
        y_test=arrays["y_test"].astype(np.int64),
        classes=classes,
        source=source,
    )


def _download(name: str) -> Dataset:  # pragma: no cover - needs the internet
    import keras

    loader = {"fashion_mnist": keras.datasets.fashion_mnist, "mnist": keras.datasets.mnist}[name]
    (xt, yt), (xv, yv) = loader.load_data()
    classes = list(DATASETS[name]["classes"])  # type: ignore[call-overload]
    return Dataset(
        name, xt[..., None], yt.astype(np.int64), xv[..., None], yv.astype(np.int64), classes,
        "keras download",
    )  # fmt: skip


def calibration_indices(
    labels: npt.ArrayLike, per_class: int = 1, seed: int = 0
) -> npt.NDArray[np.int64]:
    """Indices of `per_class` examples of every class (the seed's calibration set: one image per
    class), drawn with a fixed seed, in class order.

    Raises:
        ValueError: ``per_class`` < 1, or a class has fewer examples than asked for.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} examples, fewer than per_class={per_class}")
        out.append(np.sort(rng.choice(idx, per_class, replace=False)))
    return np.concatenate(out).astype(np.int64)
