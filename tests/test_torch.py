"""qfcal.torch (one module under test, one file): the qfcal observer in PyTorch's eager flow,
against torch's own HistogramObserver and MinMaxObserver on a small CNN trained on real
Fashion-MNIST.

``pytest -s tests/test_torch.py`` prints the comparison tables (ranges, int8 accuracy, observer
time); timings are printed, never asserted (shared machine)."""

from __future__ import annotations

import copy
import io
import pickle
import sys
import time
import warnings

import numpy as np
import pytest
import qfcal
from readme_examples import run as run_example

torch = pytest.importorskip("torch")
qtorch = pytest.importorskip("qfcal.torch")
from qfcal.pipeline import data  # noqa: E402
from qfcal.torch import QfcalObserver  # noqa: E402
from torch import nn  # noqa: E402
from torch.ao.quantization import (  # noqa: E402
    DeQuantStub,
    HistogramObserver,
    MinMaxObserver,
    QConfig,
    QuantStub,
    convert,
    fuse_modules,
    get_default_qconfig,
    prepare,
)

ENGINE = next(
    (e for e in ("x86", "fbgemm", "qnnpack") if e in torch.backends.quantized.supported_engines),
    None,
)
# int8 top-1 may lose at most this many points against float (the 10000 test images).
ACCURACY_TOLERANCE = 1.0

