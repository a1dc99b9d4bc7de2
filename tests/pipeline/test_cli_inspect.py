"""``qfcal inspect MODEL``: the folded weights of a saved Keras model, per layer, with a plot;
the command line's errors."""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from qfcal import cli  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A depthwise base with the seed's failure planted (one channel's batch-norm variance
    shrunk to nothing), nested under a Sequential head, saved as .keras and .h5."""
    keras.utils.set_random_seed(5)
    i = keras.Input((12, 12, 8))
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="dw")(i)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 1, use_bias=False, name="pw")(x)
    x = keras.layers.BatchNormalization(name="pw_bn")(x)
    base = keras.Model(i, keras.layers.ReLU()(x), name="base")
    bn = base.get_layer("dw_bn")
    gamma, beta, mean, var = bn.get_weights()
    var[:] = 1.0
    var[3] = 1e-7
    bn.set_weights([np.ones_like(gamma), beta, mean, var])
    model = keras.Sequential(
        [
            keras.Input((12, 12, 8)),
            base,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, name="logits"),
        ],
        name="tiny",
    )
    folder = tmp_path_factory.mktemp("models")
    model.save(folder / "tiny.keras")
    model.save(folder / "tiny.h5")
    return folder


def test_inspect_prints_the_table_and_writes_the_plot(saved, tmp_path, capsys):
    plot, doc = tmp_path / "w.png", tmp_path / "w.json"
    code = cli.main(["inspect", str(saved / "tiny.keras"), "--plot", str(plot), "--json", str(doc)])
    out = capsys.readouterr().out
    assert code == 0
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split()}
    assert rows["base/dw"][1:3] == ["depthwise", "8"] and rows["base/dw"][-1] == "HIT"
    assert rows["base/pw"][-1] != "HIT" and rows["logits"][-1] != "HIT"
    assert "8-bit" in rows["layer"] and "6-bit" in rows["layer"] and "4-bit" in rows["layer"]
    summary = " ".join(out[out.index("hit: 1 of 3 layers") :].split())
    assert "base/dw (depthwise, 0 dead" in summary and "base/pw" not in summary
    assert plot.read_bytes()[:8] == PNG and f"plot: {plot}" in out
    j = json.loads(doc.read_text())
    assert j["hit"] == ["base/dw"] and j["model"] == str(saved / "tiny.keras")
    assert [r["name"] for r in j["layers"]] == ["base/dw", "base/pw", "logits"]


def test_inspect_defaults_and_h5(saved, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["inspect", str(saved / "tiny.h5"), "--bits", "8,3"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "tiny_weights.png").read_bytes()[:8] == PNG  # the default plot
    header = out.splitlines()[2]
    assert "3-bit" in header and "6-bit" not in header and "4-bit" not in header
    assert out.splitlines()[4].split()[-1] == "HIT"  # base/dw
    (tmp_path / "tiny_weights.png").unlink()
    assert cli.main(["inspect", str(saved / "tiny.keras"), "--plot", "none"]) == 0
    assert not list(tmp_path.iterdir()) and "plot:" not in capsys.readouterr().out


def test_inspect_errors(saved, tmp_path, capsys):
    missing = tmp_path / "absent.keras"
    assert cli.main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"qfcal inspect: error: model file {str(missing)!r} does not exist" in err
    assert "Traceback" not in err
    bad = tmp_path / "notes.txt"
    bad.write_text("not a model")
    assert cli.main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "is not a Keras model" in err and "Traceback" not in err
    for bits, why in (("8,1", "bit widths must be in 2..16, got [1]"), ("8,x", "'8,x'")):
        with pytest.raises(SystemExit) as e:
            cli.main(["inspect", str(saved / "tiny.keras"), "--bits", bits])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "argument --bits" in err and why in err
