"""Float training: the seeded input pipeline, options checked up front, resumption after an
interruption, and TensorFlow's distribution strategies (MirroredStrategy on two logical CPU
devices, the same code path as several GPUs; checkpoints that resume under another strategy)."""

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
from qfcal.pipeline import data, train  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed (.ci/run installs it)",
)


def test_bad_training_options_name_the_option():
    with pytest.raises(ValueError, match="epochs must be at least 1, got 0"):
        train.TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="schedule must be one of cosine, step, got 'linear'"):
        train.TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="learning_rate must be positive, got nan"):
        train.TrainConfig(learning_rate=float("nan"))


def test_rmsprop_is_the_mobilenet_papers_optimizer():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    train.compile_model(model, train.TrainConfig(optimizer="rmsprop", learning_rate=0.045), 10)
    opt = model.optimizer
    assert isinstance(opt, keras.optimizers.RMSprop)
    assert (opt.rho, opt.momentum, opt.epsilon) == (0.9, 0.9, 1.0)
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd, rmsprop, got 'lamb'"):
        train.TrainConfig(optimizer="lamb")


@needs_fashion
def test_the_training_step_is_traced_once(tmp_path):
    """The optimizer's slot variables exist before the first step, so TensorFlow traces the
    step once, not twice (seconds per trace on two cores)."""
    ds = data.load("fashion_mnist").subset(128, 10, seed=0)
    from qfcal.pipeline import models

    model = models.build("v1", "qfriendly", input_shape=(28, 28, 1), alpha=0.25)
    traces = []
    step = model.train_step

    def counted(batch):
        traces.append(1)
        return step(batch)

    model.train_step = counted
    train.train(model, ds, train.TrainConfig(epochs=2, batch_size=64), tmp_path, verbose=0)
    assert len(traces) == 1


def test_input_pipeline_is_seeded_and_scaled(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 12, 10, 1), dtype=np.uint8)
    y = np.arange(40, dtype=np.int64) % 4
    ds = data.Dataset("toy", x, y, x[:8], y[:8], ["a", "b", "c", "d"], "memory")

    def batches(seed):
        pipe = train.input_pipeline(ds, "train", 16, training=True, augment=True, seed=seed)
        return [(a.numpy(), b.numpy()) for a, b in pipe]

    one, two, other = batches(1), batches(1), batches(2)
    assert [b[0].shape for b in one] == [(16, 12, 10, 1), (16, 12, 10, 1), (8, 12, 10, 1)]
    for (a, la), (b, lb) in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(one, other, strict=True))
    allx = np.concatenate([b[0] for b in one])
    assert allx.dtype == np.float32 and 0.0 <= allx.min() and allx.max() <= 1.0
    # every label once per epoch: shuffled, not resampled
    assert sorted(np.concatenate([b[1] for b in one]).tolist()) == sorted(y.tolist())
    # without training, order and pixels are kept: x / 255 exactly
    plain = np.concatenate([a.numpy() for a, _ in train.input_pipeline(ds, "test", 5)])
    np.testing.assert_array_equal(plain, x[:8].astype(np.float32) / np.float32(255))
    assert tf.executing_eagerly()