pytestmark = [
    pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max"),  # reduce_range
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel"),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Net(nn.Module):
    """conv-relu-conv-relu-pool-linear, with the stubs eager quantization needs."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 7 * 7, 10)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.dequant(self.fc(torch.flatten(x, 1)))


def to_tensor(images: np.ndarray):
    """uint8 (n, 28, 28, 1) -> float (n, 1, 28, 28), zero mean-ish."""
    return torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - 0.3)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in x.split(500)])
    return float((pred == y).float().mean()) * 100


@pytest.fixture(scope="module")
def fmnist():
    try:
        ds = data.load("fashion_mnist")
    except data.DatasetNotFoundError:
        pytest.skip("dataset-fashion-mnist is not installed (.ci/run installs it)")
    rng = np.random.default_rng(0)
    train_idx = np.sort(rng.choice(ds.size("train"), 12_000, replace=False))
    calib_idx = data.calibration_indices(ds.labels("train"), per_class=32)  # 320 images
    test_idx = np.arange(ds.size("test"))
    return {
        "train": (
            to_tensor(ds.images("train", train_idx)),
            torch.from_numpy(ds.labels("train")[train_idx]),
        ),
        "calib": to_tensor(ds.images("train", calib_idx)).split(64),
        "test": (
            to_tensor(ds.images("test", test_idx)),
            torch.from_numpy(ds.labels("test")[test_idx]),
        ),
    }


@pytest.fixture(scope="module")
def trained(fmnist):
    """A float model trained for one pass over 12000 images (a few seconds), eval mode, fused."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = fmnist["train"]
    t0 = time.perf_counter()
    model.train()
    for xb, yb in zip(x.split(64), y.split(64), strict=True):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.eval()
    fused = fuse_modules(model, [["conv1", "relu1"], ["conv2", "relu2"]])
    acc = accuracy(fused, *fmnist["test"])
    print(f"\nfloat model: trained in {time.perf_counter() - t0:.1f} s, top-1 {acc:.2f}%")
    return fused, acc


def quantize(model, qconfig, batches):
    m = copy.deepcopy(model)
    m.qconfig = qconfig
    prepared = prepare(m)
    with torch.no_grad():
        for b in batches:
            prepared(b)
    return prepared, convert(copy.deepcopy(prepared))


def activation_sites(prepared) -> dict[str, nn.Module]:
    return {
        name.removesuffix(".activation_post_process"): mod
        for name, mod in prepared.named_modules()
        if name.endswith("activation_post_process")
    }


def captured_activations(prepared_with_sites, batches) -> dict[str, list]:
    """The tensors each activation observer sees, captured with forward hooks."""
    seen: dict[str, list] = {}
    handles = []
    for name, obs in activation_sites(prepared_with_sites).items():
        seen[name] = []
        handles.append(obs.register_forward_hook(lambda m, i, o, n=name: seen[n].append(o.clone())))
    with torch.no_grad():
        for b in batches:
            prepared_with_sites(b)
    for h in handles:
        h.remove()
    return seen


# ----------------------------------------------------------------------------------------------
# The module


def test_imports_the_real_torch():
    assert qtorch.torch is sys.modules["torch"]
    assert hasattr(qtorch.torch, "ao") and qtorch.__name__ == "qfcal.torch"


# ----------------------------------------------------------------------------------------------
# Against torch's observers


@pytest.mark.skipif(ENGINE is None, reason="no quantized engine in this torch build")
def test_against_torch_observers(fmnist, trained):
    model, float_acc = trained
    torch.backends.quantized.engine = ENGINE
    weight = get_default_qconfig(ENGINE).weight
    reduce = ENGINE != "qnnpack"
    configs = {
        "qfcal (optimal)": qtorch.qconfig(ENGINE),
        "HistogramObserver": QConfig(HistogramObserver.with_args(reduce_range=reduce), weight),
        "MinMaxObserver": QConfig(MinMaxObserver.with_args(reduce_range=reduce), weight),
    }
    calib = fmnist["calib"]
    results = {}
    for label, qc in configs.items():
        prepared, quantized = quantize(model, qc, calib)
        results[label] = (prepared, accuracy(quantized, *fmnist["test"]))

    # Ranges and observer time, observer by observer on the same captured activations.
    acts = captured_activations(results["qfcal (optimal)"][0], calib)
    ctors = {label: qc.activation for label, qc in configs.items()}
    ranges: dict[str, dict[str, tuple[float, float]]] = {}
    times: dict[str, tuple[float, float]] = {}
    for label, ctor in ctors.items():
        ranges[label], t_fwd, t_calc = {}, 0.0, 0.0
        for site, tensors in acts.items():
            obs = ctor()
            t0 = time.perf_counter()
            for t in tensors:
                obs(t)
            t1 = time.perf_counter()
            s, z = obs.calculate_qparams()
            t_fwd, t_calc = t_fwd + t1 - t0, t_calc + time.perf_counter() - t1
            s, z = float(s), int(z)
            ranges[label][site] = ((obs.quant_min - z) * s, (obs.quant_max - z) * s)
        times[label] = (t_fwd, t_calc)

    n = sum(t.numel() for ts in acts.values() for t in ts)
    print(f"\nengine {ENGINE}, activations quint8 0..{127 if reduce else 255}, weights {weight}")
    print(f"calibration: {sum(len(b) for b in calib)} images, {n / 1e6:.1f} M activation values")
    print(f"{'site':<8}" + "".join(f"{label:>24}" for label in ctors))
    for site in acts:
        cells = (f"[{lo:.4f}, {hi:.4f}]" for lo, hi in (ranges[lbl][site] for lbl in ctors))
        print(f"{site:<8}" + "".join(f"{c:>24}" for c in cells))
    print(f"{'model':<18}{'int8 top-1':>11}{'vs float':>9}{'forward s':>11}{'qparams s':>11}")
    print(f"{'float':<18}{float_acc:>10.2f}%")
    for label in ctors:
        acc, (t_fwd, t_calc) = results[label][1], times[label]
        print(f"{label:<18}{acc:>10.2f}%{acc - float_acc:>+9.2f}{t_fwd:>11.3f}{t_calc:>11.3f}")

    qfcal_acc = results["qfcal (optimal)"][1]
    assert qfcal_acc >= float_acc - ACCURACY_TOLERANCE, (qfcal_acc, float_acc)
    # the converted model holds exactly the observers' qparams
    prepared = results["qfcal (optimal)"][0]
    _, quantized = quantize(model, configs["qfcal (optimal)"], calib)
    s, z = prepared.conv1.activation_post_process.calculate_qparams()
    assert quantized.conv1.scale == pytest.approx(float(s), rel=0, abs=0)
    assert quantized.conv1.zero_point == int(z)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"reduce_range": True},
        {"dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric},
        {"quant_min": 0, "quant_max": 15, "method": "tf_enhanced"},
        {"method": "percentile", "percentile": 99.9, "bins": 2048},
        {"gamma": 3.0},
    ],
)
def test_qparams_are_qfcal_search_on_the_same_tensors(fmnist, trained, kwargs):
    prepared, _ = quantize(trained[0], qtorch.qconfig("qnnpack"), fmnist["calib"][:2])
    acts = captured_activations(prepared, fmnist["calib"][:2])
    for site, tensors in acts.items():
        obs = QfcalObserver(**kwargs)
        hist = qfcal.Histogram(kwargs.get("bins", qfcal.DEFAULT_BINS))
        for t in tensors:
            obs(t)
            hist.update(t.numpy())
        assert obs.histogram == hist
        r = qfcal.search(
            hist,
            qmin=obs.quant_min,
            qmax=obs.quant_max,
            symmetric=kwargs.get("qscheme") == torch.per_tensor_symmetric,
            **{k: v for k, v in kwargs.items() if k in ("method", "gamma", "percentile")},
        )
        s, z = obs.calculate_qparams()
        assert (s.dtype, s.shape, z.shape) == (torch.float32, (1,), (1,))
        assert (float(s), int(z)) == (r.scale, r.zero_point), site
        assert obs.search() == r
        assert float(obs.min_val) == hist.min and float(obs.max_val) == hist.max


def _range(obs):
    s, z = obs.calculate_qparams()
    return (
        float(s),
        int(z),
        (obs.quant_min - int(z)) * float(s),
        (obs.quant_max - int(z)) * float(s),
    )


