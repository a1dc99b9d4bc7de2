"""qfcal.selection: choosing a range method by held-out output error (the fold bookkeeping;
the ONNX Runtime end-to-end use is tested in test_onnxruntime.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from qfcal import selection


@given(st.integers(2, 200), st.data())
def test_folds_partition_the_batches_in_order(batches: int, data: st.DataObject) -> None:
    folds = data.draw(st.integers(2, batches))
    groups = selection.split_folds(batches, folds)
    assert len(groups) == folds
    assert [i for g in groups for i in g] == list(range(batches))
    sizes = [len(g) for g in groups]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def const(value: float) -> Any:
    """An evaluate giving every test batch the error `value` and norm 1."""
    return lambda options, test: ([value] * len(test), [1.0] * len(test))


def test_a_clear_winner_replaces_the_first_and_each_fold_is_left_out_once() -> None:
    seen: list[tuple[str, tuple[int, ...]]] = []
    # a made-up model: each method's error on batch i, norm 1; minmax clearly best
    cost = {"optimal": 3.0, "minmax": 2.0, "entropy": 5.0}

    def evaluate(options: Any, test: list[int]) -> tuple[list[float], list[float]]:
        seen.append((options["method"], tuple(test)))
        return [cost[options["method"]] + 0.25 * i for i in test], [1.0] * len(test)

    cands = {k: {"method": k} for k in cost}
    sel = selection.select(10, evaluate, candidates=cands, folds=3, progress=False)
    assert sel.chosen == "minmax" and sel.options == {"method": "minmax"}
    assert sel.errors == pytest.approx({k: v + 1.125 for k, v in cost.items()})
    assert sel.z["minmax"] == -math.inf and sel.z["entropy"] == math.inf
    assert sel.z["optimal"] == 0.0
    assert sel.folds == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    for method in cost:
        assert [t for m, t in seen if m == method] == [tuple(f) for f in sel.folds]
        assert sel.batch_errors[method] == pytest.approx(
            [cost[method] + 0.25 * i for i in range(10)]
        )
    table = sel.table()
    assert "minmax" in table.splitlines()[1] and "<- chosen" in table.splitlines()[1]


def test_noise_does_not_replace_the_first_candidate() -> None:
    # "minmax" is lower on average but its per-batch differences are mostly noise
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 1.0, 12)
    base = [5.0] * 12
    other = [5.0 - 0.1 + n for n in noise]

    def evaluate(options: Any, test: list[int]) -> tuple[list[float], list[float]]:
        errs = base if options["method"] == "optimal" else other
        return [errs[i] for i in test], [1.0] * len(test)

    cands = {"optimal": {"method": "optimal"}, "minmax": {"method": "minmax"}}
    sel = selection.select(12, evaluate, candidates=cands, z=2, progress=False)
    if sel.errors["minmax"] < sel.errors["optimal"]:
        assert -2.0 < sel.z["minmax"] < 0
    assert sel.chosen == "optimal"
    # z=0: the lowest error outright
    low = selection.select(12, evaluate, candidates=cands, z=0, progress=False)
    assert low.chosen == min(low.errors, key=lambda k: low.errors[k])
    # the default (z=None) on 12 batches, fewer than FREE_CHOICE_BATCHES: z=2
    default = selection.select(12, evaluate, candidates=cands, progress=False)
    assert default.threshold == 2.0 and default.chosen == "optimal"
    # the statistic is the paired one: mean difference over its standard error
    d = np.array(other) - np.array(base)
    expected = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    assert sel.z["minmax"] == pytest.approx(expected)


def test_errors_are_pooled_over_batches() -> None:
    # norms differ per batch: the pooled error weighs each batch by its norm
    def evaluate(options: Any, test: list[int]) -> tuple[list[float], list[float]]:
        return [1.0 * (i + 1) for i in test], [2.0 * (i + 1) for i in test]

    sel = selection.select(5, evaluate, candidates={"a": {"method": "optimal"}}, folds=2,
                           progress=False)  # fmt: skip
    assert sel.errors["a"] == pytest.approx(0.5)
    assert sel.batch_errors["a"] == pytest.approx([0.5] * 5)


def test_ties_go_to_the_earlier_candidate() -> None:
    sel = selection.select(
        4,
        const(1.0),
        candidates={"b": {"method": "minmax"}, "a": {"method": "optimal"}},
        z=0,
        progress=False,
    )
    assert sel.chosen == "b"


def test_default_candidates_and_folds() -> None:
    calls: list[str] = []

    def evaluate(options: Any, test: list[int]) -> tuple[list[float], list[float]]:
        calls.append(options["method"])
        return [1.0] * len(test), [1.0] * len(test)

    sel = selection.select(8, evaluate, progress=False)
    assert list(sel.candidates) == list(selection.DEFAULT_CANDIDATES)
    assert next(iter(sel.candidates)) == "optimal" and sel.chosen == "optimal"
    assert len(sel.folds) == selection.DEFAULT_FOLDS
    assert len(calls) == len(selection.DEFAULT_CANDIDATES) * selection.DEFAULT_FOLDS
    # fewer batches than folds: one batch per fold
    assert len(selection.select(3, const(1.0), progress=False).folds) == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batches": 1}, ValueError, "at least 2 calibration batches, got 1"),
        ({"batches": True}, ValueError, "at least 2 calibration batches, got True"),
        ({"folds": 1}, ValueError, r"folds must be an int in 2..=6 .*got 1"),
        ({"folds": 2.5}, ValueError, "folds must be an int"),
        ({"z": -1.0}, ValueError, "z must be None or a finite number >= 0, got -1.0"),
        ({"z": float("nan")}, ValueError, "z must be"),
        ({"candidates": [("optimal", {})]}, TypeError, "candidates must be a dict"),
        ({"candidates": {}}, ValueError, "at least one method"),
        ({"candidates": {"x": {"gamma": 2}}}, ValueError, r"candidates\['x'\] needs a 'method'"),
        ({"candidates": {"x": "optimal"}}, TypeError, "option dicts"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, Any], error: type, match: str) -> None:
    args: dict[str, Any] = {"batches": 6, "evaluate": const(1.0), "progress": False}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        selection.select(**args)


@pytest.mark.parametrize(
    "bad",
    [
        ([float("nan")] * 3, [1.0] * 3),
        ([1.0] * 3, [0.0] * 3),
        ([-1.0] * 3, [1.0] * 3),
        ([1.0] * 3, [float("inf")] * 3),
        ([1.0] * 2, [1.0] * 3),
        (1.0, 1.0),
    ],
)
def test_a_bad_evaluation_is_an_error_naming_the_candidate(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"evaluate\('optimal' options, fold 0..2\)"):
        selection.select(6, lambda o, t: bad, folds=2, progress=False)


def test_output_errors() -> None:
    rng = np.random.default_rng(1)
    f = rng.standard_normal((3, 5, 8))
    q = f + 0.1 * rng.standard_normal(f.shape)
    e, n = selection.output_error("mse", [f, f[0]], [q, q[0]])
    assert e == pytest.approx(((q - f) ** 2).sum() + ((q[0] - f[0]) ** 2).sum())
    assert n == pytest.approx((f**2).sum() + (f[0] ** 2).sum())
    # kl: per row of logits, softmax of the float against the quantized
    e, n = selection.output_error("kl", [f], [q])
    p = np.exp(f) / np.exp(f).sum(-1, keepdims=True)
    pq = np.exp(q) / np.exp(q).sum(-1, keepdims=True)
    assert n == 15 and e == pytest.approx((p * np.log(p / pq)).sum())
    assert selection.output_error("kl", [f], [f + 3.0]) == pytest.approx((0.0, 15.0), abs=1e-12)
    # cosine: scale does not matter, direction does; zero vectors
    e, n = selection.output_error("cosine", [f], [2.5 * f])
    assert n == 15 and e == pytest.approx(0.0, abs=1e-12)
    e, _ = selection.output_error("cosine", [f], [-f])
    assert e == pytest.approx(30.0)
    z = np.zeros((2, 4))
    assert selection.output_error("cosine", [z], [z]) == (0.0, 2.0)
    assert selection.output_error("cosine", [z], [z + 1]) == (2.0, 2.0)
    # a callable
    seen = []
    metric = lambda a, b, batch: (seen.append(batch) or 1, 2)  # noqa: E731
    assert selection.output_error(metric, [f], [q], {"x": 1}) == (1.0, 2.0)
    assert seen == [{"x": 1}]
    with pytest.raises(ValueError, match="metric must be one of auto, mse, kl, cosine, pooled"):
        selection.output_error("l1", [f], [q])
    with pytest.raises(ValueError, match="returned 1 floating outputs, the float model 2"):
        selection.output_error("mse", [f, f], [q])
    with pytest.raises(ValueError, match=r"output shapes differ"):
        selection.output_error("mse", [f], [q[0]])


def test_the_auto_metric_is_kl_for_logits_and_mse_otherwise() -> None:
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((4, 10))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    hidden = rng.standard_normal((4, 7, 16))
    assert selection.auto_metric([logits]) == "kl"
    assert selection.auto_metric([logits, logits[:, :3]]) == "kl"
    # sequences of vectors (hidden states): the cosine of each sample's mean vector
    assert selection.auto_metric([hidden]) == "pooled"
    qh = hidden + 0.1 * rng.standard_normal(hidden.shape)
    e, n = selection.output_error("pooled", [hidden], [qh])
    mf, mq = hidden.mean(axis=1), qh.mean(axis=1)
    cos = (mf * mq).sum(1) / (np.linalg.norm(mf, axis=1) * np.linalg.norm(mq, axis=1))
    assert n == 4 and e == pytest.approx((1 - cos).sum())
    assert selection.output_error("auto", [hidden], [qh]) == (e, n)
    q2 = logits + 0.05 * rng.standard_normal(logits.shape)  # two axes: pooled is cosine
    assert selection.output_error("pooled", [logits], [q2]) == selection.output_error(
        "cosine", [logits], [q2]
    )
    # probabilities, feature maps, one-column outputs, a mix: squared error
    assert selection.auto_metric([probs]) == "mse"
    assert selection.auto_metric([hidden[..., None]]) == "mse"
    assert selection.auto_metric([logits[:, :1]]) == "mse"
    assert selection.auto_metric([logits, hidden]) == "mse"
    assert selection.auto_metric([]) == "mse"
    assert selection.metric_name("auto", [logits]) == "kl"
    assert selection.metric_name("cosine", [logits]) == "cosine"

    def pooled(a: Any, b: Any, batch: Any) -> tuple[float, float]:
        return 0.0, 1.0

    assert selection.metric_name(pooled, [logits]) == "pooled"
    q = logits + 0.05 * rng.standard_normal(logits.shape)
    assert selection.output_error("auto", [logits], [q]) == selection.output_error(
        "kl", [logits], [q]
    )
    qp = probs + 0.01 * rng.standard_normal(probs.shape)
    assert selection.output_error("auto", [probs], [qp]) == selection.output_error(
        "mse", [probs], [qp]
    )


def test_auto_refuses_one_methods_options() -> None:
    selection.check_auto_options(1.0, 99.99)
    with pytest.raises(ValueError, match=r"gamma=3 / percentile=99.99 .*method='optimal'"):
        selection.check_auto_options(3, 99.99)
    with pytest.raises(ValueError, match=r"percentile=99.9 .*method='percentile'"):
        selection.check_auto_options(1.0, 99.9)
    with pytest.warns(UserWarning, match="and it rained: the ranges are method='optimal'"):
        selection.warn_fallback("it rained")


def test_the_default_z_depends_on_the_batches() -> None:
    assert selection.FREE_CHOICE_BATCHES == 32 and selection.SMALL_SET_Z == 2.0
    assert selection.resolve_z(None, 31) == 2.0
    assert selection.resolve_z(None, 32) == 0.0
    assert selection.resolve_z(1, 5) == 1.0
    # 40 batches where the second candidate is better by a hair on every batch but one: the
    # least error wins outright (z=0), as from 32 batches on
    errs = {"optimal": [1.0] * 40, "minmax": [0.999] * 39 + [1.02]}

    def evaluate(options: Any, test: list[int]) -> tuple[list[float], list[float]]:
        return [errs[options["method"]][i] for i in test], [1.0] * len(test)

    cands = {"optimal": {"method": "optimal"}, "minmax": {"method": "minmax"}}
    sel = selection.select(40, evaluate, candidates=cands, progress=False)
    assert sel.threshold == 0.0 and sel.chosen == "minmax" and sel.z["minmax"] > -2


def test_explicit_folds() -> None:
    seen: list[tuple[int, ...]] = []

    def evaluate(options: Any, test: list[int]) -> tuple[list[float], list[float]]:
        seen.append(tuple(test))
        return [1.0] * len(test), [1.0] * len(test)

    interleaved = [[0, 2, 4], [1, 3]]
    sel = selection.select(5, evaluate, candidates={"a": {"method": "optimal"}},
                           folds=interleaved, progress=False)  # fmt: skip
    assert sel.folds == interleaved and seen == [(0, 2, 4), (1, 3)]
    for bad in ([[0, 1, 2, 3, 4]], [[0, 1], [2, 3]], [[0, 1], [1, 2, 3, 4]], [[0, 1, 2, 3, 4], []]):
        with pytest.raises(ValueError, match="folds must partition the 5 batch indices"):
            selection.select(5, evaluate, folds=bad, progress=False)
    with pytest.raises(ValueError, match="folds must be lists of batch indices"):
        selection.select(5, evaluate, folds=["01", "234"], progress=False)
