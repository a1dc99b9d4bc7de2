"""Float training of the MobileNets: a tf.data pipeline, light augmentation, a cosine or step
schedule, a checkpoint after every epoch and resumption after an interruption.

Images enter the models as float32 in [0, 1] (``uint8 / 255``); :func:`to_float` is the one
place that says so, and calibration, export and evaluation use it too. Augmentation is a random
shift (pad by an eighth of the side, crop back) and, where the classes allow it, a horizontal
flip; both are stateless ops seeded from a seeded stream, so a run is repeatable.

A run's checkpoint is ``<dir>/last.keras`` (model and optimizer state, the learning-rate schedule
inside it) plus ``<dir>/state.json`` (epochs done, history, configuration), both written
atomically after every epoch. :func:`train` on a folder with a checkpoint of the same
configuration resumes after the last finished epoch.

Training on several devices uses TensorFlow's own distribution strategies (:func:`strategy`):
``"mirrored"`` is a ``tf.distribute.MirroredStrategy`` over every visible GPU (synchronous
data parallelism: each replica takes its share of the global batch, gradients are all-reduced);
``"auto"`` picks it when more than one GPU is visible. The model is rebuilt inside the
strategy's scope from the one passed in, so callers build models as usual. Results do not depend
on the strategy beyond floating-point summation order, and a checkpoint written under one
strategy resumes under another.

TensorFlow is imported by this module only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from qfcal._io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "step")
STRATEGIES = ("auto", "none", "mirrored")
# rmsprop: the MobileNet papers' optimizer, with TF-slim's settings (decay 0.9, momentum 0.9,
# epsilon 1.0), for reproducing how the published models were trained.
OPTIMIZERS = ("adam", "sgd", "rmsprop")
# Datasets whose classes survive a mirror image (digits do not).
NO_FLIP = ("mnist",)


@dataclass(frozen=True)
class TrainConfig:
    """Training options; every field is recorded in the checkpoint and the run report."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 2e-3
    optimizer: str = "adam"
    schedule: str = "cosine"
    weight_decay: float = 0.0
    augment: bool = True
    flip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


def to_float(images: Any) -> Any:
    """uint8 images to the models' input: float32 in [0, 1]. Works on numpy and tf tensors."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32) / np.float32(255.0)
    return tf.cast(images, tf.float32) / 255.0


def _augment(image: tf.Tensor, seed: tf.Tensor, flip: bool) -> tf.Tensor:
    h, w, c = image.shape
    pad_h, pad_w = max(1, h // 8), max(1, w // 8)
    padded = tf.pad(image, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]])
    seeds = tf.random.experimental.stateless_split(seed, 2)
    out = tf.image.stateless_random_crop(padded, (h, w, c), seed=seeds[0])
    if flip:
        out = tf.image.stateless_random_flip_left_right(out, seed=seeds[1])
    return out


def input_pipeline(
    data: Any,
    split: str,
    batch_size: int,
    *,
    training: bool = False,
    augment: bool = False,
    flip: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of ``(float32 image in [0, 1], int64 label)`` from a :mod:`qfcal.pipeline.data`
    dataset.

    With ``training``, the examples are shuffled every epoch (seeded) and, with ``augment``,
    randomly shifted and (with ``flip``) mirrored."""
    ds = data.tf_data(split, shuffle_seed=seed if training else None)
    if training:
        if augment:
            noise = tf.data.Dataset.random(seed=seed).batch(2)
            ds = tf.data.Dataset.zip((ds, noise)).map(
                lambda xy, s: (_augment(xy[0], tf.cast(s, tf.int64), flip), xy[1]),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
    ds = ds.batch(batch_size).map(lambda x, y: (to_float(x), y))
    # No tf.data autotuning: at the end of training, tearing down an autotuned iterator waited
    # 40 s on two cores (a third of the demo's epoch) for its tuning thread; two batches ahead
    # keep the steps as fast.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options).prefetch(2)


def _schedule(config: TrainConfig, steps: int) -> Any:
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, steps, alpha=0.0)
    cuts = [int(steps * 0.5), int(steps * 0.75)]
    lr = config.learning_rate
    return keras.optimizers.schedules.PiecewiseConstantDecay(cuts, [lr, lr * 0.1, lr * 0.01])