@pytest.mark.parametrize(
    "kwargs, levels",
    [
        ({"quant_min": 0, "quant_max": 15}, 16),
        ({"quant_min": 0, "quant_max": 127}, 128),
        ({"reduce_range": True}, 128),
        ({"dtype": torch.qint8, "quant_min": -8, "quant_max": 7}, 16),
        ({"dtype": torch.quint4x2}, 16),
        ({}, 256),
    ],
)
def test_level_count_follows_quant_min_max(kwargs, levels):
    x = torch.from_numpy(np.random.default_rng(1).normal(0.3, 1.0, 50_000).astype(np.float32))
    obs = QfcalObserver(**kwargs)
    obs(x)
    s, z, lo, hi = _range(obs)
    assert obs.quant_max - obs.quant_min + 1 == levels
    assert (hi - lo) / s == pytest.approx(levels - 1, abs=1e-9)
    assert obs.quant_min <= z <= obs.quant_max
    q = torch.fake_quantize_per_tensor_affine(x, s, z, obs.quant_min, obs.quant_max)
    assert len(torch.unique(q)) <= levels
    # the same as qfcal's search over that many levels, and never the 256-level answer
    h = qfcal.Histogram()
    h.update(x.numpy())
    assert s == qfcal.search(h, qmin=obs.quant_min, qmax=obs.quant_max).scale
    if levels < 256:
        assert s != qfcal.search(h, qmin=0, qmax=255).scale
        # torch's HistogramObserver searches as if there were 256 levels: on the true error
        # of fake-quantizing x, qfcal's range for this many levels is the better one
        ref = HistogramObserver(**kwargs)
        ref(x)
        s_ref, z_ref, lo_ref, hi_ref = _range(ref)
        q_ref = torch.fake_quantize_per_tensor_affine(x, s_ref, z_ref, ref.quant_min, ref.quant_max)
        mse, mse_ref = float(((q - x) ** 2).mean()), float(((q_ref - x) ** 2).mean())
        print(
            f"\n{levels} levels {kwargs}: qfcal [{lo:.4f}, {hi:.4f}] mse {mse:.3e}, "
            f"HistogramObserver [{lo_ref:.4f}, {hi_ref:.4f}] mse {mse_ref:.3e}"
        )
        assert mse <= mse_ref


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric},
        {"dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric, "reduce_range": True},
        {
            "dtype": torch.qint8,
            "qscheme": torch.per_tensor_symmetric,
            "quant_min": -127,
            "quant_max": 127,
        },
        {"dtype": torch.quint8, "qscheme": torch.per_tensor_symmetric},
        {
            "dtype": torch.quint8,
            "qscheme": torch.per_tensor_symmetric,
            "quant_min": 0,
            "quant_max": 15,
        },
        {
            "dtype": torch.quint8,
            "qscheme": torch.per_tensor_symmetric,
            "quant_min": 0,
            "quant_max": 255,
        },
        {
            "dtype": torch.uint8,
            "qscheme": torch.per_tensor_symmetric,
            "quant_min": 0,
            "quant_max": 127,
        },
    ],
)
def test_symmetric_zero_point_is_torchs(kwargs):
    x = torch.from_numpy(np.random.default_rng(2).normal(0.5, 1.0, 20_000).astype(np.float32))
    obs, ref = QfcalObserver(**kwargs), MinMaxObserver(**kwargs)
    obs(x)
    ref(x)
    (s, z), (_, z_ref) = obs.calculate_qparams(), ref.calculate_qparams()
    assert int(z) == int(z_ref) and z.dtype == z_ref.dtype
    if kwargs["dtype"] == torch.qint8:
        assert int(z) == 0
    elif "quant_min" not in kwargs:
        assert int(z) == 128
    # the window is torch's, and qfcal searched exactly that window: when it is qfcal's own
    # symmetric window the histogram holds x, otherwise (mirrored) it holds -x
    h = qfcal.Histogram()
    h.update(-x.numpy() if obs.negated else x.numpy())
    r = qfcal.search(h, qmin=obs.quant_min, qmax=obs.quant_max, symmetric=True)
    assert float(s) == r.scale
    assert int(z) == (obs.quant_min + obs.quant_max - r.zero_point if obs.negated else r.zero_point)
    assert obs.negated == (kwargs.get("quant_min", 1) == 0 and kwargs["dtype"] != torch.qint8)
    assert float(obs.min_val) == float(x.min()) and float(obs.max_val) == float(x.max())


# ----------------------------------------------------------------------------------------------
# State, edge cases, errors


