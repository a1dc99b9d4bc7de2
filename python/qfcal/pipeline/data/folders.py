"""A folder of class subfolders of images (ImageNet's layout), decoded and resized as read."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from qfcal.pipeline.data.base import DatasetNotFoundError, check_split, subset_indices

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
HELD_OUT_NAMES = ("val", "validation", "test")


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
        return self.train_files if check_split(split) == "train" else self.test_files

    def labels(self, split: str) -> npt.NDArray[np.int64]:
        """The int64 labels of `split` (``"train"`` or ``"test"``), in order."""
        return self.y_train if check_split(split) == "train" else self.y_test

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
        i = subset_indices(self.y_train, train, np.random.default_rng([seed, 0]), "train")
        j = subset_indices(self.y_test, test, np.random.default_rng([seed, 1]), "test")
        out = copy.copy(self)
        out.train_files = [self.train_files[k] for k in i.tolist()]
        out.y_train = self.y_train[i]
        out.test_files = [self.test_files[k] for k in j.tolist()]
        out.y_test = self.y_test[j]
        return out
