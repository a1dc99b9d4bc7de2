"""MobileNetV1 and MobileNetV2 in Keras 3, standard and quantization-friendly.

Standard: the published blocks. V1: depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6.
V2: 1x1 expansion + BN + ReLU6, depthwise 3x3 + BN + ReLU6, 1x1 linear projection + BN, and a
residual add where input and output shapes match.

Quantization-friendly (the 2018 LPIRC winner; arXiv 1803.08607): no batch norm and no activation
after the depthwise convolution (it keeps a bias), and ReLU instead of ReLU6 in the pointwise,
expansion, stem and head layers; optional L2 regularization on the depthwise weights. With
per-tensor weight ranges, batch norm folded into a depthwise layer gives some channels huge
weights and wipes out the resolution of the rest: this is what broke the standard MobileNets at
8 bits in 2018's TFLite.

Small inputs: the published networks downsample 32x, for 224-pixel ImageNet images. For inputs
under 96 pixels the stem and the first stride-2 block use stride 1 (8x in all), so a 32x32 image
ends on a 4x4 grid.

TensorFlow is imported by this module only (``pip install 'qfcal[tf]'``).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, regularizers

VARIANTS: tuple[str, ...] = ("standard", "qfriendly")
ARCHITECTURES: tuple[str, ...] = ("v1", "v2")

# Keras' own MobileNets use 0.999, which has not converged after a few epochs from scratch
# (inference-mode accuracy near chance; see the project's TF notes); 0.99 still keeps 20% of the
# initial statistics after 157 steps (one demo epoch). 0.9 is PyTorch's default (momentum 0.1).
BN_MOMENTUM = 0.9

# V1: (pointwise filters, depthwise stride) for the 13 separable blocks.
_V1_BLOCKS = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]  # fmt: skip
# V2: (expansion t, output channels c, repeats n, first stride s).
_V2_BLOCKS = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]  # fmt: skip


def _check(variant: str, alpha: float, input_shape: tuple[int, ...], classes: int) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if not alpha > 0:
        raise ValueError(f"alpha (width multiplier) must be positive, got {alpha}")
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}")
    if min(input_shape[:2]) < 8:
        raise ValueError(f"input_shape must be at least 8x8 pixels, got {input_shape}")
    if classes < 2:
        raise ValueError(f"classes must be at least 2, got {classes}")


def _divisible(v: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of 8, never below 90% of `v` (as in the V2 paper)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _act(x: Any, variant: str, name: str) -> Any:
    if variant == "qfriendly":
        return layers.ReLU(name=f"{name}_relu")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x)


def _bn(x: Any, name: str) -> Any:
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)


def _depthwise(x: Any, stride: int, variant: str, name: str, l2: float) -> Any:
    reg = regularizers.L2(l2) if l2 > 0 else None
    if variant == "qfriendly":
        # No batch norm and no activation: a plain (biased) linear depthwise convolution.
        return layers.DepthwiseConv2D(
            3, strides=stride, padding="same", use_bias=True,
            depthwise_regularizer=reg, name=f"{name}_dw",
        )(x)  # fmt: skip
    x = layers.DepthwiseConv2D(
        3, strides=stride, padding="same", use_bias=False,
        depthwise_regularizer=reg, name=f"{name}_dw",
    )(x)  # fmt: skip
    return _act(_bn(x, f"{name}_dw"), variant, f"{name}_dw")


def _small(input_shape: tuple[int, ...]) -> bool:
    return min(input_shape[:2]) < 96


def _stem(
    input_shape: tuple[int, int, int],
    filters: int,
    variant: str,
    alpha: float,
    classes: int,
    stem_stride: int | None = None,
) -> tuple[Any, Any]:
    """The checked arguments' input and its 3x3 stem convolution (`stem_stride`; by default 1
    for small inputs, 2 otherwise)."""
    _check(variant, alpha, input_shape, classes)
    if stem_stride is None:
        stem_stride = 1 if _small(input_shape) else 2
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(filters, 3, strides=stem_stride, padding="same", use_bias=False, name="stem")(
        inputs
    )
    return inputs, _act(_bn(x, "stem"), variant, "stem")


def mobilenet_v1(
    input_shape: tuple[int, int, int] = (32, 32, 1),
    classes: int = 10,
    alpha: float = 1.0,
    variant: str = "standard",
    depthwise_l2: float = 0.0,
    stem_stride: int | None = None,
) -> keras.Model:
    """MobileNetV1 (Howard et al. 2017) with width multiplier `alpha`. Inputs under 96 px keep
    one stride-2 stage at stride 1 (the stem's, unless `stem_stride` is 2: then the first
    block's)."""
    inputs, x = _stem(input_shape, int(32 * alpha), variant, alpha, classes, stem_stride)
    small = _small(input_shape)
    first_stride2 = True
    for i, (filters, stride) in enumerate(_V1_BLOCKS, start=1):
        if stride == 2 and small and first_stride2:
            stride, first_stride2 = 1, False
        name = f"block{i}"
        x = _depthwise(x, stride, variant, name, depthwise_l2)
        x = layers.Conv2D(int(filters * alpha), 1, use_bias=False, name=f"{name}_pw")(x)
        x = _act(_bn(x, f"{name}_pw"), variant, f"{name}_pw")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"mobilenet_v1_{variant}_{alpha:g}")