def compile_model(model: keras.Model, config: TrainConfig, steps_per_epoch: int) -> None:
    """Compile for training: cross-entropy on logits, top-1 accuracy, the configured schedule."""
    lr = _schedule(config, max(1, config.epochs * steps_per_epoch))
    wd = config.weight_decay or None
    if config.optimizer == "adam":
        opt: Any = keras.optimizers.AdamW(lr, weight_decay=wd) if wd else keras.optimizers.Adam(lr)
    elif config.optimizer == "rmsprop":
        opt = keras.optimizers.RMSprop(lr, rho=0.9, momentum=0.9, epsilon=1.0, weight_decay=wd)
    else:
        opt = keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=wd)
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def strategy(name: str | Any = "auto") -> Any:
    """A ``tf.distribute.Strategy`` for `name`: ``"none"`` (the default strategy: one device),
    ``"mirrored"`` (``MirroredStrategy`` over all visible GPUs, or the CPU when there is none),
    ``"auto"`` (mirrored with more than one GPU, else none), or a Strategy, returned as is.

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(name, tf.distribute.Strategy):
        return name
    if name not in STRATEGIES:
        raise ValueError(f"distribute must be one of {', '.join(STRATEGIES)}, got {name!r}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _in_scope(model: keras.Model, dist: Any) -> keras.Model:
    """`model` with its variables created under `dist` (a copy with the same weights), or
    `model` itself under the default strategy."""
    if not tf.distribute.has_strategy() and dist is tf.distribute.get_strategy():
        return model
    with dist.scope():
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    return copy


def save_model_atomic(model: keras.Model, path: str | os.PathLike[str]) -> None:
    """``model.save`` to a temporary ``.keras`` beside `path`, then rename it over `path`."""
    with atomic_path(path) as tmp:
        model.save(tmp)


class ModelFileError(ValueError):
    """A model file that is missing, truncated, or not a Keras model."""


def load_model(path: str | os.PathLike[str]) -> keras.Model:
    """Load a ``.keras`` file, with a clear error when it is missing or corrupt.

    Raises:
        ModelFileError: `path` does not exist or does not hold a readable Keras model.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file {str(p)!r} does not exist")
    try:
        return keras.models.load_model(p, compile=True)
    except Exception as e:  # Keras raises many types for a bad archive
        raise ModelFileError(
            f"model file {str(p)!r} is not a readable .keras model ({type(e).__name__}: {e})"
        ) from e


class _Checkpoint(keras.callbacks.Callback):  # type: ignore[misc]
    """After every epoch: the model (with optimizer state) and the run state, atomically."""

    def __init__(
        self,
        folder: Path,
        config: TrainConfig,
        meta: dict[str, Any],
        history: dict[str, list[float]],
    ):
        super().__init__()
        self.folder = folder
        self.config = config
        self.meta = meta
        self.history = history

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))
        save_model_atomic(self.model, self.folder / "last.keras")
        write_json_atomic(
            self.folder / "state.json",
            {
                "epochs_done": epoch + 1,
                "config": dataclasses.asdict(self.config),
                "meta": self.meta,
                "history": self.history,
            },
        )


def keras_verbose(verbose: int | str, stream: Any = None) -> int | str:
    """Keras ``fit`` verbosity: ``"auto"`` is a progress bar on a terminal and one line per
    epoch elsewhere (a log file, CI), where a bar's carriage-return redraws pile up into
    thousands of lines; any other value as given."""
    if verbose != "auto":
        return verbose
    out = sys.stdout if stream is None else stream
    isatty = getattr(out, "isatty", None)
    return 1 if callable(isatty) and isatty() else 2


def train(
    model: keras.Model,
    data: Any,
    config: TrainConfig,
    checkpoint_dir: str | os.PathLike[str],
    *,
    meta: dict[str, Any] | None = None,
    verbose: int | str = "auto",
    callbacks: list[Any] | None = None,
    distribute: str | Any = "auto",
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train `model` on `data`'s training split, checkpointing into `checkpoint_dir`.

    `distribute` chooses the devices (:func:`strategy`): with a MirroredStrategy the model and
    optimizer are (re)created in its scope and each step's global batch of
    ``config.batch_size`` images is split across the replicas.

    If `checkpoint_dir` holds a checkpoint of the same configuration and `meta` (architecture,
    dataset...), training resumes from it: the model passed in is then replaced by the saved
    one, and only the remaining epochs run. A checkpoint of a different configuration is an
    error rather than silently overwritten.

    Returns the trained model and the per-epoch history (losses and accuracies).
    """
    meta = dict(meta or {})
    dist = strategy(distribute)
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "state.json"
    keras.utils.set_random_seed(config.seed)
    steps = math.ceil(data.size("train") / config.batch_size)
    history: dict[str, list[float]] = {}
    done = 0
    if state_path.is_file() and (folder / "last.keras").is_file():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        want = {"config": dataclasses.asdict(config), "meta": meta}
        have = {"config": state.get("config"), "meta": state.get("meta")}
        if have != want:
            raise ValueError(
                f"checkpoint_dir {str(folder)!r} holds a checkpoint of another run "
                f"({have}); use a new folder or delete it"
            )
        done = int(state["epochs_done"])
        history = {k: list(v) for k, v in state.get("history", {}).items()}
        with dist.scope():
            model = load_model(folder / "last.keras")
        if done >= config.epochs:
            return model, history
        log.info(
            "resuming from %s after epoch %d of %d", folder / "last.keras", done, config.epochs
        )
    else:
        model = _in_scope(model, dist)
        with dist.scope():
            compile_model(model, config, steps)
    if not model.optimizer.built:
        # Slot variables created inside the first traced step make TensorFlow trace the step
        # twice (8 s each for the demo's model on two cores); built here, it is traced once.
        with dist.scope():
            model.optimizer.build(model.trainable_variables)
    if dist.num_replicas_in_sync > 1:
        log.info(
            "training on %d replicas (%s), global batch %d",
            dist.num_replicas_in_sync,
            type(dist).__name__,
            config.batch_size,
        )
    train_ds = input_pipeline(
        data,
        "train",
        config.batch_size,
        training=True,
        augment=config.augment,
        flip=config.flip,
        seed=config.seed + done,
    )
    model.fit(
        train_ds,
        epochs=config.epochs,
        initial_epoch=done,
        shuffle=False,  # the pipeline shuffles, seeded
        verbose=keras_verbose(verbose),
        callbacks=[_Checkpoint(folder, config, meta, history), *(callbacks or [])],
    )
    return model, history