@pytest.mark.skipif(ENGINE is None, reason="no quantized engine in this torch build")
def test_state_dict_round_trip(fmnist, trained):
    torch.backends.quantized.engine = ENGINE
    model = trained[0]
    prepared, quantized = quantize(model, qtorch.qconfig(ENGINE), fmnist["calib"][:3])
    buf = io.BytesIO()
    torch.save(prepared.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # plain tensors and dicts only

    fresh = copy.deepcopy(model)
    fresh.qconfig = qtorch.qconfig(ENGINE)
    fresh = prepare(fresh)
    fresh.load_state_dict(state)
    before, after = activation_sites(prepared), activation_sites(fresh)
    for site, obs in before.items():
        assert after[site].histogram == obs.histogram
        s0, z0 = obs.calculate_qparams()
        s1, z1 = after[site].calculate_qparams()
        assert torch.equal(s0, s1) and torch.equal(z0, z1), site
    x = fmnist["test"][0][:200]
    with torch.no_grad():
        assert torch.equal(convert(fresh)(x), quantized(x))

    # deepcopy and pickle of a calibrated observer keep the histogram
    obs = before["conv1"]
    assert copy.deepcopy(obs).histogram == obs.histogram
    buf = io.BytesIO()
    torch.save(obs, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False).histogram == obs.histogram

    # a state for another grid is refused
    mirrored = QfcalObserver(qscheme=torch.per_tensor_symmetric, quant_min=0, quant_max=15)
    with pytest.raises(ValueError, match="different grid"):
        mirrored.load_state_dict(obs.state_dict())
    with pytest.raises(RuntimeError, match="_extra_state"):
        QfcalObserver().load_state_dict(
            {"eps": obs.eps, "min_val": obs.min_val, "max_val": obs.max_val}
        )


def test_empty_tensors_and_no_data():
    obs = QfcalObserver()
    empty = torch.empty(0, 3)
    assert obs(empty) is empty
    assert obs.histogram.total == 0
    with pytest.warns(UserWarning, match="seen no finite value"):
        s, z = obs.calculate_qparams()
    with pytest.warns(UserWarning, match="must run observer"):  # torch warns too
        s_ref, z_ref = HistogramObserver().calculate_qparams()
    assert (float(s), int(z)) == (float(s_ref), int(z_ref)) == (1.0, 0)

    obs(torch.tensor([float("nan"), float("inf")]))
    with pytest.warns(UserWarning, match="seen no finite value"):
        obs.calculate_qparams()
    obs(torch.tensor([-1.0, 0.0, 2.0, float("-inf")]))
    with pytest.warns(UserWarning, match="3 non-finite values"):
        s, z = obs.calculate_qparams()
    assert float(s) > 0 and 0 <= int(z) <= 255

    tiny = QfcalObserver()
    tiny(torch.tensor([1e-36, -2e-36]))  # below qfcal's magnitudes: torch's min/max answer
    with pytest.warns(UserWarning, match="falling back to torch's min/max"):
        s, z = tiny.calculate_qparams()
    ref = MinMaxObserver()
    ref(torch.tensor([1e-36, -2e-36]))
    assert (float(s), int(z)) == tuple(map(float, ref.calculate_qparams()))

    obs.reset_min_max_vals()
    assert obs.histogram.total == 0 and float(obs.min_val) == float("inf")
    # other dtypes and non-contiguous tensors are read as float32 values
    obs(torch.arange(12, dtype=torch.bfloat16).reshape(3, 4).t())
    assert (obs.histogram.min, obs.histogram.max, obs.histogram.total) == (0.0, 11.0, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obs.calculate_qparams()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"qscheme": torch.per_channel_affine}, "qscheme must be .* got torch.per_channel_affine"),
        ({"qscheme": torch.per_channel_symmetric}, "got torch.per_channel_symmetric"),
        ({"dtype": torch.qint32}, "dtype must be .* got torch.qint32"),
        ({"dtype": torch.float8_e4m3fn}, "got torch.float8_e4m3fn"),
        ({"is_dynamic": True}, "is_dynamic must be False"),
        ({"quant_min": 0}, "quant_min and quant_max must be given together.*quant_min=0"),
        ({"quant_min": 0, "quant_max": 300}, "quant_max=300"),
        ({"quant_min": 1, "quant_max": 15}, "quant_min=1"),
        ({"quant_min": 5, "quant_max": 5}, "quant_max=5"),
        ({"dtype": torch.qint8, "quant_min": -200, "quant_max": 0}, "quant_min=-200"),
        ({"bins": 8}, "bins must be in 16..=1048576, got 8"),
        ({"method": "kl"}, 'method must be one of .* got "kl"'),
        ({"gamma": 0.0}, "gamma must be a positive finite number, got 0"),
        ({"gamma": float("inf")}, "gamma must be"),
        ({"percentile": 120.0}, r"percentile must be in \(0, 100\], got 120"),
        (
            {
                "dtype": torch.qint8,
                "qscheme": torch.per_tensor_symmetric,
                "quant_min": -3,
                "quant_max": 12,
            },
            "quant_min=-3, quant_max=12.*zero point at 0",
        ),
        ({"qscheme": torch.per_tensor_symmetric, "reduce_range": True}, "zero point at 128"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QfcalObserver(**kwargs)


def test_bad_bins_type_and_qconfig_arguments():
    with pytest.raises(TypeError, match="bins must be an int, got 4096.0"):
        QfcalObserver(bins=4096.0)
    with pytest.raises(ValueError, match="backend must be one of .* got 'arm'"):
        qtorch.qconfig("arm")
    with pytest.raises(ValueError, match="gamma must be"):
        qtorch.qconfig(gamma=-1.0)  # at qconfig(), not later inside prepare()
    qc = qtorch.qconfig("qnnpack", method="entropy")
    act = qc.activation()
    assert isinstance(act, QfcalObserver) and act.method == "entropy"
    assert (act.quant_min, act.quant_max) == (0, 255)
    assert (
        qtorch.qconfig("x86").activation().quant_max,
        qtorch.qconfig("x86").weight().qscheme,
    ) == (
        127,
        torch.per_channel_symmetric,
    )


@pytest.mark.skipif(ENGINE is None, reason="no quantized engine in this torch build")
def test_fx_graph_mode():
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = ENGINE
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    x = torch.randn(16, 1, 28, 28)
    prepared = prepare_fx(m.eval(), QConfigMapping().set_global(qtorch.qconfig(ENGINE)), (x,))
    prepared(x)
    observers = {n: o for n, o in prepared.named_modules() if isinstance(o, QfcalObserver)}
    assert len(observers) == 4
    qparams = {(float(s), int(z)) for s, z in (o.calculate_qparams() for o in observers.values())}
    converted = convert_fx(prepared)
    conv, linear = converted.get_submodule("0"), converted.get_submodule("3")
    assert (conv.scale, conv.zero_point) in qparams  # conv+relu output
    assert (linear.scale, linear.zero_point) in qparams  # linear output
    with torch.no_grad():
        err = (converted(x) - m(x)).abs().max()
    assert err < 4 * linear.scale


# ----------------------------------------------------------------------------------------------
# PT2E


def test_pt2e_detection():
    flow = qtorch.pt2e_flow()
    print(f"\ntorch {torch.__version__}: PT2E flow {flow}")
    if flow is None:
        with pytest.raises(ImportError, match="pip install torchao"):
            qtorch.pt2e_observer()
        with pytest.raises(ImportError, match="torchao"):
            qtorch.pt2e_observer("torchao")
    with pytest.raises(ValueError, match="flow must be"):
        qtorch.pt2e_observer("tflite")


def test_pt2e_with_torchao(fmnist, trained):
    pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e", reason="PT2E needs torchao")
    from dataclasses import replace

    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    cls = qtorch.pt2e_observer("torchao")
    assert cls is qtorch.QfcalPT2EObserver and qtorch.pt2e_flow() == "torchao"
    config = xiq.get_default_x86_inductor_quantization_config()
    act = replace(
        config.input_activation, observer_or_fake_quant_ctr=cls.with_args(method="optimal")
    )
    quantizer = xiq.X86InductorQuantizer().set_global(
        replace(config, input_activation=act, output_activation=act)
    )
    float_model = copy.deepcopy(trained[0])
    x_test, y_test = fmnist["test"]
    batch = {"x": {0: torch.export.Dim("batch")}}
    exported = torch.export.export(float_model, (x_test[:8],), dynamic_shapes=batch).module()
    prepared = prepare_pt2e(exported, quantizer)
    observers = [m for m in prepared.modules() if isinstance(m, cls)]
    assert observers
    with torch.no_grad():
        for b in fmnist["calib"]:
            prepared(b)
    scales = {float(obs.calculate_qparams()[0]) for obs in observers}
    again = pickle.loads(pickle.dumps(observers[0]))  # the class is importable by name
    assert type(again) is cls and again.histogram == observers[0].histogram
    converted = convert_pt2e(prepared)
    quantize_op = torch.ops.quantized_decomposed.quantize_per_tensor.default
    in_graph = {float(n.args[1]) for n in converted.graph.nodes if n.target == quantize_op}
    assert scales <= in_graph, (scales, in_graph)
    acc = accuracy(converted, x_test, y_test)
    print(f"PT2E (torchao) with qfcal observers: top-1 {acc:.2f}% (float {trained[1]:.2f}%)")
    assert acc >= trained[1] - ACCURACY_TOLERANCE

    # loss-aware calibration of an exported model (which refuses train()/eval())
    prepared = prepare_pt2e(
        torch.export.export(float_model, (x_test[:8],), dynamic_shapes=batch).module(), quantizer
    )
    hists = qtorch.calibrate_loss_aware(prepared, fmnist["calib"][:3])
    observers = [m for m in prepared.modules() if isinstance(m, cls)]
    assert hists and all(obs.loss_weights is not None for obs in observers)
    acc = accuracy(convert_pt2e(prepared), x_test, y_test)
    print(f"PT2E, loss-aware: top-1 {acc:.2f}%")
    assert acc >= trained[1] - ACCURACY_TOLERANCE

    # the method chosen end to end (convert_pt2e by default)
    prepared = prepare_pt2e(
        torch.export.export(float_model, (x_test[:8],), dynamic_shapes=batch).module(), quantizer
    )
    cands = {"optimal": {"method": "optimal"}, "minmax": {"method": "minmax"}}
    sel = qtorch.calibrate_auto(prepared, fmnist["calib"][:4], candidates=cands, folds=2)
    assert set(sel.errors) == set(cands) and len(sel.batch_errors["minmax"]) == 4
    observers = [m for m in prepared.modules() if isinstance(m, cls)]
    assert {obs.method for obs in observers} == {sel.options["method"]}
    acc = accuracy(convert_pt2e(prepared), x_test, y_test)
    print(f"PT2E, auto ({sel.chosen}): top-1 {acc:.2f}%")
    assert acc >= trained[1] - ACCURACY_TOLERANCE


def test_pt2e_mixed_precision_from_a_plan(fmnist, trained):
    """observer_histograms -> qfcal.precision.plan -> apply_precision: the planned tensors come
    out of convert_pt2e as int16 quantize ops, and the output comes closer to float."""
    pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e", reason="PT2E needs torchao")
    from dataclasses import replace

    from qfcal.precision import plan
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    cls = qtorch.pt2e_observer("torchao")
    config = xiq.get_default_x86_inductor_quantization_config()
    act = replace(config.input_activation, observer_or_fake_quant_ctr=cls.with_args())
    quantizer = xiq.X86InductorQuantizer().set_global(
        replace(config, input_activation=act, output_activation=act)
    )
    x_test = fmnist["test"][0][:2000]
    with torch.no_grad():
        ref = trained[0](x_test)

    def prepared():
        batch = {"x": {0: torch.export.Dim("batch")}}
        exported = torch.export.export(
            copy.deepcopy(trained[0]), (x_test[:8],), dynamic_shapes=batch
        ).module()
        p = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for b in fmnist["calib"][:2]:
                p(b[:8])
        return p

    quantize_op = torch.ops.quantized_decomposed.quantize_per_tensor.default
    errors, wide = {}, {}
    for k in (0, 1, 100):
        model = prepared()
        hists = qtorch.observer_histograms(model)
        assert len(hists) >= 3 and all(h.finite > 0 for h in hists.values())
        p = plan(hists, tensors=k)
        changed = qtorch.apply_precision(model, p)
        assert changed == p.high and len(changed) == min(k, len(hists))
        converted = convert_pt2e(model)
        wide[k] = sum(
            1 for n in converted.graph.nodes if n.target == quantize_op and n.args[5] == torch.int16
        )
        with torch.no_grad():
            errors[k] = float(((converted(x_test) - ref) ** 2).mean())
    assert wide[0] == 0 and wide[1] >= 1 and wide[100] > wide[1], wide
    assert errors[100] < errors[1] < errors[0], errors
    print(f"PT2E mixed precision, logits mse: {errors}")

    # loss-aware: the observers' loss-weighted histograms, ranked by the loss they cost
    model = prepared()
    qtorch.calibrate_loss_aware(model, fmnist["calib"][:2])
    weighted = qtorch.observer_histograms(model)
    assert all(isinstance(h, qfcal.WeightedHistogram) for h in weighted.values())
    p = plan(weighted, tensors=1)
    assert qtorch.apply_precision(model, p) == p.high and len(p.high) == 1
    converted = convert_pt2e(model)
    assert any(n.target == quantize_op and n.args[5] == torch.int16 for n in converted.graph.nodes)

    model = prepared()
    p = plan(qtorch.observer_histograms(model), tensors=1)
    p.high_bits = 17
    with pytest.raises(ValueError, match="plan.high_bits must be in 9..16 for torch's int16"):
        qtorch.apply_precision(model, p)
    p = plan({"not_an_observer": next(iter(qtorch.observer_histograms(model).values()))},
             tensors=1)  # fmt: skip
    with pytest.raises(ValueError, match="plan names 'not_an_observer'"):
        qtorch.apply_precision(model, p)
    with pytest.raises(ValueError, match="prepared has no qfcal observer"):
        qtorch.observer_histograms(nn.Linear(2, 2))


@pytest.mark.skipif(ENGINE is None, reason="no quantized engine in this torch build")
def test_weight_observer_scales_reach_the_quantized_model(fmnist, trained):
    model, float_acc = trained
    torch.backends.quantized.engine = ENGINE
    qc = qtorch.qconfig(ENGINE, weight=qtorch.QfcalWeightObserver.with_args())
    prepared, quantized = quantize(model, qc, fmnist["calib"])
    checked = 0
    float_mods = dict(prepared.named_modules())
    for name, qmod in quantized.named_modules():
        if not callable(getattr(qmod, "weight", None)) or name not in float_mods:
            continue
        mod = float_mods[name]
        mod = mod[0] if isinstance(mod, nn.Sequential) else mod  # fused conv + relu
        w = mod.weight.detach()
        o = qtorch.QfcalWeightObserver()
        o(w)
        r = o.search()
        q = qmod.weight()
        scales = q.q_per_channel_scales().numpy().astype(np.float32)
        if ENGINE == "qnnpack":
            continue  # per-tensor weights there: torch's own observer
        np.testing.assert_array_equal(scales, r.scale)
        assert (r.qmin, r.qmax, r.zero_point) == (-128, 127, 0)
        # never worse than torch's own min/max scales on the same grid, per channel
        mm = qtorch.QfcalWeightObserver(method="minmax")
        mm(w)
        own = mm.calculate_qparams()[0].numpy()
        rows = w.reshape(w.shape[0], -1).numpy()
        own_err = (np.clip(np.rint(rows / own[:, None]), -128, 127) * own[:, None] - rows) ** 2
        assert (r.mse <= own_err.mean(axis=1) * (1 + 1e-6)).all()
        checked += 1
    assert checked >= 2 or ENGINE == "qnnpack"
    acc = accuracy(quantized, *fmnist["test"])
    assert acc >= float_acc - ACCURACY_TOLERANCE, (acc, float_acc)


def test_weight_observer_options_and_pt2e_class():
    with pytest.raises(ValueError, match="per_channel_symmetric"):
        qtorch.QfcalWeightObserver(qscheme=torch.per_channel_affine)
    with pytest.raises(ValueError, match="method must be one of optimal, minmax, got 'x'"):
        qtorch.QfcalWeightObserver(method="x")
    o = qtorch.QfcalWeightObserver(quant_min=-127, quant_max=127)
    with pytest.raises(RuntimeError, match="seen no weight"):
        o.search()
    with pytest.warns(UserWarning, match="seen no weight"):
        o.calculate_qparams()
    w = torch.randn(4, 3, 3, 3)
    o(w)
    assert o.search().qmin == -127 and "method='optimal'" in repr(o)
    if qtorch.pt2e_flow() == "torchao":
        cls = qtorch.pt2e_weight_observer()
        assert cls is qtorch.QfcalPT2EWeightObserver
        p = cls(quant_min=-127, quant_max=127)
        p(w)
        torch.testing.assert_close(p.calculate_qparams()[0], o.calculate_qparams()[0])
        again = pickle.loads(pickle.dumps(p))
        assert type(again) is cls


def _conv_relu_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 6, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    )  # fmt: skip


