"""Load MNIST (the shipped copy or files a user brings) and split it into train and validation.

Every problem with a data file raises DataError naming the file and the problem.
Formats: a Keras-style ``mnist.npz``; the four IDX files, raw or gzipped (seed 003);
a Kaggle "Digit Recognizer" ``train.csv`` (seed 000), which has no test labels.
"""

from __future__ import annotations

import gzip
import zlib
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import DataError

SHIPPED_PATH = Path(__file__).resolve().parent.parent / "data" / "mnist.npz"

# sha256 of each array's C-order bytes, as measured in shared/DATA.md.
SHIPPED_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}

# 10% of the training images: 6,000 of MNIST's 60,000, and 4,200 of Kaggle's 42,000,
# which is the split seed 000 used.
VALIDATION_FRACTION = 0.1
DEFAULT_SPLIT_SEED = 0

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
KAGGLE_COLUMNS = ["label"] + [f"pixel{i}" for i in range(784)]


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # uint8 (n, 28, 28)
    y_train: np.ndarray  # uint8 (n,)
    x_test: np.ndarray | None  # None where the source has no labelled test set (Kaggle CSV)
    y_test: np.ndarray | None
    source: str
    format: str
    sha256: str  # one digest over every array, recorded with each run
    array_sha256: dict[str, str]  # each array's digest, e.g. to check the shipped copy


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    seed: int
    validation_sha256: str  # digest of the validation indices: proves two runs used one split
    train_sha256: str  # digest of the training indices (a --train-size subset differs from all)
    pixel_mean: float  # of the training images, for standardized inputs
    pixel_std: float


def load(path: str | Path | None = None) -> Dataset:
    """Load the shipped copy (verified by checksum) or the file or folder at ``path``."""
    if path is None:
        return _load_shipped()
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return _load_folder(path)
    if path.suffix == ".npz":
        return _load_npz(path)
    if path.suffix == ".csv":
        return _load_kaggle_csv(path)
    raise DataError(f"{path}: unknown data format (expected a .npz file, a Kaggle .csv, "
                    "or a folder with the four IDX files)")


def _load_shipped() -> Dataset:
    if not SHIPPED_PATH.exists():
        raise DataError(f"{SHIPPED_PATH}: the shipped MNIST copy is missing "
                        "(restore it with `git checkout data/mnist.npz`)")
    dataset = _load_npz(SHIPPED_PATH)
    for name, expected in SHIPPED_SHA256.items():
        if dataset.array_sha256[name] != expected:
            raise DataError(f"{SHIPPED_PATH}: {name} does not match its recorded sha256; the file "
                            "is damaged (restore it with `git checkout data/mnist.npz`)")
    return dataset


def _load_folder(folder: Path) -> Dataset:
    if (folder / "mnist.npz").exists():
        return _load_npz(folder / "mnist.npz")
    if (folder / "train.csv").exists():
        return _load_kaggle_csv(folder / "train.csv")
    files = {name: _find_idx_file(folder, stem) for name, stem in IDX_FILES.items()}
    if all(files.values()):
        return _load_idx(folder, files)
    if any(files.values()):
        missing = ", ".join(IDX_FILES[name] for name, found in files.items() if not found)
        raise DataError(f"{folder}: IDX file(s) missing: {missing} (raw or .gz)")
    raise DataError(f"{folder}: no MNIST data found (expected mnist.npz, train.csv, "
                    "or the four IDX files)")


def _load_npz(path: Path) -> Dataset:
    try:
        # allow_pickle=False: a user's file is never unpickled.
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in SHIPPED_SHA256 if name not in archive.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)} "
                                f"(found {', '.join(archive.files) or 'none'})")
            arrays = {name: archive[name] for name in SHIPPED_SHA256}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None
    return _dataset(path, "npz", **arrays)


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    # Some mirrors write "train-images.idx3-ubyte" with a dot.
    alternative = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", alternative, alternative + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def _load_idx(folder: Path, files: dict[str, Path]) -> Dataset:
    arrays = {name: _read_idx(path, images=name.startswith("x")) for name, path in files.items()}
    return _dataset(folder, "idx", **arrays)


