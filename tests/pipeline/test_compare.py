"""The calibration shoot-out on a tiny model: the table is checked for internal consistency and
its true errors are recomputed here, independently, from the raw tensors."""

import json
import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")
import qfcal  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from qfcal.pipeline import compare, compare_report, export, fold, models, peers  # noqa: E402


@pytest.fixture(scope="module")
def model():
    m = fold.fold_batch_norm(models.build("v2", "qfriendly", input_shape=(16, 16, 1), alpha=0.25))
    models.variance_preserving_init(m, seed=3)
    return m


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(11)
    calib = rng.uniform(0, 1, (10, 16, 16, 1)).astype(np.float32)
    held = rng.uniform(0, 1, (24, 16, 16, 1)).astype(np.float32)
    return calib, held


@pytest.fixture(scope="module")
def table(model, images):
    calib, held = images
    return compare.compare(model, calib, held, batch_size=10)


def test_every_tensor_has_every_method(table, model):
    from qfcal.pipeline.taps import tap_names

    assert table.tensors == tap_names(model)
    labels = [m for m, _ in compare.METHODS]
    assert [m.method for m in table.methods] == labels
    assert len(table.rows) == len(table.tensors) * len(labels)
    for t in table.tensors:
        for m in labels:
            r = table.row(t, m)
            assert r.min <= 0.0 <= r.max and r.scale > 0


def test_optimal_has_the_lowest_histogram_cost_in_every_row(table):
    for t in table.tensors:
        best = table.row(t, "optimal").hist_mse
        for m, _ in compare.METHODS:
            other = table.row(t, m).hist_mse
            assert best <= other * (1 + 1e-6) + 1e-30, (t, m, best, other)


def test_ranges_are_what_search_gives_on_the_histograms(table):
    for t in table.tensors[::7]:
        for label, opts in compare.METHODS:
            r = qfcal.search(table.histograms[t], bits=8, **opts)
            row = table.row(t, label)
            assert (row.scale, row.zero_point, row.min, row.max) == (
                r.scale, r.zero_point, r.min, r.max
            )  # fmt: skip


