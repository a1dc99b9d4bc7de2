"""MobileNet builders: block structure of each variant (needs the tf extra)."""

import pytest

keras = pytest.importorskip("keras")
models = pytest.importorskip("qfcal.pipeline.models")

CASES = [(a, v) for a in ("v1", "v2") for v in ("standard", "qfriendly")]


@pytest.fixture(scope="module")
def built():
    return {c: models.build(*c, alpha=0.25) for c in CASES}


def consumers(model, layer):
    out = layer.output
    return [
        later
        for later in model.layers
        if any(t is out for t in (later.input if isinstance(later.input, list) else [later.input]))
    ]


@pytest.mark.parametrize("case", CASES)
def test_output_and_small_input_strides(built, case):
    m = built[case]
    assert m.output_shape == (None, 10)
    # 32x32 inputs end on a 4x4 grid (stem and first stride-2 block at stride 1)
    assert tuple(m.get_layer("pool").input.shape)[1:3] == (4, 4)


@pytest.mark.parametrize("case", CASES)
def test_depthwise_blocks_follow_the_variant(built, case):
    m = built[case]
    dws = [x for x in m.layers if isinstance(x, keras.layers.DepthwiseConv2D)]
    assert len(dws) == (13 if case[0] == "v1" else 17)
    for dw in dws:
        nxt = consumers(m, dw)
        assert len(nxt) == 1
        if case[1] == "qfriendly":
            # no BN, no activation: straight into the pointwise / projection 1x1 convolution
            assert isinstance(nxt[0], keras.layers.Conv2D) and nxt[0].kernel_size == (1, 1)
            assert dw.use_bias
        else:
            assert isinstance(nxt[0], keras.layers.BatchNormalization)
            act = consumers(m, nxt[0])[0]
            assert isinstance(act, keras.layers.ReLU) and act.max_value == 6.0
            assert not dw.use_bias


@pytest.mark.parametrize("case", CASES)
def test_activations_are_relu6_or_relu(built, case):
    relus = [x for x in built[case].layers if isinstance(x, keras.layers.ReLU)]
    assert relus
    want = None if case[1] == "qfriendly" else 6.0
    assert all((r.max_value is None if want is None else r.max_value == want) for r in relus)


def test_v2_has_linear_projections_and_residual_adds(built):
    for variant in ("standard", "qfriendly"):
        # the paper's widths (alpha 1): a residual add in the 10 stride-1 blocks whose input and
        # output widths match
        m = models.build("v2", variant, alpha=1.0)
        adds = [x for x in m.layers if isinstance(x, keras.layers.Add)]
        assert [a.name for a in adds] == [
            f"block{i}_add" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)
        ]
        for a in adds:
            left, right = a.input
            assert tuple(left.shape) == tuple(right.shape)
        for p in (x for x in built[("v2", variant)].layers if x.name.endswith("_project")):
            bn = consumers(built[("v2", variant)], p)[0]
            assert isinstance(bn, keras.layers.BatchNormalization)
            after = consumers(built[("v2", variant)], bn)
            assert not any(isinstance(c, keras.layers.ReLU) for c in after)


@pytest.mark.parametrize("arch", ["v1", "v2"])
def test_stem_stride_two_halves_small_inputs_at_the_stem(arch):
    m = models.build(arch, "qfriendly", alpha=0.25, input_shape=(28, 28, 1), stem_stride=2)
    assert m.get_layer("stem").strides == (2, 2)
    # the stem halves, the first stride-2 block keeps stride 1: 28-14-7-4-2
    assert tuple(m.get_layer("pool").input.shape)[1:3] == (2, 2)
    default = models.build(arch, "qfriendly", alpha=0.25, input_shape=(28, 28, 1))
    assert default.get_layer("stem").strides == (1, 1)
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2, got 3"):
        models.build(arch, "qfriendly", alpha=0.25, stem_stride=3)


def test_depthwise_l2_and_bad_arguments():
    m = models.build("v1", "qfriendly", alpha=0.25, depthwise_l2=1e-4)
    dws = [x for x in m.layers if isinstance(x, keras.layers.DepthwiseConv2D)]
    assert all(dw.depthwise_regularizer is not None for dw in dws)
    with pytest.raises(ValueError, match="variant must be one of standard, qfriendly, got 'x'"):
        models.build("v1", "x")
    with pytest.raises(ValueError, match="arch must be one of v1, v2, got 'v3'"):
        models.build("v3")
    with pytest.raises(ValueError, match="alpha"):
        models.mobilenet_v2(alpha=0)
    with pytest.raises(ValueError, match="input_shape"):
        models.mobilenet_v1(input_shape=(4, 4, 1))


def test_import_qfcal_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, qfcal, qfcal.pipeline.data\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'torch', 'onnxruntime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