def test_loss_aware_histograms_weigh_by_the_gradient():
    net = _conv_relu_net()
    net.train()
    batches = [
        torch.randn(8, 1, 12, 12, generator=torch.Generator().manual_seed(i)) for i in range(3)
    ]
    hists = qtorch.loss_aware_histograms(net, batches)
    assert set(hists) == {"0", "1", "2", "3", "4", "5", "6"}
    # the counts are those of a plain forward pass
    plain = {n: qfcal.Histogram() for n in hists}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, n=n: plain[n].update(o.detach().numpy()))
        for n, m in net.named_modules() if n in plain
    ]  # fmt: skip
    with torch.no_grad():
        for b in batches:
            net(b)
    for h in hooks:
        h.remove()
    assert all(hists[n].counts == plain[n] for n in hists)
    # a ReLU passes no gradient to negative inputs: the conv outputs' negative values weigh 0,
    # and the loss-aware range does not spend levels on them; the plain range does
    for conv in ("0", "2"):
        assert plain[conv].min < 0
        r, p = qfcal.search(hists[conv]), qfcal.search(plain[conv])
        assert r.min >= -r.scale / 2 < -p.min, (conv, r, p)
    # the model is left as it was
    assert net.training and all(p.requires_grad for p in net.parameters())
    proj = qtorch.loss_aware_histograms(net, batches, target="projection", modules=["0"])
    assert set(proj) == {"0"} and proj["0"].counts == plain["0"]


