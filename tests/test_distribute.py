"""Training under TensorFlow's distribution strategies: MirroredStrategy on two logical CPU
devices (the same code path as several GPUs), checkpoints that resume under another strategy."""

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("tensorflow")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    from qfcal import data, models, train

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
