"""The offline dataset loader: IDX parsing, the search path, clear errors, calibration sets."""

import gzip

import numpy as np
import pytest
from qfcal import data


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
        {**data.DATASETS, "mnist": {**data.DATASETS["mnist"], "system": [str(tmp_path / "none")]}},
    )
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load("mnist", tmp_path / "empty")
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg and str(tmp_path / "nothing") in msg
    assert "--data-dir" in msg and "QFCAL_DATA" in msg


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="'cifar'"):
        data.load("cifar")


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
