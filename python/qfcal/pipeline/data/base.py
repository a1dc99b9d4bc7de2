"""What both kinds of dataset share: the split names, the error for missing data, and the
seeded subsets that keep every class."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SPLITS = ("train", "test")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are in none of the places looked at."""


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def subset_indices(
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
