"""PyTorch quantization observer whose ranges come from qfcal's histogram and search.

Eager mode (``model`` with QuantStub/DeQuantStub, in eval mode)::

    model.qconfig = qfcal.torch.qconfig("x86")
    prepared = torch.ao.quantization.prepare(model)
    for x in calibration_batches:
        prepared(x)
    quantized = torch.ao.quantization.convert(prepared)

:class:`QfcalObserver` is a ``torch.ao.quantization`` observer (eager mode, FX graph mode and,
on torch up to 2.9, ``torch.ao``'s own PT2E, which is not tested here). It histograms every
tensor it sees with :class:`qfcal.Histogram` and picks the scale and zero point with
:func:`qfcal.search` (``method="optimal"`` by default) over exactly the levels
``quant_min..quant_max`` give: a ``reduce_range`` or 4-bit observer searches 128 or 16 levels,
where torch's ``HistogramObserver`` searches as if there were 256.

The range method that keeps the model's output closest to float is chosen by the model:
:func:`calibrate_auto` runs the calibration batches through the prepared model, scores every
candidate method (optimal, minmax, entropy, percentiles) end to end on batches its ranges were
not searched on, and leaves the winner in the observers (qfcal's recommended, model-level
default, as ``method="auto"`` is in :mod:`qfcal.tflite`, :mod:`qfcal.onnxruntime` and the
pipeline)::

    prepared = prepare_pt2e(exported, quantizer_with_qfcal_observers)
    selection = qfcal.torch.calibrate_auto(prepared, calibration_batches)
    quantized = convert_pt2e(prepared)

An observer alone sees one tensor, so its own default stays ``optimal``: the exact histogram
optimum of that tensor (what plain ``prepared(x)`` calibration then gives).

PT2E moved out of torch (2.10+) into the separate ``torchao`` package, whose PT2E flow only
accepts observers derived from its own copy of the base classes: :func:`pt2e_observer` returns
the class that fits the installed flow (see :func:`pt2e_flow`).

This module imports torch when it is imported; ``import qfcal`` does not.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import warnings
from typing import Any, cast

import numpy as np
import torch  # the real torch: absolute import, not this module
from torch.ao.quantization.observer import UniformQuantizationObserverBase
from torch.ao.quantization.qconfig import QConfig

import qfcal
from qfcal._checks import LOSS_TARGETS, check_bins, check_choice
from qfcal._progress import Progress
from qfcal.selection import (
    DEFAULT_FOLDS,
    Selection,
    check_metric,
    check_search_candidates,
    merge_parts,
    metric_name,
    output_error,
    select,
)

__all__ = [
    "QfcalObserver",
    "QfcalWeightObserver",
    "pt2e_flow",
    "pt2e_observer",
    "calibrate_auto",
    "calibrate_loss_aware",
    "loss_aware_histograms",
    "pt2e_weight_observer",
    "qconfig",
    "observer_histograms",
    "apply_precision",
]

# dtype -> the integer range its quantized values can hold (what quant_min/quant_max must fit).
_DTYPE_RANGES: dict[torch.dtype, tuple[int, int]] = {
    torch.quint8: (0, 255),
    torch.uint8: (0, 255),
    torch.qint8: (-128, 127),
    torch.int8: (-128, 127),
    torch.quint4x2: (0, 15),
    torch.int16: (-(2**15), 2**15 - 1),
    torch.uint16: (0, 2**16 - 1),
}
_QSCHEMES = (torch.per_tensor_affine, torch.per_tensor_symmetric)
# Backend -> reduce_range of torch's own default activation observer (get_default_qconfig).
_BACKEND_REDUCE_RANGE = {"x86": True, "fbgemm": True, "qnnpack": False, "onednn": False}
_STATE_VERSION = 2  # 2: the loss-aware weights travel too


def _torch_symmetric_zero_point(
    dtype: torch.dtype, quant_min: int, quant_max: int, customized: bool
) -> int:
    """The zero point torch's observers use for ``per_tensor_symmetric``
    (``UniformQuantizationObserverBase._calculate_qparams``)."""
    if dtype in (torch.quint8, torch.uint8):
        return (quant_min + quant_max) // 2 if customized else 128
    if dtype == torch.uint16:
        return 2**15
    return 0


class _QfcalObserverImpl(torch.nn.Module):
    """The observer's logic, shared by the ``torch.ao`` and the ``torchao`` PT2E class (each
    puts its own ``UniformQuantizationObserverBase`` after this class)."""

    min_val: torch.Tensor
    max_val: torch.Tensor
    eps: torch.Tensor
    dtype: torch.dtype
    qscheme: torch.qscheme
    quant_min: int
    quant_max: int
    has_customized_qrange: bool

    def __init__(
        self,
        bins: int = qfcal.DEFAULT_BINS,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        eps: float = torch.finfo(torch.float32).eps,
        is_dynamic: bool = False,
        *,
        method: str = "optimal",
        gamma: float = 1.0,
        percentile: float = 99.99,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        if qscheme not in _QSCHEMES:
            raise ValueError(
                f"qscheme must be torch.per_tensor_affine or torch.per_tensor_symmetric, got "
                f"{qscheme}: {name} is per-tensor (per-channel weights: torch's "
                "PerChannelMinMaxObserver)"
            )
        if dtype not in _DTYPE_RANGES:
            raise ValueError(
                f"dtype must be one of {', '.join(map(str, _DTYPE_RANGES))}, got {dtype}"
            )
        if is_dynamic:
            raise ValueError(
                f"is_dynamic must be False, got {is_dynamic!r}: {name} calibrates static ranges"
            )
        if (quant_min is None) != (quant_max is None):
            raise ValueError(
                "quant_min and quant_max must be given together, got "
                f"quant_min={quant_min!r}, quant_max={quant_max!r}"
            )
        if quant_min is not None and quant_max is not None:
            lo, hi = _DTYPE_RANGES[dtype]
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (quant_min, quant_max))
            if not (ok and lo <= quant_min <= 0 <= quant_max <= hi and quant_min < quant_max):
                raise ValueError(
                    f"quant_min and quant_max must be integers with {lo} <= quant_min <= 0 <= "
                    f"quant_max <= {hi} (dtype {dtype}) and quant_min < quant_max, got "
                    f"quant_min={quant_min!r}, quant_max={quant_max!r}"
                )
        hist = qfcal.Histogram(check_bins(bins))
        qfcal.check_search_options(method=method, gamma=gamma, percentile=percentile)
        cast(Any, super()).__init__(
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            factory_kwargs=factory_kwargs,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        self.bins = bins
        self.method = method
        self.gamma = float(gamma)
        self.percentile = float(percentile)
        self._hist = hist
        self._negate = False
        # the loss-aware weights of the values seen (calibrate_loss_aware), or None
        self.loss_weights: qfcal.WeightedHistogram | None = None
        if self.qscheme == torch.per_tensor_symmetric:
            qmin, qmax = self.quant_min, self.quant_max
            zp = _torch_symmetric_zero_point(dtype, qmin, qmax, self.has_customized_qrange)
            middle = (qmin + qmax + 1) // 2  # where qfcal's symmetric search puts it
            if zp != middle:
                # Torch's zero point for unsigned custom ranges, (qmin + qmax) // 2, is one below
                # qfcal's: the grid is qfcal's mirrored, so the search runs on -x and maps back.
                if qmin + qmax - zp != middle:
                    raise ValueError(
                        f"qscheme=torch.per_tensor_symmetric with dtype {dtype} and quant range "
                        f"quant_min={qmin}, quant_max={qmax} (reduce_range={reduce_range}): "
                        f"torch fixes the zero point at {zp}, which is not the middle of the "
                        "range qfcal's symmetric search needs; give a range centered on the "
                        "zero point as quant_min/quant_max (e.g. -8..7 for qint8, 0..127 for "
                        "quint8) or use torch.per_tensor_affine"
                    )
                self._negate = True
        self.register_buffer("min_val", torch.tensor(float("inf"), **_factory(factory_kwargs)))
        self.register_buffer("max_val", torch.tensor(float("-inf"), **_factory(factory_kwargs)))

    # -- observing -------------------------------------------------------------------------

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        """Histogram ``x_orig`` (an empty tensor is ignored) and return it unchanged."""
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach()
        if x.dtype not in (torch.float16, torch.float32, torch.float64):
            x = x.to(torch.float32)
        values = x.cpu().resolve_conj().resolve_neg().numpy()
        self._hist.update(np.negative(values) if self._negate else values)
        self._sync_min_max()
        return x_orig

    def _sync_min_max(self) -> None:
        """min_val/max_val (torch's bookkeeping) from the histogram's exact extremes."""
        lo, hi = self._hist.min, self._hist.max
        if lo is not None and hi is not None:
            if self._negate:
                lo, hi = -hi, -lo
            self.min_val.fill_(lo)
            self.max_val.fill_(hi)
        else:
            self.min_val.fill_(float("inf"))
            self.max_val.fill_(float("-inf"))

    def _load(self, hist: qfcal.Histogram, options: dict[str, Any]) -> None:
        """Take `hist` (of this observer's values, negated where :attr:`negated`) and the
        search `options` (method, gamma, percentile): :func:`calibrate_auto`'s trials."""
        self._hist = hist
        self._sync_min_max()
        self.method = options["method"]
        self.gamma = float(options.get("gamma", 1.0))
        self.percentile = float(options.get("percentile", 99.99))

    @property
    def histogram(self) -> qfcal.Histogram:
        """The histogram the search runs on: of the values seen, or of their negatives for the
        mirrored grids (``per_tensor_symmetric`` with an unsigned custom range, see
        :class:`QfcalObserver`)."""
        return self._hist

    @property
    def negated(self) -> bool:
        """Whether :attr:`histogram` holds the negated values (mirrored grids)."""
        return self._negate

    def search(self) -> qfcal.SearchResult:
        """:func:`qfcal.search` on the histogram (on :attr:`loss_weights`, the loss-aware
        weighted histogram, where :func:`calibrate_loss_aware` set one) with this observer's
        grid and options. For a
        mirrored grid (:attr:`negated`) the result describes ``-x``: its zero point maps to
        ``quant_min + quant_max - zero_point`` and its range to ``[-max, -min]``.

        Raises:
            qfcal.EmptyHistogramError: no finite value has been seen.
        """
        weighted = self.loss_weights is not None and not self._negate
        return qfcal.search(
            self.loss_weights if weighted else self._hist,  # type: ignore[arg-type]
            qmin=self.quant_min,
            qmax=self.quant_max,
            symmetric=self.qscheme == torch.per_tensor_symmetric,
            method=self.method,
            gamma=self.gamma,
            percentile=self.percentile,
        )

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)``, tensors of shape ``(1,)`` (float32; int32 for affine and
        int64 for symmetric schemes, as torch's observers give).

        Before any finite value was seen this warns and returns scale 1 and zero point 0, as
        torch's ``HistogramObserver`` does (so a model with an unused branch still converts).
        Magnitudes qfcal does not search (``max|x|`` below ``2**-110`` or above ``2**100``) warn
        and fall back to torch's min/max qparams.
        """
        device = self.eps.device
        if self._hist.finite == 0:
            warnings.warn(
                f"{type(self).__name__} has seen no finite value ({self._hist.total} values "
                "seen): returning scale 1.0 and zero point 0, as torch's observers do; run "
                "calibration data through the model before convert",
                UserWarning,
                stacklevel=2,
            )
            return torch.tensor([1.0], device=device), torch.tensor([0], device=device)
        skipped = self._hist.total - self._hist.finite
        if skipped:
            warnings.warn(
                f"{type(self).__name__}: {skipped} non-finite values (NaN/Inf) ignored",
                UserWarning,
                stacklevel=2,
            )
        try:
            r = self.search()
        except ValueError as e:  # options were checked at construction: a magnitude qfcal refuses
            warnings.warn(
                f"{type(self).__name__}: {e}; falling back to torch's min/max qparams",
                UserWarning,
                stacklevel=2,
            )
            base: Any = self  # the UniformQuantizationObserverBase that follows this class
            return cast(
                tuple[torch.Tensor, torch.Tensor],
                base._calculate_qparams(self.min_val, self.max_val),
            )
        zp = r.zero_point
        if self._negate:
            zp = self.quant_min + self.quant_max - zp
        symmetric = self.qscheme == torch.per_tensor_symmetric
        return (
            torch.tensor([r.scale], dtype=torch.float32, device=device),
            torch.tensor([zp], dtype=torch.int64 if symmetric else torch.int32, device=device),
        )

    def reset_min_max_vals(self) -> None:
        """Forget every value seen (a fresh histogram, no loss weights)."""
        self._hist = qfcal.Histogram(self.bins)
        self.loss_weights = None
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))

    # -- state dict: the histogram's bytes travel as the module's extra state -------------------

    def get_extra_state(self) -> dict[str, Any]:
        data = self._hist.to_bytes()
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "histogram": torch.frombuffer(bytearray(data), dtype=torch.uint8),
            "negated": self._negate,
        }
        if self.loss_weights is not None:
            weighted = self.loss_weights.to_bytes()
            state["loss_weights"] = torch.frombuffer(bytearray(weighted), dtype=torch.uint8)
        return state

    def set_extra_state(self, state: Any) -> None:
        name = type(self).__name__
        if not isinstance(state, dict) or "histogram" not in state:
            raise ValueError(f"{name}: the saved extra state is not a qfcal observer's")
        if state.get("version", 0) > _STATE_VERSION:
            raise ValueError(
                f"{name}: the state was saved by a newer qfcal (state version "
                f"{state.get('version')}, this one reads {_STATE_VERSION})"
            )
        negated = bool(state.get("negated", False))
        if negated != self._negate:
            raise ValueError(
                f"{name}: the state holds a histogram of {'negated' if negated else 'plain'} "
                "values, for a different grid: load it into an observer with the same dtype, "
                "qscheme and quant_min/quant_max"
            )
        tensor = cast(torch.Tensor, state["histogram"])
        hist = qfcal.Histogram.from_bytes(tensor.cpu().numpy().astype(np.uint8).tobytes())
        weights = None
        if state.get("loss_weights") is not None:
            raw = cast(torch.Tensor, state["loss_weights"]).cpu().numpy().astype(np.uint8)
            weights = qfcal.WeightedHistogram.from_bytes(raw.tobytes())
            if weights.counts != hist:
                raise ValueError(
                    f"{name}: the saved loss-aware weights are not of the saved histogram's "
                    "values (a state dict put together from two observers?)"
                )
        self._hist = hist
        self.loss_weights = weights
        self.bins = hist.bins

    def extra_repr(self) -> str:
        return (
            f"method={self.method!r}, gamma={self.gamma}, bins={self.bins}, "
            f"quant_min={self.quant_min}, quant_max={self.quant_max}, "
            f"min_val={float(self.min_val)}, max_val={float(self.max_val)}"
        )


def _factory(factory_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    return cast(dict[str, Any], torch.nn.factory_kwargs(factory_kwargs))  # type: ignore[no-untyped-call]


# (mypy: torch's base declares calculate_qparams(**kwargs); ours takes none, as torch's observers)
class QfcalObserver(_QfcalObserverImpl, UniformQuantizationObserverBase):  # type: ignore[misc]
    """Per-tensor observer: exact streaming histogram, ranges by :func:`qfcal.search`.

    Args:
        bins: histogram bins (16..1048576; qfcal's default 4096). qfcal's bins never resample:
            the histogram is exact for any batching.
        dtype, qscheme, reduce_range, quant_min, quant_max, eps, factory_kwargs: as torch's
            observers. The search covers exactly ``quant_min..quant_max`` (after
            ``reduce_range``). ``qscheme`` is ``torch.per_tensor_affine`` or
            ``torch.per_tensor_symmetric``; the symmetric zero point is torch's (0 for signed
            dtypes, 128 for quint8/uint8, ``(quant_min + quant_max) // 2`` for unsigned custom
            ranges: the grid qfcal's symmetric search mirrors, so such an observer histograms
            ``-x``). ``eps`` is accepted for compatibility and not used (qfcal's scales are
            positive float32 values).
        method, gamma, percentile: passed to :func:`qfcal.search` (``optimal``, ``greedy``,
            ``tf_enhanced``, ``entropy``, ``percentile``, ``minmax``).

    ``calculate_qparams`` before any finite value warns and returns scale 1, zero point 0 (as
    torch's observers do). The histogram is saved in the state dict (the module's extra
    state, a uint8 tensor of :meth:`qfcal.Histogram.to_bytes`), so a calibrated model can be
    saved, reloaded and converted. :meth:`search` gives the whole :class:`qfcal.SearchResult`
    (loss, SQNR).

    Raises:
        ValueError: a per-channel or unknown ``qscheme``, an unsupported ``dtype``,
            ``is_dynamic=True``, a bad quant range, a symmetric range torch centers elsewhere,
            or a bad ``bins``/``method``/``gamma``/``percentile`` (each naming the value).
    """


def qconfig(
    backend: str = "x86",
    *,
    method: str = "optimal",
    gamma: float = 1.0,
    percentile: float = 99.99,
    bins: int = qfcal.DEFAULT_BINS,
    reduce_range: bool | None = None,
    weight: Any = None,
) -> QConfig:
    """An eager-mode ``QConfig``: :class:`QfcalObserver` on activations (quint8, per-tensor
    affine; ``reduce_range`` as torch's default qconfig for ``backend``: True for
    ``x86``/``fbgemm``, False for ``qnnpack``/``onednn``, and given to the observer as
    ``quant_min=0, quant_max=127``, the same 128 levels) and torch's default weight observer for
    the backend (per-channel symmetric int8 min/max; per-tensor for ``qnnpack``) unless
    ``weight`` gives another observer constructor. ``method``, ``gamma``, ``percentile`` and
    ``bins`` go to the observer.

    Raises:
        ValueError: an unknown ``backend``, or a bad observer option (checked here, not at
            ``prepare``).
    """
    from torch.ao.quantization.observer import (
        default_per_channel_weight_observer,
        default_weight_observer,
    )

    if backend not in _BACKEND_REDUCE_RANGE:
        raise ValueError(
            f"backend must be one of {', '.join(_BACKEND_REDUCE_RANGE)}, got {backend!r}"
        )
    if reduce_range is None:
        reduce_range = _BACKEND_REDUCE_RANGE[backend]
    options: dict[str, Any] = {
        # reduce_range's 128 levels, given as torch asks (reduce_range=True warns it is deprecated)
        "quant_min": 0,
        "quant_max": 127 if reduce_range else 255,
        "method": method,
        "gamma": gamma,
        "percentile": percentile,
        "bins": bins,
    }
    QfcalObserver(**options)  # fail now on bad options, not inside prepare()
    if weight is None:
        weight = (
            default_weight_observer if backend == "qnnpack" else default_per_channel_weight_observer
        )
    activation = QfcalObserver.with_args(**options)
    return QConfig(activation=activation, weight=weight)  # type: ignore[no-untyped-call]


# -- PT2E ----------------------------------------------------------------------------------------


def pt2e_flow() -> str | None:
    """Which PT2E flow the installed packages offer: ``"torchao"`` (``torchao.quantization.pt2e``,
    where PT2E lives since torch 2.10), ``"torch.ao"`` (``torch.ao.quantization.quantize_pt2e``,
    torch up to 2.9), or None. torchao is preferred when both are there."""
    for flow, module in (
        ("torchao", "torchao.quantization.pt2e.quantize_pt2e"),
        ("torch.ao", "torch.ao.quantization.quantize_pt2e"),
    ):
        try:
            if importlib.util.find_spec(module) is not None:
                return flow
        except ImportError:  # a parent package is missing
            continue
    return None


_PT2E_CLASSES: dict[str, type[torch.nn.Module]] = {}


def pt2e_observer(flow: str | None = None) -> type[torch.nn.Module]:
    """The observer class for a PT2E quantizer's ``QuantizationSpec(observer_or_fake_quant_ctr=
    cls.with_args(method=...))``: :class:`QfcalObserver` for ``torch.ao``'s flow, and for
    torchao's (which only accepts observers built on its own base classes) the same observer
    built on ``torchao.quantization.pt2e.UniformQuantizationObserverBase``.

    Args:
        flow: ``"torchao"``, ``"torch.ao"`` or None for :func:`pt2e_flow`'s choice.

    Raises:
        ImportError: the flow is not installed (PT2E needs ``pip install torchao`` with torch
            2.10 or later).
        ValueError: an unknown ``flow``.
    """
    if flow is None:
        flow = pt2e_flow()
        if flow is None:
            raise ImportError(
                f"PT2E quantization is not available with torch {torch.__version__}: since "
                "torch 2.10 it lives in the torchao package (pip install torchao)"
            )
    if flow == "torch.ao":
        importlib.import_module("torch.ao.quantization.quantize_pt2e")
        return QfcalObserver
    if flow != "torchao":
        raise ValueError(f"flow must be 'torchao', 'torch.ao' or None, got {flow!r}")
    if flow not in _PT2E_CLASSES:
        try:
            pt2e = importlib.import_module("torchao.quantization.pt2e")
        except ImportError as e:
            raise ImportError(
                "torchao's PT2E flow is not installed (pip install torchao): " + str(e)
            ) from e
        base = pt2e.UniformQuantizationObserverBase

        class QfcalPT2EObserver(_QfcalObserverImpl, base):  # type: ignore[misc, valid-type]
            __doc__ = QfcalObserver.__doc__

        # importable as qfcal.torch.QfcalPT2EObserver (module __getattr__), so models pickle
        QfcalPT2EObserver.__qualname__ = "QfcalPT2EObserver"
        _PT2E_CLASSES[flow] = QfcalPT2EObserver
    return _PT2E_CLASSES[flow]


# -- weights -------------------------------------------------------------------------------------


class _QfcalWeightImpl:
    """Per-channel symmetric weight observer: torch's min/max bookkeeping, and scales from
    :func:`qfcal.search_weights` on the weight itself (the least squared error per channel, on
    exactly ``quant_min..quant_max`` with torch's symmetric zero point)."""

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        # a weight observer sees the same constant every call: keep a view of it, no copy
        self._qfcal_weight = x_orig.detach()
        return super().forward(x_orig)  # type: ignore[misc, no-any-return]

    def search(self) -> qfcal.WeightRanges:
        """The searched scales of the last weight seen (:class:`qfcal.WeightRanges`)."""
        w = getattr(self, "_qfcal_weight", None)
        if w is None:
            raise RuntimeError("the observer has seen no weight yet (run the model once)")
        return qfcal.search_weights(
            w.float().cpu().numpy(),
            axis=int(self.ch_axis),  # type: ignore[attr-defined]
            qmin=int(self.quant_min),  # type: ignore[attr-defined]
            qmax=int(self.quant_max),  # type: ignore[attr-defined]
        )

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        own = super().calculate_qparams()  # type: ignore[misc]
        if self.method == "minmax":  # type: ignore[attr-defined]
            return cast(tuple[torch.Tensor, torch.Tensor], own)
        if getattr(self, "_qfcal_weight", None) is None:
            warnings.warn(
                "QfcalWeightObserver has seen no weight (reloaded from a state dict?): torch's "
                "min/max scales are used",
                stacklevel=2,
            )
            return cast(tuple[torch.Tensor, torch.Tensor], own)
        r = self.search()
        scale = torch.from_numpy(np.where(r.scale > 0, r.scale, 1.0).astype(np.float32))
        zero = torch.full_like(own[1], r.zero_point)
        return scale.to(own[0].device), zero


_WEIGHT_METHODS = ("optimal", "minmax")


def _weight_check(obs: Any) -> None:
    if obs.qscheme != torch.per_channel_symmetric:
        raise ValueError(
            "QfcalWeightObserver takes qscheme=torch.per_channel_symmetric (per tensor, keep "
            f"torch's MinMaxObserver: see qfcal.search_weights), got {obs.qscheme}"
        )


def _weight_class(base: type) -> type:
    class Observer(_QfcalWeightImpl, base):  # type: ignore[misc]
        def __init__(self, *args: Any, method: str = "optimal", **kwargs: Any) -> None:
            kwargs.setdefault("qscheme", torch.per_channel_symmetric)
            kwargs.setdefault("dtype", torch.qint8)
            super().__init__(*args, **kwargs)
            _weight_check(self)
            check_choice(method, "method", _WEIGHT_METHODS)
            self.method = method

        def extra_repr(self) -> str:
            return f"{super().extra_repr()}, method={self.method!r}"

    return Observer


from torch.ao.quantization.observer import PerChannelMinMaxObserver as _TorchPerChannel  # noqa: E402

QfcalWeightObserver = _weight_class(_TorchPerChannel)
QfcalWeightObserver.__name__ = QfcalWeightObserver.__qualname__ = "QfcalWeightObserver"
QfcalWeightObserver.__doc__ = """Per-channel symmetric weight observer (``torch.ao``, eager and
FX modes; :func:`pt2e_weight_observer` for torchao's PT2E): torch's
``PerChannelMinMaxObserver`` whose ``calculate_qparams`` returns each channel's least
squared error scale from :func:`qfcal.search_weights`, on exactly ``quant_min..quant_max``
(torch's default int8 ``[-128, 127]``, or ``[-127, 127]`` where the backend wants it) with
torch's symmetric zero point, and never a wider range than half a step past the channel's
largest magnitude (``method="optimal"``, the default; ``method="minmax"`` gives torch's own
scales). Per tensor, keep torch's ``MinMaxObserver``: the least squared error
clips the channels with the largest weights, which costs the model more than it saves."""


def pt2e_weight_observer(flow: str | None = None) -> type[torch.nn.Module]:
    """:class:`QfcalWeightObserver` built on the installed PT2E flow's base classes (as
    :func:`pt2e_observer` for activations): for ``QuantizationSpec(qscheme=
    torch.per_channel_symmetric, observer_or_fake_quant_ctr=cls)``."""
    if flow is None:
        flow = pt2e_flow()
    if flow == "torch.ao":
        return cast(type[torch.nn.Module], QfcalWeightObserver)
    if flow != "torchao":
        raise ValueError(f"flow must be 'torchao', 'torch.ao' or None, got {flow!r}")
    key = "torchao-weight"
    if key not in _PT2E_CLASSES:
        pt2e = importlib.import_module("torchao.quantization.pt2e")
        cls = _weight_class(pt2e.PerChannelMinMaxObserver)
        cls.__name__ = cls.__qualname__ = "QfcalPT2EWeightObserver"
        cls.__doc__ = QfcalWeightObserver.__doc__
        _PT2E_CLASSES[key] = cls
    return _PT2E_CLASSES[key]


# -- loss-aware histograms -----------------------------------------------------------------------


def _set_training(model: torch.nn.Module, training: bool) -> None:
    """``model.train(training)``, where the model allows it: a PT2E-exported model refuses
    ``train()``/``eval()`` (it runs as it was exported, in inference semantics)."""
    try:
        model.train(training)
    except NotImplementedError:
        pass


def loss_aware_histograms(
    model: torch.nn.Module,
    batches: Any,
    *,
    modules: Any = None,
    target: str = "fisher",
    bins: int = qfcal.DEFAULT_BINS,
    seed: int = 0,
    floor: float = 0.0,
    progress: bool = False,
) -> dict[str, qfcal.WeightedHistogram]:
    """Each module output's :class:`qfcal.WeightedHistogram`: the values, weighted by the
    squared gradient of a loss with respect to each of them (one backward pass per batch), so
    that ``qfcal.search(hist)`` minimizes the error the model's output feels, not the plain
    squared error of the tensor.

    There are no labels: the loss compares the model with itself.
    - ``fisher`` (classifiers; the output is logits): the cross-entropy of the output with
      labels drawn from the model's own softmax. Its squared gradient is, in expectation, the
      diagonal of the Fisher information: the curvature of the KL divergence to the float
      output, which an error of the activation costs to second order (the KL's own gradient
      at the float model is zero).
    - ``projection`` (encoders, any output): ``sum(r * output)`` with ``r`` standard normal; its
      squared gradient is, in expectation, the squared sensitivity of the whole output (the
      Gauss-Newton diagonal of the output's squared error).

    Args:
        model: an ``nn.Module`` (run in eval mode; its parameters get no gradients).
        batches: an iterable of inputs (a tensor, or a tuple of tensors passed as arguments).
        modules: the modules whose outputs are histogrammed (name -> module, or names); by
            default every leaf module whose output is a floating tensor.
        target: ``fisher`` or ``projection`` (see above).
        bins: histogram bins. seed: the random labels' / projections' seed.
        floor: added to every weight, as a multiple of the batch's mean squared gradient of
            that tensor (0: pure squared gradients; larger blends in the plain histogram,
            whose range every value shapes).
        progress: a progress bar over the batches.

    Cost: one forward and one backward pass per batch (the backward computes no parameter
    gradients), about three forward passes; ``benchmarks/bench_loss_aware.py`` measures it
    against the forward-only histograms.

    Raises:
        ValueError: an unknown target or module name, a batch that produces no floating output,
            or no batch.
    """
    check_choice(target, "target", LOSS_TARGETS)
    bins = check_bins(bins)
    named = dict(model.named_modules())
    if modules is None:
        chosen = {n: m for n, m in named.items() if n and not list(m.children())}
    elif isinstance(modules, dict):
        chosen = dict(modules)
    else:
        unknown = [n for n in modules if n not in named]
        if unknown:
            raise ValueError(f"modules: model has no module {unknown[0]!r}")
        chosen = {n: named[n] for n in modules}
    hists: dict[str, qfcal.WeightedHistogram] = {}
    gen = torch.Generator().manual_seed(seed)

    def hook(name: str) -> Any:
        def on_output(_mod: Any, _inp: Any, out: Any) -> None:
            if not (isinstance(out, torch.Tensor) and out.is_floating_point()):
                return
            if not out.requires_grad:
                return  # not on the path to the output (nothing to weigh)
            values = out.detach()

            def on_grad(g: torch.Tensor) -> None:
                h = hists.setdefault(name, qfcal.WeightedHistogram(bins))
                # float32 (as the activations are) is read without a copy; squares below
                # 2**-96 count as 0 in the weighted histogram anyway
                w = g.detach().float().square()
                if floor:
                    w = w + floor * w.mean()
                h.update(values.float().cpu().numpy(), w.cpu().numpy())

            out.register_hook(on_grad)  # type: ignore[no-untyped-call]

        return on_output

    handles = [m.register_forward_hook(hook(n)) for n, m in chosen.items()]
    grads = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    seen = 0
    try:
        _set_training(model, False)
        for p in grads:
            p.requires_grad_(False)
        with Progress(None, "qfcal.torch: loss-aware histograms", unit="batches",
                      enabled=progress) as bar:  # fmt: skip
            for batch in batches:
                args = batch if isinstance(batch, tuple | list) else (batch,)
                args = tuple(
                    a.detach().requires_grad_(True)
                    if isinstance(a, torch.Tensor) and a.is_floating_point()
                    else a
                    for a in args
                )
                with torch.enable_grad():
                    y = model(*args)
                    if not (isinstance(y, torch.Tensor) and y.is_floating_point()):
                        raise ValueError(
                            f"batch {seen}: the model returned {type(y).__name__}, not a "
                            "floating tensor (wrap it so that it returns the logits or "
                            "embedding)"
                        )
                    if target == "fisher":
                        logits = y.reshape(-1, y.shape[-1])
                        probs = torch.softmax(logits.detach().double(), dim=-1)
                        labels = torch.multinomial(probs, 1, generator=gen).squeeze(1)
                        loss = torch.nn.functional.cross_entropy(
                            logits, labels.to(logits.device), reduction="sum"
                        )
                    else:
                        r = torch.randn(y.shape, generator=gen, dtype=y.dtype)
                        loss = (y * r.to(y.device)).sum()
                    loss.backward()  # type: ignore[no-untyped-call]
                seen += 1
                bar.update()
    finally:
        for h in handles:
            h.remove()
        for p, g in grads.items():
            p.requires_grad_(g)
        _set_training(model, was_training)
    if seen == 0:
        raise ValueError("batches yielded no batch")
    return hists


def calibrate_loss_aware(
    prepared: torch.nn.Module,
    batches: Any,
    *,
    target: str = "fisher",
    floor: float = 0.0,
    progress: bool = False,
) -> dict[str, qfcal.WeightedHistogram]:
    """Calibrate a prepared model (eager, FX or PT2E, with qfcal observers) with loss-aware
    weights: one forward and backward pass per batch (see :func:`loss_aware_histograms`); each
    qfcal observer counts the values as in plain calibration and gets, as its
    :attr:`~QfcalObserver.loss_weights`, the weighted histogram of the same values, so that
    ``convert`` uses ranges that minimize the error the model's output feels. Returns the
    weighted histograms by observer name. (Mirrored grids, see :class:`QfcalObserver`, keep the
    plain search.)

    Raises:
        ValueError: the model has no qfcal observer, and what :func:`loss_aware_histograms`
            raises.
    """
    observers = {n: m for n, m in prepared.named_modules() if isinstance(m, _QfcalObserverImpl)}
    if not observers:
        raise ValueError("prepared has no qfcal observer (prepare it with qfcal's observers)")
    bins = {o.bins for o in observers.values()}
    hists = loss_aware_histograms(
        prepared,
        batches,
        modules=observers,
        target=target,
        bins=bins.pop() if len(bins) == 1 else qfcal.DEFAULT_BINS,
        floor=floor,
        progress=progress,
    )
    for name, obs in observers.items():
        obs.loss_weights = hists.get(name)
    return hists


def _floats(out: Any) -> list[np.ndarray]:
    """The floating tensors of a model output (a tensor, or tuples, lists and dicts of them)
    as float64 arrays, in order."""
    if isinstance(out, torch.Tensor):
        return [out.detach().double().cpu().numpy()] if out.is_floating_point() else []
    if isinstance(out, dict):
        return [a for v in out.values() for a in _floats(v)]
    if isinstance(out, tuple | list):
        return [a for v in out for a in _floats(v)]
    return []


def _pt2e_convert() -> Any:
    flow = pt2e_flow()
    if flow is None:
        raise ImportError(
            f"PT2E quantization is not available with torch {torch.__version__} (pip install "
            "torchao); pass convert= for another flow (eager: torch.ao.quantization.convert)"
        )
    module = {
        "torchao": "torchao.quantization.pt2e.quantize_pt2e",
        "torch.ao": "torch.ao.quantization.quantize_pt2e",
    }[flow]
    return importlib.import_module(module).convert_pt2e


def calibrate_auto(
    prepared: torch.nn.Module,
    batches: Any,
    *,
    convert: Any = None,
    candidates: Any = None,
    folds: int = DEFAULT_FOLDS,
    z: float | None = None,
    metric: Any = "auto",
    progress: bool = False,
) -> Selection:
    """Calibrate a prepared model with qfcal observers and choose their range method by the
    converted model's outputs on calibration batches its ranges did not see.

    Each batch runs once through `prepared` (its observers are identities: the outputs are
    the float model's); every qfcal activation observer keeps each batch's histogram. Then,
    for each candidate method and each fold of consecutive batches, the observers get the
    other folds' merged histograms and the method, a copy of the model is converted and the
    fold's batches run through it; the error compares every floating output with the float
    one (`metric`; by default KL for class logits, pooled cosine for vector sequences, else the
    squared difference relative to the float outputs' squares). The least error wins; with
    ``z > 0`` the first candidate (``optimal``) stays unless another beats it on the same
    batches by `z` standard errors (``z=None``: 0 from 32 batches on, 2 below)
    (:func:`qfcal.selection.select`). At the end each observer holds its histogram of all the
    batches and the chosen method: ``convert`` it as usual.

    Args:
        prepared: a prepared model (PT2E, FX or eager) whose activation observers are qfcal's.
        batches: an iterable of inputs (a tensor, or a tuple of tensors passed as arguments),
            at least two; kept in memory.
        convert: the flow's convert (default PT2E's ``convert_pt2e``, of torchao or
            ``torch.ao`` as :func:`pt2e_flow` finds; eager mode:
            ``torch.ao.quantization.convert``); called on a deep copy.
        candidates: ``{label: {"method": ..., "gamma": ..., "percentile": ...}}``, default
            :data:`qfcal.selection.DEFAULT_CANDIDATES`.
        folds, z: see :func:`qfcal.selection.select`.
        metric: the output error, ``auto`` (default: ``kl`` when every output is a batch of
            class logits, ``pooled`` for sequences of vectors, else ``mse``), ``mse``, ``kl``
            (logits) or ``cosine`` (embeddings),
            or a callable ``metric(float outputs, quantized outputs, args)`` (args: the
            batch's argument tuple): :func:`qfcal.selection.output_error`.
        progress: a progress bar over the evaluations.

    Returns:
        The :class:`qfcal.selection.Selection` (every candidate's held-out output error).

    Cost: one forward pass per batch, then per candidate and fold a deep copy, a convert and
    the fold's batches through the converted model. Loss-aware weights (from
    :func:`calibrate_loss_aware`) are dropped: the trials use the plain histograms.

    Raises:
        ValueError: no qfcal observer, fewer than two batches, a batch whose output has no
            floating tensor, bad candidates (a method qfcal's search does not know) or folds.
    """
    observers = {n: m for n, m in prepared.named_modules() if isinstance(m, _QfcalObserverImpl)}
    if not observers:
        raise ValueError("prepared has no qfcal observer (prepare it with qfcal's observers)")
    cands = check_search_candidates(
        candidates,
        "an observer takes method, gamma and percentile (its grid is its quant_min/quant_max)",
    )
    check_metric(metric)
    conv = _pt2e_convert() if convert is None else convert
    if not callable(conv):
        raise TypeError(f"convert must be callable (a flow's convert), got {conv!r}")
    inputs = [b if isinstance(b, tuple | list) else (b,) for b in batches]
    if len(inputs) < 2:
        raise ValueError(f"calibrate_auto needs at least 2 calibration batches, got {len(inputs)}")
    parts: dict[str, list[qfcal.Histogram]] = {n: [] for n in observers}
    reference: list[list[np.ndarray]] = []
    with torch.no_grad():
        for i, args in enumerate(inputs):
            for o in observers.values():
                o.reset_min_max_vals()
            ref = _floats(prepared(*args))
            if not ref:
                raise ValueError(f"batch {i}: the model's output holds no floating tensor")
            reference.append(ref)
            for n, o in observers.items():
                parts[n].append(o.histogram)
    merged: dict[tuple[int, ...], dict[str, qfcal.Histogram]] = {}

    def evaluate(options: Any, test: list[int]) -> tuple[list[float], list[float]]:
        key = tuple(test)
        if key not in merged:
            merged[key] = merge_parts(parts, set(test))
        for n, o in observers.items():
            o._load(merged[key][n].copy(), options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # observers that saw nothing in these folds
            quantized = conv(copy.deepcopy(prepared))
        errs, norms = [], []
        with torch.no_grad():
            for i in test:
                try:
                    outs = _floats(quantized(*inputs[i]))
                    e, n = output_error(metric, reference[i], outs, inputs[i])
                except ValueError as err:
                    raise ValueError(f"batch {i}: {err}") from err
                errs.append(e)
                norms.append(n)
        return errs, norms

    own = {n: {"method": o.method, "gamma": o.gamma, "percentile": o.percentile}
           for n, o in observers.items()}  # fmt: skip
    try:
        sel = select(len(inputs), evaluate, candidates=cands, folds=folds, z=z, progress=progress)
    except BaseException:  # the observers keep all the batches and their own options
        full = merge_parts(parts)
        for n, o in observers.items():
            o._load(full[n], own[n])
        raise
    full = merge_parts(parts)
    for n, o in observers.items():
        o._load(full[n], sel.options)
    sel.metric = metric_name(metric, reference[0])
    return sel


# -- precision ------------------------------------------------------------------------------


def observer_histograms(
    prepared: torch.nn.Module,
) -> dict[str, qfcal.Histogram | qfcal.WeightedHistogram]:
    """Observer name -> the histogram of the values it saw, for every qfcal activation observer
    of a calibrated prepared model (PT2E, FX or eager): what :func:`qfcal.precision.plan`
    ranks. After :func:`calibrate_loss_aware`, an observer's loss-weighted histogram
    (:attr:`QfcalObserver.loss_weights`), so the plan weighs each tensor's noise by what it
    costs the loss.

    Raises:
        ValueError: `prepared` has no qfcal observer, or one whose grid is mirrored (its
            histogram holds ``-x``: ``per_tensor_symmetric`` with an unsigned custom range).
    """
    out: dict[str, qfcal.Histogram | qfcal.WeightedHistogram] = {}
    for name, m in prepared.named_modules():
        if isinstance(m, _QfcalObserverImpl):
            if m.negated:
                raise ValueError(
                    f"observer {name!r} searches a mirrored grid (per_tensor_symmetric with "
                    f"dtype {m.dtype}, quant_min={m.quant_min}, quant_max={m.quant_max}); "
                    "give it torch.per_tensor_affine to plan its precision"
                )
            out[name] = m.loss_weights if m.loss_weights is not None else m.histogram
    if not out:
        raise ValueError("prepared has no qfcal observer (prepare it with qfcal's observers)")
    return out


def apply_precision(prepared: torch.nn.Module, plan: Any) -> list[str]:
    """Give the observers a :class:`qfcal.precision.PrecisionPlan` puts above 8 bits their
    wider grid before ``convert_pt2e`` (or ``convert``): signed 16-bit (``torch.int16``,
    ``-2**15..2**15-1``, the dtype PT2E's quantize/dequantize ops take) for ``high_bits`` 16,
    or ``-2**(b-1)..2**(b-1)-1`` in int16 for 9..15 bits (``0..2**b-1`` for a tensor without
    negative values). The qscheme stays: with ``per_tensor_affine`` (PT2E's usual activation
    scheme) the search puts 0 at the lowest level of a non-negative tensor, as the plan does.
    PT2E writes the observer's dtype into its quantize/dequantize ops, so the converted
    model runs those tensors at the wider width (on the reference kernels: XNNPACK and x86
    Inductor lower only 8-bit activations, so such a model is for accuracy, not speed).

    Args:
        prepared: the calibrated prepared model whose observer names the plan was made from
            (:func:`observer_histograms`).
        plan: the plan; its :attr:`~qfcal.precision.PrecisionPlan.high` tensors are changed.

    Returns:
        The names of the observers changed.

    Raises:
        ValueError: a planned tensor names no qfcal observer of `prepared`, or a width above 16.
    """
    observers = {n: m for n, m in prepared.named_modules() if isinstance(m, _QfcalObserverImpl)}
    bits = int(plan.high_bits)
    if not 9 <= bits <= 16:
        raise ValueError(f"plan.high_bits must be in 9..16 for torch's int16, got {bits}")
    missing = [n for n in plan.high if n not in observers]
    if missing:
        raise ValueError(
            f"plan names {missing[0]!r}, which is not a qfcal observer of prepared "
            f"({len(observers)} observers; plan from observer_histograms(prepared))"
        )
    for name in plan.high:
        m = observers[name]
        h = m.histogram
        if bits < 16 and h.min is not None and h.min >= 0:
            lo, hi = 0, 2**bits - 1
        else:  # int16 holds no 0..65535: an affine search still puts 0 at the lowest level
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        m.dtype = torch.int16
        m.quant_min, m.quant_max = lo, hi
        m.has_customized_qrange = True
    return list(plan.high)


def __getattr__(name: str) -> Any:
    if name == "QfcalPT2EObserver":  # built on torchao's base classes, on first use
        return pt2e_observer("torchao")
    if name == "QfcalPT2EWeightObserver":
        return pt2e_weight_observer("torchao")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
