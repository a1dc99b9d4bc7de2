"""qfcal's ranges in the files deploy toolchains read (numpy not even needed).

A source of ranges is a run folder (its ``ranges.json``), a :class:`qfcal.tflite.QuantizedModel`,
a :class:`qfcal.onnxruntime.Calibration`, a qfcal ranges file, or any ``{tensor name:
SearchResult}``; :func:`ranges_of` reads each. The formats (:data:`FORMATS`):

- ``qfcal``: qfcal's own versioned JSON (:func:`to_qfcal`, :func:`read_qfcal`): every field of
  each :class:`qfcal.SearchResult`, read back into equal results.
- ``aimet``: the AIMET / Qualcomm QNN encodings JSON (:func:`to_aimet`): per tensor a list of
  ``{"bitwidth", "dtype", "is_symmetric", "max", "min", "offset", "scale"}`` under
  ``activation_encodings`` (``"version": "0.6.1"``), which AIMET's ``load_encodings`` and
  Qualcomm's converters (``--quantization_overrides``) take. AIMET's grid is unsigned: a value
  is ``(q + offset) * scale`` with ``q`` in ``[0, 2^bits - 1]``, so ``offset = qmin -
  zero_point`` and ``min = offset * scale``.
- ``tensorrt``: TensorRT's calibration cache (:func:`to_tensorrt`), the text
  ``IInt8Calibrator.readCalibrationCache`` returns: a header line, then ``name: hex`` with the
  big-endian bits of each tensor's float32 scale. TensorRT's int8 is symmetric (a value's
  dynamic range is ``127 * scale``): asymmetric ranges are refused unless ``widen=True``.
- ``ort``: ONNX Runtime's ``TensorQuantOverrides`` (:func:`to_ort`): ``{tensor: [{"scale",
  "zero_point", "quant_type"}]}``, what ``quantize_static(..., extra_options={
  "TensorQuantOverrides": ...})`` takes (with ``quant_type`` a ``QuantType``; in the JSON file
  its name, which :func:`read_ort` turns back).

Scales are float32 values throughout, so every format gives each tensor the same scale bit for
bit (and AIMET's offset and ONNX Runtime's zero point the same grid).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import qfcal

__all__ = [
    "FORMATS",
    "TENSORRT_HEADER",
    "ranges_of",
    "read",
    "read_aimet",
    "read_ort",
    "read_qfcal",
    "read_tensorrt",
    "result_fields",
    "to_aimet",
    "to_ort",
    "to_qfcal",
    "to_tensorrt",
    "write",
]

#: Export formats: qfcal's JSON, AIMET/QNN encodings, TensorRT calibration cache, ONNX Runtime
#: tensor overrides.
FORMATS = ("qfcal", "aimet", "tensorrt", "ort")
#: qfcal's ranges file: its ``format`` and ``version`` fields.
QFCAL_FORMAT = "qfcal-ranges"
QFCAL_VERSION = 1
#: The AIMET encodings version written (the one QNN's converters and AIMET 1.x/2.x load).
AIMET_VERSION = "0.6.1"
#: TensorRT's first cache line: TensorRT 8.6's entropy calibrator's. TensorRT reads the scales
#: whatever calibrator wrote the header; pass ``header=`` to match another version's.
TENSORRT_HEADER = "TRT-8601-EntropyCalibration2"

Ranges = dict[str, qfcal.SearchResult]


# -- sources -----------------------------------------------------------------------------------


def _result(
    scale: float,
    zero_point: int,
    qmin: int,
    qmax: int,
    rounding_loss: float,
    clipping_loss: float,
    gamma: float,
    sqnr_db: float,
    method: str,
) -> qfcal.SearchResult:
    from qfcal._core import _search_result

    return _search_result(
        scale, zero_point, qmin, qmax, rounding_loss, clipping_loss, gamma, sqnr_db, method
    )


def _from_run_json(doc: Mapping[str, Any], where: str) -> Ranges:
    """A run folder's ``ranges.json`` (``qfcal.pipeline.steps.ranges_json``)."""
    out: Ranges = {}
    for name, r in doc.items():
        try:
            rounding, clipping = float(r["rounding_loss"]), float(r["clipping_loss"])
            gamma = float(r.get("gamma", 1.0))
            if "gamma" not in r and clipping > 0:  # files written before gamma was kept
                gamma = (float(r["loss"]) - rounding) / clipping
            sqnr = r.get("sqnr_db")
            out[name] = _result(
                float(r["scale"]), int(r["zero_point"]), int(r["qmin"]), int(r["qmax"]),
                rounding, clipping, gamma, math.inf if sqnr is None else float(sqnr),
                str(r["method"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: tensor {name!r} is not a qfcal range ({e})") from e
    return out


def ranges_of(source: Any) -> Ranges:
    """``{tensor: SearchResult}`` from `source`: a run folder or its ``ranges.json``, a qfcal
    ranges file (:func:`to_qfcal`), a :class:`qfcal.tflite.QuantizedModel`, a
    :class:`qfcal.onnxruntime.Calibration`, or a mapping of names to results.

    Raises:
        FileNotFoundError: a path that does not exist, or a folder without ``ranges.json``.
        ValueError: a file that is neither a qfcal ranges file nor a run's ``ranges.json``.
        TypeError: anything else, or a mapping with a value that is not a SearchResult.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = path / "ranges.json"
            if not path.is_file():
                raise FileNotFoundError(f"{str(source)!r} has no ranges.json: not a run folder")
        if not path.is_file():
            raise FileNotFoundError(f"{str(source)!r} does not exist")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} is not JSON: {e}") from e
        if isinstance(doc, dict) and doc.get("format") == QFCAL_FORMAT:
            return read_qfcal(doc)
        if not isinstance(doc, dict):
            raise ValueError(f"{str(path)!r} is not a qfcal ranges file or a run's ranges.json")
        return _from_run_json(doc, repr(str(path)))
    ranges = getattr(source, "ranges", None)
    if isinstance(ranges, Mapping):  # QuantizedModel (TensorRange values) or Calibration
        if not _all_results(ranges):
            return _bad(source)
        return {str(name): _unwrap(r) for name, r in ranges.items()}
    if isinstance(source, Mapping):
        return dict(source) if _all_results(source) else _bad(source)
    return _bad(source)


def _unwrap(r: Any) -> qfcal.SearchResult:
    """A SearchResult, or the one a qfcal.tflite.TensorRange holds."""
    out: qfcal.SearchResult = getattr(r, "result", r)
    return out


def _all_results(m: Mapping[Any, Any]) -> bool:
    return all(
        isinstance(k, str) and isinstance(getattr(v, "result", v), qfcal.SearchResult)
        for k, v in m.items()
    )


def _bad(source: Any) -> Ranges:
    raise TypeError(
        "source must be a run folder, a ranges file, a qfcal.tflite.QuantizedModel, a "
        "qfcal.onnxruntime.Calibration or a mapping of tensor names to qfcal.SearchResult, "
        f"got {type(source).__name__}"
    )


# -- qfcal's own -------------------------------------------------------------------------------


def result_fields(r: qfcal.SearchResult) -> dict[str, Any]:
    """Every field of `r`, JSON-able (an infinite SQNR is ``null``): what qfcal's ranges file
    and a run's ``ranges.json`` hold per tensor, and what :func:`ranges_of` reads back."""
    return {
        "method": r.method,
        "scale": r.scale,
        "zero_point": r.zero_point,
        "qmin": r.qmin,
        "qmax": r.qmax,
        "min": r.min,
        "max": r.max,
        "loss": r.loss,
        "rounding_loss": r.rounding_loss,
        "clipping_loss": r.clipping_loss,
        "gamma": r.gamma,
        "sqnr_db": r.sqnr_db if math.isfinite(r.sqnr_db) else None,
    }


def to_qfcal(ranges: Mapping[str, qfcal.SearchResult]) -> dict[str, Any]:
    """qfcal's versioned ranges document (JSON-able)."""
    return {
        "format": QFCAL_FORMAT,
        "version": QFCAL_VERSION,
        "qfcal": qfcal.__version__,
        "tensors": {name: result_fields(r) for name, r in ranges.items()},
    }


def read_qfcal(doc: Mapping[str, Any] | str | os.PathLike[str]) -> Ranges:
    """The results of a :func:`to_qfcal` document (or file), equal to those written.

    Raises:
        ValueError: not a qfcal ranges document, or a version this qfcal does not read.
    """
    if isinstance(doc, (str, os.PathLike)):
        doc = json.loads(Path(doc).read_text(encoding="utf-8"))
    if not isinstance(doc, Mapping) or doc.get("format") != QFCAL_FORMAT:
        raise ValueError(f"not a qfcal ranges document (its format must be {QFCAL_FORMAT!r})")
    if doc.get("version") != QFCAL_VERSION:
        raise ValueError(
            f"qfcal ranges version {doc.get('version')!r}: this qfcal reads version {QFCAL_VERSION}"
        )
    return _from_run_json(doc["tensors"], "qfcal ranges document")


# -- AIMET / QNN -------------------------------------------------------------------------------


def _bits(r: qfcal.SearchResult) -> int:
    """The bit width of `r`'s grid (a narrow range has 2^bits - 1 levels)."""
    return int(r.qmax - r.qmin).bit_length()


def _symmetric(r: qfcal.SearchResult) -> bool:
    return r.zero_point == 0 and r.qmin < 0 and -r.qmin >= r.qmax


def to_aimet(ranges: Mapping[str, qfcal.SearchResult]) -> dict[str, Any]:
    """AIMET / QNN encodings (version 0.6.1) with every range as an activation encoding."""
    enc: dict[str, list[dict[str, Any]]] = {}
    for name, r in ranges.items():
        offset = r.qmin - r.zero_point
        enc[name] = [
            {
                "bitwidth": _bits(r),
                "dtype": "int",
                "is_symmetric": str(_symmetric(r)),
                "max": r.max,
                "min": r.min,
                "offset": offset,
                "scale": r.scale,
            }
        ]
    return {
        "version": AIMET_VERSION,
        "activation_encodings": enc,
        "param_encodings": {},
        "excluded_layers": [],
        "quantizer_args": {"activation_bitwidth": max((e[0]["bitwidth"] for e in enc.values()),
                                                      default=8)},
    }  # fmt: skip


def read_aimet(doc: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Each activation encoding of an AIMET encodings document (or file) as ``{"scale"
    (float32 value), "offset", "bitwidth", "min", "max", "is_symmetric"}``; the 1.0.0 layout
    (a list of ``{"name", "scale": [..], "offset": [..], "bw"}``) is read too."""
    if isinstance(doc, (str, os.PathLike)):
        doc = json.loads(Path(doc).read_text(encoding="utf-8"))
    acts = doc.get("activation_encodings") if isinstance(doc, Mapping) else None
    if acts is None:
        raise ValueError("not an AIMET encodings document: no activation_encodings")
    out: dict[str, dict[str, Any]] = {}
    items = acts.items() if isinstance(acts, Mapping) else ((e["name"], e) for e in acts)
    for name, e in items:
        if isinstance(e, list):
            e = e[0]
        scale = _f32(float(e["scale"][0] if isinstance(e["scale"], list) else e["scale"]))
        offset = int(e["offset"][0] if isinstance(e["offset"], list) else e["offset"])
        bits = int(e.get("bitwidth", e.get("bw", 8)))
        sym = e.get("is_symmetric", e.get("is_sym", False))
        out[name] = {
            "scale": scale,
            "offset": offset,
            "bitwidth": bits,
            "min": float(e.get("min", offset * scale)),
            "max": float(e.get("max", (offset + 2**bits - 1) * scale)),
            "is_symmetric": sym in (True, "True", "true"),
        }
    return out


# -- TensorRT ----------------------------------------------------------------------------------


def _f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def to_tensorrt(
    ranges: Mapping[str, qfcal.SearchResult], *, header: str = TENSORRT_HEADER, widen: bool = False
) -> str:
    """TensorRT's calibration cache text. A symmetric range (zero point 0) keeps its scale; an
    asymmetric one raises, or with `widen` becomes the symmetric range covering it
    (``max(-min, max) / 127``: more rounding error, which is why the default refuses).

    Raises:
        ValueError: an asymmetric range without `widen`, or a name with a newline or ``": "``.
    """
    if not isinstance(widen, bool):
        raise TypeError(f"widen must be True or False, got {widen!r}")
    if "\n" in header:
        raise ValueError(f"header must be one line, got {header!r}")
    lines = [header]
    for name, r in ranges.items():
        if "\n" in name or ": " in name:
            raise ValueError(f"tensor name {name!r} cannot be written in a TensorRT cache")
        if r.qmax != 127 or r.qmin not in (-128, -127):
            raise ValueError(
                f"tensor {name!r}: TensorRT's int8 grid is [-127, 127], got [{r.qmin}, {r.qmax}]"
            )
        if r.zero_point == 0:
            scale = r.scale
        elif widen:
            scale = max(-r.min, r.max) / 127.0
        else:
            raise ValueError(
                f"tensor {name!r}: TensorRT's int8 is symmetric, but its range [{r.min:.6g}, "
                f"{r.max:.6g}] has zero point {r.zero_point}; search with symmetric=True (the "
                "CLI does, from a run's histograms) or pass widen=True (the CLI's --widen)"
            )
        lines.append(f"{name}: {struct.pack('>f', _f32(scale)).hex()}")
    return "\n".join(lines) + "\n"


def read_tensorrt(text: str | os.PathLike[str]) -> dict[str, float]:
    """``{tensor: scale}`` (float32 values) of a TensorRT calibration cache's text (or file)."""
    if isinstance(text, os.PathLike) or (isinstance(text, str) and "\n" not in text):
        text = Path(text).read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise ValueError("not a TensorRT calibration cache: the first line must start with TRT-")
    out: dict[str, float] = {}
    for ln in lines[1:]:
        name, sep, bits = ln.rpartition(": ")
        if not sep or len(bits) != 8:
            raise ValueError(f"TensorRT cache line {ln!r} is not 'name: <8 hex digits>'")
        out[name] = float(struct.unpack(">f", bytes.fromhex(bits))[0])
    return out


# -- ONNX Runtime ------------------------------------------------------------------------------


def _quant_type(r: qfcal.SearchResult) -> str:
    if (r.qmin, r.qmax) in ((-128, 127), (-127, 127)):
        return "QInt8"
    if (r.qmin, r.qmax) in ((0, 255), (0, 254)):
        return "QUInt8"
    if (r.qmin, r.qmax) in ((-32768, 32767), (-32767, 32767)):
        return "QInt16"
    if (r.qmin, r.qmax) in ((0, 65535), (0, 65534)):
        return "QUInt16"
    raise ValueError(
        f"grid [{r.qmin}, {r.qmax}] is not one of ONNX Runtime's (int8, uint8, int16, uint16)"
    )


_ZP_DTYPES = {"QInt8": "int8", "QUInt8": "uint8", "QInt16": "int16", "QUInt16": "uint16"}


def _ort_entry(scale: float, zero_point: int, quant_type: str) -> dict[str, Any]:
    """One override as ONNX Runtime takes it: a float32 array scale, a zero point of the type's
    dtype, QuantType."""
    import numpy as np
    from onnxruntime.quantization import QuantType

    return {
        "scale": np.array(scale, dtype=np.float32),
        "zero_point": np.array(zero_point, dtype=_ZP_DTYPES[quant_type]),
        "quant_type": QuantType[quant_type],
    }


def to_ort(ranges: Mapping[str, qfcal.SearchResult], *, json_safe: bool = False) -> dict[str, Any]:
    """ONNX Runtime ``TensorQuantOverrides``: per tensor ``[{"scale", "zero_point",
    "quant_type"}]`` as ``quantize_static`` takes them (a float32 array scale, a zero point of
    the quant type's dtype, an ``onnxruntime.quantization.QuantType``), or with `json_safe`
    as plain numbers and the type's name (no ONNX Runtime needed; :func:`read_ort` converts).

    Raises:
        ValueError: a grid that is not int8, uint8, int16 or uint16's.
    """
    out: dict[str, Any] = {}
    for name, r in ranges.items():
        qt = _quant_type(r)
        out[name] = [
            {"scale": r.scale, "zero_point": r.zero_point, "quant_type": qt}
            if json_safe
            else _ort_entry(r.scale, r.zero_point, qt)
        ]
    return out


def read_ort(doc: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """A :func:`to_ort` document (or JSON file) as ONNX Runtime takes it (``quant_type`` names
    turned into ``QuantType``)."""
    from onnxruntime.quantization import QuantType

    src: Mapping[str, Any] = (
        json.loads(Path(doc).read_text(encoding="utf-8"))
        if isinstance(doc, (str, os.PathLike))
        else doc
    )
    out: dict[str, Any] = {}
    for name, entries in src.items():
        out[name] = [
            {**e, **_ort_entry(float(e["scale"]), int(e["zero_point"]), e["quant_type"])}
            if {"scale", "zero_point", "quant_type"} <= set(e)
            else {**e, "quant_type": QuantType[e["quant_type"]]}
            if "quant_type" in e
            else dict(e)
            for e in entries
        ]
    return out


# -- files -------------------------------------------------------------------------------------


def write(source: Any, path: str | os.PathLike[str], fmt: str, **options: Any) -> Path:
    """The ranges of `source` (:func:`ranges_of`) written to `path` in format `fmt`
    (:data:`FORMATS`); `options` go to the format's writer (``tensorrt``: ``header``,
    ``widen``). Returns the path.

    Raises:
        ValueError: an unknown format, or what the format's writer raises.
    """
    from qfcal._checks import check_choice
    from qfcal._io import write_text_atomic

    check_choice(fmt, "fmt", FORMATS)
    ranges = ranges_of(source)
    if fmt == "tensorrt":
        text = to_tensorrt(ranges, **options)
    else:
        if options:
            raise TypeError(f"format {fmt!r} takes no options, got {sorted(options)}")
        doc = {"qfcal": to_qfcal, "aimet": to_aimet}.get(fmt)
        body = doc(ranges) if doc else to_ort(ranges, json_safe=True)
        text = json.dumps(body, indent=1, allow_nan=False) + "\n"
    out = Path(path)
    write_text_atomic(out, text)
    return out


def read(path: str | os.PathLike[str], fmt: str) -> Any:
    """A file written by :func:`write` read back with the format's reader."""
    from qfcal._checks import check_choice

    check_choice(fmt, "fmt", FORMATS)
    reader = {"qfcal": read_qfcal, "aimet": read_aimet, "tensorrt": read_tensorrt,
              "ort": read_ort}[fmt]  # fmt: skip
    return reader(Path(path))