def _raw(model, table, images, batch_size=10):
    """Every tapped tensor's raw activations on `images`, from a model of our own, in the
    batches the table used (TensorFlow's CPU kernels may round the last bits differently for
    another batch composition)."""
    names = [
        n for n in table.tensors if not isinstance(model.get_layer(n), keras.layers.InputLayer)
    ]
    taps = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    outs = [taps(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    raw = {
        n: np.concatenate([np.asarray(o[k], dtype=np.float64).ravel() for o in outs])
        for k, n in enumerate(names)
    }
    raw.update({n: images.astype(np.float64).ravel() for n in table.tensors if n not in raw})
    return raw


def _mse(x, lo, hi, scale):
    # an independent formulation: clamp to the range, then snap to the nearest level
    y = np.clip(x, lo, hi)
    y = lo + np.round((y - lo) / scale) * scale
    return float(np.mean((x - y) ** 2))


def test_true_errors_recomputed_from_the_raw_tensors(table, model, images):
    calib, held = images
    raw, raw_calib = _raw(model, table, held), _raw(model, table, calib)
    for t in table.tensors:
        x = raw[t]
        for m, _ in compare.METHODS:
            r = table.row(t, m)
            mse = _mse(x, r.min, r.max, r.scale)
            assert r.true_mse == pytest.approx(mse, rel=1e-6, abs=1e-300), (t, m)
            sq = 10 * math.log10(float(np.mean(x * x)) / mse) if mse > 0 else math.inf
            assert r.true_sqnr_db == pytest.approx(sq, rel=1e-6), (t, m)
            mse_calib = _mse(raw_calib[t], r.min, r.max, r.scale)
            assert r.calib_mse == pytest.approx(mse_calib, rel=1e-6, abs=1e-300), (t, m)


def test_oracle_is_optimal_on_the_evaluation_activations(table, model, images):
    _, held = images
    raw = _raw(model, table, held)
    for t in table.tensors:
        h = qfcal.Histogram(table.histograms[t].bins)
        h.update(raw[t].astype(np.float32))
        r = qfcal.search(h, bits=8)
        mse = _mse(raw[t], r.min, r.max, r.scale)
        assert table.oracle_mse[t] == pytest.approx(mse, rel=1e-6, abs=1e-300), t
    lowest = [min(r.true_mse for r in table.rows if r.tensor == t) for t in table.tensors]
    wins = sum(
        table.oracle_mse[t] <= low * (1 + compare.TIE)
        for t, low in zip(table.tensors, lowest, strict=True)
    )
    assert table.oracle_lowest == wins


def test_method_summaries_follow_the_rows(table):
    n = len(table.tensors)
    for s in table.methods:
        mine = [r for r in table.rows if r.method == s.method]
        wins = sum(
            1
            for r in mine
            if r.true_mse
            <= min(o.true_mse for o in table.rows if o.tensor == r.tensor) * (1 + 1e-12)
        )
        assert s.best_true == wins and 0 <= wins <= n
        near = sum(
            1
            for r in mine
            if r.true_mse
            <= min(o.true_mse for o in table.rows if o.tensor == r.tensor) * (1 + compare.NEAR)
        )
        assert s.near_best == near and wins <= near <= n
        calib_wins = sum(
            1
            for r in mine
            if r.calib_mse
            <= min(o.calib_mse for o in table.rows if o.tensor == r.tensor) * (1 + 1e-12)
        )
        assert s.best_calib == calib_wins
        assert s.seconds == pytest.approx(sum(r.seconds for r in mine))
        assert s.top1 is None
    # every tensor has at least one best method
    assert sum(s.best_true for s in table.methods) >= n


def test_report_files(table, tmp_path):
    paths = compare_report.write(table, tmp_path, "tiny")
    names = {p.split("/")[-1] for p in paths}
    assert {"compare.json", "compare.md", "sqnr_by_method.png", "worst_layers.png"} <= names
    doc = json.loads((tmp_path / "compare.json").read_text())
    assert len(doc["rows"]) == len(table.rows)
    md = (tmp_path / "compare.md").read_text()
    for t in table.tensors:
        assert f"| {t} |" in md


def test_end_to_end_top1_per_method_at_8_and_4_bits(model, images):
    calib, held = images
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (40, 16, 16, 1)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    two = [m for m in compare.METHODS if m[0] in ("minmax", "optimal")]
    c8 = compare.compare(model, calib, held, methods=two, accuracy=(x, y), progress=False)
    # recompute the optimal method's top-1 from its own int8 .tflite
    ranges = {t: (c8.row(t, "optimal").min, c8.row(t, "optimal").max) for t in c8.tensors}
    it = Interpreter(model_content=export.to_int8_tflite(model, ranges))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    s, z = inp["quantization"]
    hits = 0
    for img, label in zip(x, y, strict=True):
        it.set_tensor(inp["index"], np.clip(np.round(img / s) + z, -128, 127).astype(np.int8)[None])
        it.invoke()
        hits += int(np.argmax(it.get_tensor(out["index"])[0]) == label)
    top = {m.method: m.top1 for m in c8.methods}
    assert top["optimal"] == pytest.approx(hits / len(x))
    assert c8.float_top1 is not None and c8.accuracy_backend.startswith("int8 .tflite")
    c4 = compare.compare(model, calib, held, bits=4, methods=two, accuracy=(x, y), progress=False)
    assert c4.accuracy_backend == "FakeQuant graph, 4-bit"
    assert all(m.top1 is not None and 0.0 <= m.top1 <= 1.0 for m in c4.methods)
    # 4-bit grids are coarser: every tensor's error grows
    for t in c4.tensors:
        assert c4.row(t, "optimal").hist_mse >= c8.row(t, "optimal").hist_mse


def test_bad_arguments(model, images):
    calib, held = images
    with pytest.raises(ValueError, match="bits must be in 2..16, got 1"):
        compare.compare(model, calib, held, bits=1)
    with pytest.raises(ValueError, match="must not be empty"):
        compare.compare(model, calib[:0], held)
    with pytest.raises(ValueError, match="distinct labels"):
        compare.compare(model, calib, held, methods=[("a", {}), ("a", {})])


def test_peers_own_calibrators_on_the_same_tensors(model, images):
    calib, held = images
    have = [k for k, v in peers.available_peers().items() if not v.startswith("not")]
    if not have:
        pytest.skip("neither torch nor onnxruntime is installed")
    two = [m for m in compare.METHODS if m[0] in ("entropy", "greedy", "percentile 99.999")]
    c = compare.compare(model, calib, held, methods=two, peers=have, progress=False)
    assert c.peers == have
    for p in have:
        for t in c.tensors:
            r = c.row(t, p)
            assert math.isnan(r.hist_mse)  # not on qfcal's grid: no histogram cost
            assert r.min <= 0.0 <= r.max and r.true_mse >= 0.0
    assert len(c.peer_notes) == len(have)
    doc = c.to_json()
    assert doc["peers"] == have and all(
        r["hist_mse"] is None for r in doc["rows"] if r["method"] in have
    )
    # PyTorch's observer and qfcal's greedy walk implement the same algorithm
    if "torch HistogramObserver" in have:
        widths = [
            (c.row(t, "torch HistogramObserver").max - c.row(t, "torch HistogramObserver").min)
            / (c.row(t, "greedy").max - c.row(t, "greedy").min)
            for t in c.tensors
        ]
        assert 0.8 < float(np.median(widths)) < 1.25
    with pytest.raises(ValueError, match="peers must be among"):
        compare.compare(model, calib, held, methods=two, peers=["tensorrt"])


def test_ort_peers_take_a_last_smaller_batch():
    # found by the shoot-out with 100 calibration images in batches of 64: ONNX Runtime's
    # collector stacks the batches it is given, which needs one shape
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4, 4, 8)).astype(np.float32)
    for peer in (peers.PEERS["ort entropy"], peers.PEERS["ort percentile 99.999"]):
        split, whole = peer([x[:64], x[64:]], 8), peer([x], 8)
        assert split == whole