def test_loss_aware_bad_arguments():
    net = _conv_relu_net()
    with pytest.raises(ValueError, match="target must be one of fisher, projection, got 'kl'"):
        qtorch.loss_aware_histograms(net, [torch.randn(1, 1, 8, 8)], target="kl")
    with pytest.raises(ValueError, match="no module 'nope'"):
        qtorch.loss_aware_histograms(net, [torch.randn(1, 1, 8, 8)], modules=["nope"])
    with pytest.raises(ValueError, match="no batch"):
        qtorch.loss_aware_histograms(net, [])
    with pytest.raises(ValueError, match="no qfcal observer"):
        qtorch.calibrate_loss_aware(net, [])


@pytest.mark.skipif(ENGINE is None, reason="no quantized engine in this torch build")
def test_calibrate_loss_aware_reaches_convert(fmnist, trained):
    model, float_acc = trained
    torch.backends.quantized.engine = ENGINE
    m = copy.deepcopy(model)
    m.qconfig = qtorch.qconfig(ENGINE)
    prepared = prepare(m)
    hists = qtorch.calibrate_loss_aware(prepared, fmnist["calib"][:4])
    observers = {n: o for n, o in prepared.named_modules() if isinstance(o, QfcalObserver)}
    assert hists and set(hists) <= set(observers)
    for name, obs in observers.items():
        if name in hists:
            assert obs.loss_weights is hists[name] and obs.loss_weights.counts == obs.histogram
            s, z = obs.calculate_qparams()
            r = qfcal.search(hists[name], qmin=obs.quant_min, qmax=obs.quant_max)
            assert float(s) == np.float32(r.scale) and int(z) == r.zero_point
    quantized = convert(prepared)
    acc = accuracy(quantized, *fmnist["test"])
    assert acc >= float_acc - ACCURACY_TOLERANCE, (acc, float_acc)
    # the loss-aware weights travel in the state dict: a fresh model loaded from it converts
    # to the same qparams
    fresh = copy.deepcopy(model)
    fresh.qconfig = qtorch.qconfig(ENGINE)
    loaded = prepare(fresh)
    loaded.load_state_dict(prepared.state_dict())
    for name, obs in observers.items():
        other = dict(loaded.named_modules())[name]
        assert other.loss_weights == obs.loss_weights and other.histogram == obs.histogram
        assert [float(t) for t in other.calculate_qparams()] == [
            float(t) for t in obs.calculate_qparams()
        ]
    obs = next(iter(observers.values()))
    state = obs.state_dict()
    state["_extra_state"] = dict(state["_extra_state"])
    other_obs = [o for o in observers.values() if o.loss_weights != obs.loss_weights][0]
    state["_extra_state"]["loss_weights"] = other_obs.state_dict()["_extra_state"]["loss_weights"]
    with pytest.raises(ValueError, match="not of the saved histogram's values"):
        obs.load_state_dict(state)
    obs.reset_min_max_vals()
    assert obs.loss_weights is None


