"""IDX files (MNIST's format: a magic number, the dimensions, then unsigned bytes) and the
in-memory :class:`Dataset` they load into."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from qfcal.pipeline.data.base import check_split, subset_indices

if TYPE_CHECKING:
    import tensorflow as tf

FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


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
        return self.y_train if check_split(split) == "train" else self.y_test

    def images(self, split: str, indices: npt.ArrayLike | None = None) -> npt.NDArray[np.uint8]:
        """uint8 ``(n, height, width, channels)`` images of `split` at `indices` (all if None)."""
        x = self.x_train if check_split(split) == "train" else self.x_test
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
        i = subset_indices(self.y_train, train, np.random.default_rng([seed, 0]), "train")
        j = subset_indices(self.y_test, test, np.random.default_rng([seed, 1]), "test")
        return replace(
            self, x_train=self.x_train[i], y_train=self.y_train[i],
            x_test=self.x_test[j], y_test=self.y_test[j],
        )  # fmt: skip


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
