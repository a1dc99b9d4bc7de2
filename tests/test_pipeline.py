"""The end-to-end job, CI-sized: a few hundred real Fashion-MNIST images, one short epoch, every
step to an int8 .tflite whose accuracy is computed; resumption; the command line's errors."""

import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from qfcal import cli, data, pipeline, train  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed (.ci/run installs it)",
)
TINY = [
    "--limit-train", "400", "--limit-test", "300", "--epochs", "1", "--alpha", "0.25",
    "--batch-size", "64", "--latency-runs", "5",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed (.ci/run installs it)")
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["run", *TINY, "--out", str(out)]) == 0
    return out


def test_run_writes_every_artifact(run_dir):
    for name in (
        "model.keras", "model_float.tflite", "model_int8.tflite", "ranges.json",
        "histograms.npz", "report.json", "report.md", "run.json",
        "histograms.png", "sqnr.png", "accuracy.png",
    ):  # fmt: skip
        assert (run_dir / name).is_file(), name
    for png in run_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # atomic writes leave no temporary files behind
    assert not [p for p in run_dir.iterdir() if ".tmp" in p.name]
    md = (run_dir / "report.md").read_text()
    assert "int8 .tflite" in md and "![accuracy](accuracy.png)" in md


def test_reported_int8_accuracy_is_the_tflite_accuracy(run_dir):
    rep = json.loads((run_dir / "report.json").read_text())
    ds = data.load("fashion_mnist").subset(400, 300, seed=0)
    x = train.to_float(ds.images("test"))
    it = Interpreter(model_content=(run_dir / "model_int8.tflite").read_bytes())
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    s, z = inp["quantization"]
    preds = []
    for img in x:
        it.set_tensor(inp["index"], np.clip(np.round(img / s) + z, -128, 127).astype(np.int8)[None])
        it.invoke()
        preds.append(int(np.argmax(it.get_tensor(out["index"])[0])))
    acc = float(np.mean(np.array(preds) == ds.labels("test")))
    ev = rep["evaluation"]
    assert ev["test_images"] == 300
    assert ev["top1"]["tflite_int8"] == pytest.approx(acc, abs=1e-12)
    assert ev["int8_drop_points"] == pytest.approx(
        100 * (ev["top1"]["tflite_float"] - ev["top1"]["tflite_int8"])
    )
    for k in ("tflite_float", "tflite_int8"):
        lat = ev["latency"][k]
        assert 0 < lat["median_ms"] <= lat["p90_ms"]
        assert ev["size_bytes"][k] == (run_dir / f"model_{k[7:]}.tflite").stat().st_size
    assert 0.0 <= ev["agreement_float_int8"] <= 1.0


def test_tflite_carries_the_scales_of_ranges_json(run_dir):
    ranges = json.loads((run_dir / "ranges.json").read_text())
    it = Interpreter(model_content=(run_dir / "model_int8.tflite").read_bytes())
    have = set()
    for d in it.get_tensor_details():
        q = d["quantization_parameters"]
        if d["dtype"] == np.int8 and len(q["scales"]) == 1:
            have.add((float(q["scales"][0]), int(q["zero_points"][0])))
    want = {(float(np.float32(r["scale"])), r["zero_point"]) for r in ranges.values()}
    assert want <= have, sorted(want - have)[:5]
    assert {r["method"] for r in ranges.values()} == {"optimal"}


def test_steps_rerun_on_the_folder_from_run_json(run_dir, tmp_path):
    """``qfcal calibrate`` and ``export`` on the folder reuse its options; a different method
    changes ranges.json."""
    import shutil

    work = tmp_path / "again"
    shutil.copytree(run_dir, work)
    assert cli.main(["calibrate", "--out", str(work), "--method", "minmax"]) == 0
    ranges = json.loads((work / "ranges.json").read_text())
    assert {r["method"] for r in ranges.values()} == {"minmax"}
    doc = json.loads((work / "run.json").read_text())
    assert doc["config"]["method"] == "minmax" and doc["config"]["limit_train"] == 400
    assert cli.main(["export", "--out", str(work), "--weights", "per-channel"]) == 0
    it = Interpreter(model_content=(work / "model_int8.tflite").read_bytes())
    assert any(len(d["quantization_parameters"]["scales"]) > 1 for d in it.get_tensor_details()), (
        "per-channel weights expected"
    )