@pytest.mark.skipif(ENGINE is None, reason="no quantized engine in this torch build")
def test_calibrate_auto_scores_each_fold_on_ranges_that_never_saw_it(fmnist, trained):
    model, float_acc = trained
    torch.backends.quantized.engine = ENGINE
    m = copy.deepcopy(model)
    m.qconfig = qtorch.qconfig(ENGINE)
    prepared = prepare(m)
    batches = fmnist["calib"][:4]
    observers = {n: o for n, o in prepared.named_modules() if isinstance(o, QfcalObserver)}
    seen: list[dict[str, tuple[str, qfcal.Histogram]]] = []

    def spy_convert(copied):
        seen.append({
            n: (o.method, o.histogram.copy())
            for n, o in copied.named_modules() if isinstance(o, QfcalObserver)
        })  # fmt: skip
        return convert(copied)

    cands = {"optimal": {"method": "optimal"}, "percentile": {"method": "percentile",
                                                               "percentile": 99.0}}  # fmt: skip
    sel = qtorch.calibrate_auto(prepared, batches, convert=spy_convert, candidates=cands, folds=2)
    assert sel.folds == [[0, 1], [2, 3]] and len(seen) == 4
    # each batch's own histogram, for comparison
    single = []
    for b in batches:
        p = prepare(copy.deepcopy(m))
        with torch.no_grad():
            p(b)
        single.append(
            {n: o.histogram for n, o in p.named_modules() if isinstance(o, QfcalObserver)}
        )
    for trial, (label, test) in zip(seen, [(k, f) for k in cands for f in sel.folds], strict=True):
        train = [i for i in range(4) if i not in test]
        for n, (method, hist) in trial.items():
            assert method == cands[label]["method"]
            expected = single[train[0]][n].copy()
            expected.merge(single[train[1]][n])
            assert hist == expected, (n, label, test)  # the left-out batches are not in it
    # afterwards: all four batches and the chosen method, as a plain calibration would hold
    full = prepare(copy.deepcopy(m))
    with torch.no_grad():
        for b in batches:
            full(b)
    for n, o in full.named_modules():
        if isinstance(o, QfcalObserver):
            assert observers[n].histogram == o.histogram
            assert observers[n].method == sel.options["method"]
            assert float(observers[n].min_val) == float(o.min_val)
    acc = accuracy(convert(prepared), *fmnist["test"])
    assert acc >= float_acc - ACCURACY_TOLERANCE, (acc, float_acc)