def _read_idx(path: Path, *, images: bool) -> np.ndarray:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path}: damaged gzip data ({error})") from None
    magic, header_size = (2051, 16) if images else (2049, 8)
    if len(raw) < header_size:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        kind = "images" if images else "labels"
        raise DataError(f"{path}: IDX magic number {found_magic}, expected {magic} ({kind})")
    shape = [int.from_bytes(raw[i:i + 4], "big") for i in range(4, header_size, 4)]
    expected = int(np.prod(shape))
    payload = len(raw) - header_size
    if payload != expected:
        problem = "truncated" if payload < expected else "has trailing bytes"
        raise DataError(f"{path}: {problem}: header promises {expected} values, found {payload}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _load_kaggle_csv(path: Path) -> Dataset:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise DataError(f"{path}: not a readable CSV file ({str(error).splitlines()[0]})") from None
    columns = list(frame.columns)
    if columns == KAGGLE_COLUMNS[1:]:
        raise DataError(f"{path}: no 'label' column; this looks like Kaggle's test.csv, "
                        "training needs train.csv")
    missing = [c for c in KAGGLE_COLUMNS if c not in columns]
    extra = [c for c in columns if c not in KAGGLE_COLUMNS]
    if missing or extra:
        parts = ([f"missing column(s) {', '.join(missing[:3])}"] if missing else []) + \
                ([f"unexpected column(s) {', '.join(map(str, extra[:3]))}"] if extra else [])
        raise DataError(f"{path}: {'; '.join(parts)} (expected label,pixel0,...,pixel783)")
    frame = frame[KAGGLE_COLUMNS]
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() | (numeric != numeric.round())
    if bad.to_numpy().any():
        row, column = np.argwhere(bad.to_numpy())[0]
        cell = frame.iat[row, column]
        # Row numbers as a spreadsheet shows them: the header is line 1.
        raise DataError(f"{path}: line {row + 2}, column {KAGGLE_COLUMNS[column]}: "
                        f"{'empty cell' if pd.isna(cell) else f'non-integer value {cell!r}'}")
    values = numeric.to_numpy(dtype=np.int64)
    return _dataset(path, "kaggle-csv", x_train=values[:, 1:], y_train=values[:, 0],
                    x_test=None, y_test=None)


def _dataset(source: Path, format: str, *, x_train, y_train, x_test, y_test) -> Dataset:
    x_train, y_train = _checked_pair(source, "train", x_train, y_train)
    if x_test is not None:
        x_test, y_test = _checked_pair(source, "test", x_test, y_test)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    digests = {name: _sha256(array) for name, array in arrays.items() if array is not None}
    digest = hashlib.sha256("".join(digests.values()).encode()).hexdigest()
    return Dataset(x_train, y_train, x_test, y_test, str(source), format, digest, digests)


def _checked_pair(source: Path, part: str, images: np.ndarray, labels: np.ndarray):
    if images.ndim == 2 and images.shape[1] == 784:
        images = images.reshape(-1, 28, 28)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{source}: x_{part} has shape {images.shape}, expected (n, 28, 28)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{source}: y_{part} has shape {labels.shape}, "
                        f"expected ({len(images)},) to match x_{part}")
    for name, array, high in ((f"x_{part}", images, 255), (f"y_{part}", labels, 9)):
        if not np.issubdtype(array.dtype, np.integer):
            raise DataError(f"{source}: {name} has dtype {array.dtype}, expected integers")
        if array.size and (array.min() < 0 or array.max() > high):
            what = "pixels" if high == 255 else "labels"
            raise DataError(f"{source}: {name} has {what} outside 0-{high} "
                            f"(min {array.min()}, max {array.max()})")
    if len(images) == 0:
        raise DataError(f"{source}: x_{part} is empty")
    return np.ascontiguousarray(images, dtype=np.uint8), np.ascontiguousarray(labels, dtype=np.uint8)


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def split(dataset: Dataset, seed: int = DEFAULT_SPLIT_SEED, train_size: int | None = None) -> Split:
    """Hold out a stratified, seeded 10% for validation; optionally keep a stratified
    ``train_size`` of the rest. The test set is not touched."""
    labels = dataset.y_train
    rng = np.random.default_rng(seed)
    validation = stratified_sample(labels, round(len(labels) * VALIDATION_FRACTION), rng)
    rest = np.setdiff1d(np.arange(len(labels)), validation)
    if train_size is not None:
        if not 10 <= train_size <= len(rest):
            raise DataError(f"{dataset.source}: --train-size {train_size} is outside 10-{len(rest)} "
                            "(the training images left after the validation split)")
        rest = rest[stratified_sample(labels[rest], train_size, rng)]
    x_train = dataset.x_train[rest]
    return Split(x_train, labels[rest], dataset.x_train[validation], labels[validation], seed,
                 _sha256(validation.astype(np.int64)), _sha256(rest.astype(np.int64)),
                 float(x_train.mean()), float(x_train.std()))


def stratified_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``size`` items whose class proportions match ``labels``'."""
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * size / len(labels)
    take = np.floor(quotas).astype(int)
    # The largest remainders get the leftover places, so the total is exactly `size`.
    leftover = size - take.sum()
    take[np.argsort(take - quotas, kind="stable")[:leftover]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))