@needs_fashion
def test_training_resumes_after_an_interruption(tmp_path, capsys):
    ds = data.load("fashion_mnist").subset(256, 10, seed=0)
    cfg = train.TrainConfig(epochs=2, batch_size=128, seed=3)

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    def model():
        from qfcal import models

        return models.build("v1", "qfriendly", input_shape=(28, 28, 1), alpha=0.25)

    meta = {"arch": "v1"}
    with pytest.raises(KeyboardInterrupt):
        train.train(model(), ds, cfg, tmp_path, meta=meta, verbose=0, callbacks=[Stop()])
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epochs_done"] == 1 and len(state["history"]["loss"]) == 1
    saved = train.load_model(tmp_path / "last.keras")
    m, hist = train.train(model(), ds, cfg, tmp_path, meta=meta, verbose=0)
    assert "resuming" in capsys.readouterr().out
    assert len(hist["loss"]) == 2
    assert json.loads((tmp_path / "state.json").read_text())["epochs_done"] == 2
    # the resumed run continued from the saved optimizer state, not from scratch
    assert int(m.optimizer.iterations.numpy()) == 2 * int(saved.optimizer.iterations.numpy())
    # a checkpoint of another configuration is never silently overwritten
    other = train.TrainConfig(epochs=3, batch_size=128, seed=3)
    with pytest.raises(ValueError, match="holds a checkpoint of another run"):
        train.train(model(), ds, other, tmp_path, meta=meta, verbose=0)


def test_missing_dataset_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QFCAL_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    spec = {**data.DATASETS["fashion_mnist"], "system": [str(tmp_path / "none")], "debian": None}
    monkeypatch.setattr(data, "DATASETS", {**data.DATASETS, "fashion_mnist": spec})
    args = ["run", *TINY, "--out", str(tmp_path / "r"), "--data-dir", str(tmp_path)]
    code = cli.main([*args, "--no-download"])
    err = capsys.readouterr().err
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in err and str(tmp_path) in err
    assert "--no-download" in err


def test_unknown_dataset_and_variant(tmp_path, capsys):
    code = cli.main(["run", "--data", str(tmp_path / "no-such-folder"), "--out", str(tmp_path)])
    assert code == 2 and "no-such-folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--variant", "tiny"])
    assert e.value.code == 2 and "invalid choice: 'tiny'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="variant must be one of standard, qfriendly, got 'x'"):
        pipeline.RunConfig(variant="x").check()


def test_corrupt_model_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(train.ModelFileError, match="not a readable .keras model"):
        train.load_model(bad)
    code = cli.main(["export", "--out", str(tmp_path), "--model", str(bad)])
    assert code == 2 and "ranges.json" in capsys.readouterr().err  # first missing input named
    (tmp_path / "ranges.json").write_text("{}")
    code = cli.main(["export", "--out", str(tmp_path), "--model", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "not a readable .keras model" in err
    with pytest.raises(train.ModelFileError, match="does not exist"):
        train.load_model(tmp_path / "absent.keras")


def test_bad_training_options_name_the_option():
    with pytest.raises(ValueError, match="epochs must be at least 1, got 0"):
        train.TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="schedule must be one of cosine, step, got 'linear'"):
        train.TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="learning_rate must be positive, got nan"):
        train.TrainConfig(learning_rate=float("nan"))


def test_command_line_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--data", "--arch", "--variant", "--alpha", "--epochs", "--weights", "--method"):
        assert opt in text


def test_input_pipeline_is_seeded_and_scaled(tmp_path):
    tf = pytest.importorskip("tensorflow")
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
    tf = pytest.importorskip("tensorflow")
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


def test_compare_on_the_run_folder(run_dir, tmp_path, capsys):
    import shutil

    from qfcal import compare

    work = tmp_path / "cmp"
    shutil.copytree(run_dir, work)
    args = ["compare", "--out", str(work), "--bits", "8,4", "--eval-images", "32"]
    args += ["--accuracy-images", "60", "--methods", "minmax,optimal,entropy"]
    assert cli.main(args) == 0
    for bits in (8, 4):
        doc = json.loads((work / f"compare-{bits}bit" / "compare.json").read_text())
        assert doc["bits"] == bits and doc["eval_images"] == 32 and doc["accuracy_images"] == 60
        assert [m["method"] for m in doc["methods"]] == ["minmax", "optimal", "entropy"]
        assert all(m["top1"] is not None for m in doc["methods"])
        tensors = {r["tensor"] for r in doc["rows"]}
        for t in tensors:
            rows = {r["method"]: r for r in doc["rows"] if r["tensor"] == t}
            assert rows["optimal"]["hist_mse"] <= min(r["hist_mse"] for r in rows.values()) * (
                1 + 1e-6
            )
        assert (work / f"compare-{bits}bit" / "compare.md").is_file()
        assert doc["calibration_images"] == 10 and 0 <= doc["oracle_lowest"] <= len(tensors)
    # a larger calibration set goes to its own folder; the run's own report stays
    args = ["compare", "--out", str(work), "--calib-per-class", "2", "--eval-images", "16"]
    assert cli.main([*args, "--accuracy-images", "20", "--methods", "optimal,minmax"]) == 0
    doc = json.loads((work / "compare-8bit-2per-class" / "compare.json").read_text())
    assert doc["calibration_images"] == 20 and doc["eval_images"] == 16
    assert json.loads((work / "compare-8bit" / "compare.json").read_text())["eval_images"] == 32
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(m in text for m, _ in compare.METHODS), text
    assert cli.main(["compare", "--out", str(work), "--methods", "kl"]) == 2