def test_calibrate_auto_bad_arguments():
    net = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="prepared has no qfcal observer"):
        qtorch.calibrate_auto(net, [torch.zeros(1, 4)] * 2, convert=lambda m: m)
    net = nn.Sequential(QfcalObserver(), nn.Linear(4, 4))
    x = [torch.randn(2, 4) for _ in range(3)]
    with pytest.raises(ValueError, match="at least 2 calibration batches, got 1"):
        qtorch.calibrate_auto(net, x[:1], convert=lambda m: m)
    with pytest.raises(TypeError, match=r"candidates\['a'\] has option\(s\) \['bits'\]"):
        qtorch.calibrate_auto(net, x, convert=lambda m: m,
                              candidates={"a": {"method": "minmax", "bits": 4}})  # fmt: skip
    with pytest.raises(ValueError, match="crossval"):
        qtorch.calibrate_auto(net, x, convert=lambda m: m, candidates={"a": {"method": "crossval"}})
    with pytest.raises(TypeError, match="convert must be callable"):
        qtorch.calibrate_auto(net, x, convert=3)
    with pytest.raises(ValueError, match="output holds no floating tensor"):
        longs = [torch.ones(2, dtype=torch.long)] * 2
        qtorch.calibrate_auto(nn.Sequential(QfcalObserver(), nn.Flatten(0)), longs,
                              convert=lambda m: m)  # fmt: skip
    # identity "quantization": every candidate scores 0, the first stays
    sel = qtorch.calibrate_auto(net, x, convert=lambda m: m, folds=3)
    assert sel.chosen == "optimal" and set(sel.errors.values()) == {0.0}


# ----------------------------------------------------------------------------------------------
# README


@pytest.mark.skipif(ENGINE is None, reason="no quantized engine in this torch build")
def test_readme_example(fmnist, trained):
    torch.backends.quantized.engine = ENGINE
    model = copy.deepcopy(trained[0])
    ns = run_example("torch", {"model": model, "calibration_batches": fmnist["calib"]})
    quantized = ns["quantized"]
    sel = ns["selection"]
    assert sel.chosen in sel.errors and len(sel.errors) == 6  # the default candidates
    assert sel.metric == "kl"  # metric="auto" on the logits
    assert isinstance(quantized.conv1, torch.ao.nn.intrinsic.quantized.ConvReLU2d)
    assert accuracy(quantized, *fmnist["test"]) >= trained[1] - ACCURACY_TOLERANCE