def test_image_folder_feeds_the_training_pipeline(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        for cls, colour in (("cat", (250, 0, 0)), ("dog", (0, 0, 250))):
            d = tmp_path / "pets" / split / cls
            d.mkdir(parents=True)
            img = np.full((9, 7, 3), colour, dtype=np.uint8)
            for k in range(n):
                (d / f"{k}.png").write_bytes(tf.io.encode_png(img).numpy())
    ds = data.load(str(tmp_path / "pets"), image_size=(16, 16))
    assert ds.classes == ["cat", "dog"] and ds.image_shape == (16, 16, 3)
    xs, ys = next(iter(train.input_pipeline(ds, "train", 8, training=True, augment=True)))
    assert xs.shape == (6, 16, 16, 3) and sorted(ys.numpy().tolist()) == [0, 0, 0, 1, 1, 1]
    assert float(tf.reduce_max(xs)) == pytest.approx(250 / 255, abs=1e-6)


@needs_fashion
def test_training_resumes_after_an_interruption(tmp_path, caplog):
    ds = data.load("fashion_mnist").subset(256, 10, seed=0)
    cfg = train.TrainConfig(epochs=2, batch_size=128, seed=3)

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    def model():
        from qfcal.pipeline import models

        return models.build("v1", "qfriendly", input_shape=(28, 28, 1), alpha=0.25)

    meta = {"arch": "v1"}
    with pytest.raises(KeyboardInterrupt):
        train.train(model(), ds, cfg, tmp_path, meta=meta, verbose=0, callbacks=[Stop()])
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epochs_done"] == 1 and len(state["history"]["loss"]) == 1
    saved = train.load_model(tmp_path / "last.keras")
    with caplog.at_level(logging.INFO, logger="qfcal"):
        m, hist = train.train(model(), ds, cfg, tmp_path, meta=meta, verbose=0)
    assert any(r.getMessage().startswith("resuming from") for r in caplog.records)
    assert len(hist["loss"]) == 2
    assert json.loads((tmp_path / "state.json").read_text())["epochs_done"] == 2
    # the resumed run continued from the saved optimizer state, not from scratch
    assert int(m.optimizer.iterations.numpy()) == 2 * int(saved.optimizer.iterations.numpy())
    # a checkpoint of another configuration is never silently overwritten
    other = train.TrainConfig(epochs=3, batch_size=128, seed=3)
    with pytest.raises(ValueError, match="holds a checkpoint of another run"):
        train.train(model(), ds, other, tmp_path, meta=meta, verbose=0)


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    from qfcal.pipeline import data, models, train

    folder = sys.argv[1]
    ds = data.load("fashion_mnist").subset(256, 64, seed=0)
    model = models.build("v2", "qfriendly", input_shape=ds.image_shape, alpha=0.25)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    cfg = train.TrainConfig(epochs=1, batch_size=64, seed=1)
    trained, hist = train.train(model, ds, cfg, folder, verbose=0, distribute=mirrored)
    replicas = mirrored.num_replicas_in_sync
    # the checkpoint written under the mirrored strategy resumes under the default one
    cfg2 = train.TrainConfig(epochs=2, batch_size=64, seed=1)
    try:
        train.train(model, ds, cfg2, folder, verbose=0, distribute="none")
        resumed = "refused?"
    except ValueError as e:  # another configuration (epochs): refused, as documented
        resumed = "refused" if "another run" in str(e) else repr(e)
    again, hist2 = train.train(model, ds, cfg, folder, verbose=0, distribute="none")
    try:
        train.strategy("horovod")
        bad = None
    except ValueError as e:
        bad = str(e)
    print(json.dumps({
        "replicas": replicas, "epochs": len(hist["loss"]), "loss": hist["loss"][-1],
        "resumed": resumed, "same_history": hist2 == hist, "bad": bad,
        "weights_equal": all(
            (a == b).all() for a, b in zip(trained.get_weights(), again.get_weights())
        ),
    }))
    """
)


def test_mirrored_strategy_trains_and_its_checkpoint_loads_without_it(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["replicas"] == 2
    assert got["epochs"] == 1 and got["loss"] > 0
    assert got["resumed"] == "refused"
    # the finished run's checkpoint reloads under the default strategy: same weights, history
    assert got["same_history"] and got["weights_equal"]
    assert "distribute must be one of auto, none, mirrored, got 'horovod'" in got["bad"]
    assert (tmp_path / "ckpt" / "last.keras").is_file()


def test_progress_is_a_line_per_epoch_off_a_terminal():
    """Keras's progress bar redraws with carriage returns; in a log file or CI that is
    thousands of lines: "auto" gives one line per epoch there, the bar on a terminal."""
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert train.keras_verbose("auto", io.StringIO()) == 2
    assert train.keras_verbose("auto", Tty()) == 1
    assert train.keras_verbose(0, Tty()) == 0 and train.keras_verbose(1, io.StringIO()) == 1
