"""Argument checks the modules above the core share, with the core's own limits and messages:
a bad argument is reported before any model runs or any data is read."""

from __future__ import annotations

import numpy as np

from qfcal._core import MAX_BINS, MIN_BINS


def check_bins(bins: object, name: str = "bins") -> int:
    """`bins` as an int if a :class:`qfcal.Histogram` accepts it.

    Raises:
        TypeError: not an int (a bool is not one).
        ValueError: outside ``MIN_BINS..=MAX_BINS``, with the Histogram's own message.
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {bins!r}")
    if not MIN_BINS <= bins <= MAX_BINS:
        raise ValueError(f"{name} must be in {MIN_BINS}..={MAX_BINS}, got {bins}")
    return int(bins)


# The adapters' weight_method values and the loss-aware collectors' targets.
WEIGHT_METHODS = ("minmax", "optimal")
LOSS_TARGETS = ("fisher", "projection")


# What equalize=True means: the objective of qfcal.equalize.OBJECTIVES it chooses. "noise":
# on the pretrained models of BENCHMARKS.md it closed more of the per-tensor gap than "cle" in
# 4 of 6 cases, and at 6 bits on MobileNetV2 beat per-channel weights (0.93 vs 1.07 sum|dprob|).
EQUALIZE_DEFAULT = "noise"


def equalize_objective(equalize: object) -> str | None:
    """The equalization objective `equalize` asks for (``equalize=True``: the default one;
    ``"cle"``/``"noise"``: that one; False: none).

    Raises:
        TypeError: not a bool or a str.
        ValueError: a str that is not an objective.
    """
    from qfcal.equalize import OBJECTIVES

    if isinstance(equalize, bool):
        return EQUALIZE_DEFAULT if equalize else None
    if not isinstance(equalize, str):
        raise TypeError(
            f"equalize must be True, False or one of {', '.join(OBJECTIVES)}, got {equalize!r}"
        )
    check_choice(equalize, "equalize", OBJECTIVES)
    return equalize


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    """ValueError naming the argument, its choices and the value, unless `value` is one."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_flags(**flags: object) -> None:
    """TypeError naming the first argument that is not True or False, and its value."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
