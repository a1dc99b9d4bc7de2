"""The end-to-end job, CI-sized: a few hundred real Fashion-MNIST images, one short epoch, every
step to an int8 .tflite whose accuracy is computed; resumption; the command line's errors."""

import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from qfcal import cli  # noqa: E402
from qfcal.pipeline import data, steps, train  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed (.ci/run installs it)",
)
TINY = [
    "--limit-train", "400", "--limit-test", "300", "--epochs", "1", "--alpha", "0.25",
    "--batch-size", "64", "--latency-runs", "5", "--method", "optimal",
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
        "histograms.png", "sqnr.png", "accuracy.png", "weights.png",
    ):  # fmt: skip
        assert (run_dir / name).is_file(), name
    for png in run_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # atomic writes leave no temporary files behind
    assert not [p for p in run_dir.iterdir() if ".tmp" in p.name]
    md = (run_dir / "report.md").read_text()
    assert "int8 .tflite" in md and "![accuracy](accuracy.png)" in md
    # the float model's folded weights per layer: every depthwise, convolution and dense layer
    weights = json.loads((run_dir / "report.json").read_text())["weights"]
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    weighted = (keras.layers.DepthwiseConv2D, keras.layers.Conv2D, keras.layers.Dense)
    names = [x.name for x in model.layers if isinstance(x, weighted)]
    assert [r["name"] for r in weights["layers"]] == names
    assert weights["bits"] == [8, 6, 4] and "## Weights per layer" in md
    assert weights["summary"] in md and "![weights](weights.png)" in md
    for r in weights["layers"]:
        assert f"| {r['name']} | {r['kind']} | {r['channels']} |" in md


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


def test_report_sets_the_other_weight_granularity_beside_the_run(run_dir):
    """The run quantizes weights per tensor; the report also gives the top-1 of the int8 model
    with the same ranges and per-channel weights (the seed's question, side by side)."""
    from qfcal.pipeline import evaluate, export, fold

    rep = json.loads((run_dir / "report.json").read_text())
    other = rep["evaluation"]["other_weights"]
    assert rep["config"]["weights"] == "per-tensor" and other["weights"] == "per-channel"
    model = fold.fold_batch_norm(train.load_model(run_dir / "model.keras"))
    content = export.to_int8_tflite(model, steps.load_ranges(run_dir / "ranges.json"),
                                    weights="per-channel")  # fmt: skip
    ds = data.load("fashion_mnist").subset(400, 300, seed=0)
    pred = evaluate.predict_tflite(evaluate.TFLiteModel(content), ds)
    assert other["top1"] == pytest.approx(float(np.mean(pred == ds.labels("test"))), abs=1e-12)
    assert other["size_bytes"] == len(content)
    md = (run_dir / "report.md").read_text()
    assert "| int8 .tflite, per-tensor weights |" in md
    assert f"| int8 .tflite, per-channel weights | {100 * other['top1']:.2f}% |" in md


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


def test_calibrate_method_auto(run_dir, tmp_path, monkeypatch):
    """``qfcal calibrate --method auto``: the method chosen by the exported int8 model's output
    on calibration images each trial's ranges did not see (two candidates, two folds here to
    keep CI short; the defaults are six and four)."""
    import shutil

    from qfcal import selection

    monkeypatch.setattr(
        selection,
        "DEFAULT_CANDIDATES",
        {"optimal": {"method": "optimal"}, "clipped": {"method": "percentile", "percentile": 90.0}},
    )
    monkeypatch.setattr(selection, "DEFAULT_FOLDS", 2)
    work = tmp_path / "auto"
    shutil.copytree(run_dir, work)
    assert cli.main(["calibrate", "--out", str(work), "--method", "auto"]) == 0
    doc = json.loads((work / "run.json").read_text())
    sel = doc["steps"]["calibrate"]["selection"]
    assert set(sel["errors"]) == {"optimal", "clipped"}
    assert sel["metric"] == "kl"  # the logits' KL divergence
    # ten images (one per class), dealt round-robin into two folds
    assert sel["folds"] == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    # clipping at the 90th percentile costs output accuracy: kept out
    assert sel["errors"]["clipped"] > sel["errors"]["optimal"] and sel["chosen"] == "optimal"
    ranges = json.loads((work / "ranges.json").read_text())
    assert {r["method"] for r in ranges.values()} == {"optimal"}
    # the same images (counted per fold, then merged): the same totals; the activations of
    # other batch compositions differ in their last bits, so the ranges agree to a fraction
    before = json.loads((run_dir / "ranges.json").read_text())
    assert ranges.keys() == before.keys()
    for name, r in ranges.items():
        assert r["scale"] == pytest.approx(before[name]["scale"], rel=0.02), name
    hists = steps.load_histograms(work / "histograms.npz")
    assert {n: h.total for n, h in hists.items()} == {
        n: h.total for n, h in steps.load_histograms(run_dir / "histograms.npz").items()
    }
    assert doc["config"]["method"] == "auto"


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
        steps.RunConfig(variant="x").check()
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2, got 4"):
        steps.RunConfig(stem_stride=4).check()


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


def test_command_line_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--data", "--arch", "--variant", "--alpha", "--epochs", "--weights", "--method"):
        assert opt in text


def test_compare_on_the_run_folder(run_dir, tmp_path, capsys):
    import shutil

    from qfcal.pipeline import compare

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