def mobilenet_v2(
    input_shape: tuple[int, int, int] = (32, 32, 1),
    classes: int = 10,
    alpha: float = 1.0,
    variant: str = "standard",
    depthwise_l2: float = 0.0,
    stem_stride: int | None = None,
) -> keras.Model:
    """MobileNetV2 (Sandler et al. 2018) with width multiplier `alpha`. Inputs under 96 px keep
    one stride-2 stage at stride 1 (the stem's, unless `stem_stride` is 2: then the first
    block's)."""
    inputs, x = _stem(input_shape, _divisible(32 * alpha), variant, alpha, classes, stem_stride)
    small = _small(input_shape)
    channels = _divisible(32 * alpha)
    block = 0
    first_stride2 = True
    for t, c, n, s in _V2_BLOCKS:
        out = _divisible(c * alpha)
        for r in range(n):
            block += 1
            name = f"block{block}"
            stride = s if r == 0 else 1
            if stride == 2 and small and first_stride2:
                stride, first_stride2 = 1, False
            shortcut = x
            if t != 1:
                x = layers.Conv2D(channels * t, 1, use_bias=False, name=f"{name}_expand")(x)
                x = _act(_bn(x, f"{name}_expand"), variant, f"{name}_expand")
            x = _depthwise(x, stride, variant, name, depthwise_l2)
            x = layers.Conv2D(out, 1, use_bias=False, name=f"{name}_project")(x)
            x = _bn(x, f"{name}_project")
            if stride == 1 and channels == out:
                x = layers.Add(name=f"{name}_add")([shortcut, x])
            channels = out
    last = _divisible(1280 * alpha) if alpha > 1.0 else 1280
    x = layers.Conv2D(last, 1, use_bias=False, name="head")(x)
    x = _act(_bn(x, "head"), variant, "head")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"mobilenet_v2_{variant}_{alpha:g}")


def build(
    arch: str,
    variant: str = "standard",
    *,
    input_shape: tuple[int, int, int] = (32, 32, 1),
    classes: int = 10,
    alpha: float = 1.0,
    depthwise_l2: float = 0.0,
    stem_stride: int | None = None,
) -> keras.Model:
    """A model by name: ``arch`` is ``v1`` or ``v2``, ``variant`` ``standard`` or ``qfriendly``."""
    builders = {"v1": mobilenet_v1, "v2": mobilenet_v2}
    if arch not in builders:
        raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    return builders[arch](input_shape, classes, alpha, variant, depthwise_l2, stem_stride)


def variance_preserving_init(model: keras.Model, seed: int = 0) -> None:
    """Random He-normal weights (and small random biases), seeded: activations keep their size
    through the depth, where a fresh Keras MobileNet's shrink to ~1e-9 at the logits. For tests
    and latency benchmarks of untrained networks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        w = layer.get_weights()
        if not w:
            continue
        k = w[0]
        if isinstance(layer, layers.DepthwiseConv2D):
            fan_in = k.shape[0] * k.shape[1]
        elif k.ndim >= 2:
            fan_in = int(np.prod(k.shape[:-1]))
        else:
            continue
        w[0] = rng.normal(0, np.sqrt(2.0 / fan_in), k.shape).astype(np.float32)
        if len(w) > 1:
            w[1] = rng.normal(0, 0.05, w[1].shape).astype(np.float32)
        layer.set_weights(w)
