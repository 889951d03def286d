"""Turns a user's digits into what the models were trained on: 28x28 uint8 arrays, a light
digit on black, scaled into a 20x20 box and centred by its mass (MNIST's own recipe).
Reads PNG and JPEG files of any size, colour or background, and Kaggle's test.csv."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from harness.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SIDE = 28
DIGIT_BOX = 20  # MNIST scaled each digit to fit 20x20, then centred it by mass in 28x28
# Ink fainter than this share of the strongest stroke is ignored when finding the digit's
# box, so paper texture and JPEG ringing do not stretch it.
INK_THRESHOLD = 0.05
# Where MNIST's digits have their centre of mass: measured on its test digits, the mean
# pixel index is about 14 on both axes, i.e. 14.5 with pixel i covering i..i+1.
MASS_CENTRE = 14.5
PIXEL_COLUMNS = [f"pixel{i}" for i in range(SIDE * SIDE)]


def image_files(paths: list[Path]) -> list[Path]:
    """The given files, and the PNG and JPEG files inside given folders, in name order."""
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"{path}: no PNG or JPEG files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def read_image_file(path: Path) -> np.ndarray:
    try:
        return from_image_bytes(path.read_bytes(), str(path))
    except OSError as error:
        raise UserError(f"{path}: cannot read it ({error.strerror})") from None


def from_image_bytes(content: bytes, name: str) -> np.ndarray:
    """A PNG or JPEG as an MNIST-style 28x28 uint8 array."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(content)) as image:
            if image.format not in ("PNG", "JPEG"):
                raise UserError(f"{name}: a {image.format} image; expected PNG or JPEG")
            image.load()
            return to_mnist(ink_and_paper(image), name)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
        raise UserError(f"{name}: not a readable PNG or JPEG image ({str(error).splitlines()[0]})") from None


def ink_and_paper(image) -> np.ndarray:
    """Grayscale as float32 0-255. Where the picture has transparency (a stroke on a
    transparent canvas), its opacity is the ink, whatever the stroke's colour."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"), dtype=np.float32)[..., 3]
        if alpha.min() < 255:
            return alpha
    return np.asarray(image.convert("L"), dtype=np.float32)


def to_mnist(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """A grayscale picture of one digit as MNIST shows digits."""
    from PIL import Image

    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:  # dark digit on light paper: MNIST's digits are light on black
        gray, border = 255 - gray, 255 - border
    ink = np.clip(gray - np.median(border), 0, None)  # the paper's own grey is not ink
    if ink.max() < 16:  # under 1/16 of full contrast: nothing drawn
        raise UserError(f"{name}: no digit found (the image is empty or has no contrast)")
    ink *= 255 / ink.max()
    rows, cols = np.nonzero(ink > INK_THRESHOLD * 255)
    digit = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = DIGIT_BOX / max(digit.shape)
    height, width = (max(1, round(side * scale)) for side in digit.shape)
    resized = Image.fromarray(digit.astype(np.uint8)).resize((width, height), Image.Resampling.LANCZOS)
    digit = np.asarray(resized, dtype=np.float32)
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    mass_row, mass_col = centre_of_mass(digit)
    top = int(np.clip(round(MASS_CENTRE - mass_row), 0, SIDE - height))
    left = int(np.clip(round(MASS_CENTRE - mass_col), 0, SIDE - width))
    canvas[top:top + height, left:left + width] = digit
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """Where the ink's mass sits (row, column), in continuous coordinates: pixel i covers
    i..i+1."""
    total = image.sum()
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / total) + 0.5, float((cols * image).sum() / total) + 0.5


def read_kaggle_test_csv(path: Path) -> np.ndarray:
    """Kaggle "Digit Recognizer" test.csv (header pixel0..pixel783) as (n, 28, 28) uint8."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise UserError(f"{path}: not a readable CSV file ({str(error).splitlines()[0]})") from None
    columns = list(frame.columns)
    if columns != PIXEL_COLUMNS:
        if "label" in columns:
            problem = "it has a 'label' column, like Kaggle's train.csv"
        elif len(columns) != len(PIXEL_COLUMNS):
            problem = f"it has {len(columns)} columns"
        else:
            problem = f"its columns are not named pixel0..pixel783 (first: {columns[0]!r})"
        raise UserError(f"{path}: expected Kaggle's test.csv with the {len(PIXEL_COLUMNS)} columns "
                        f"pixel0..pixel783; {problem}")
    if frame.empty:
        raise UserError(f"{path}: no rows to predict")
    values = frame.to_numpy()
    if not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() > 255:
        raise UserError(f"{path}: pixel values must be whole numbers 0-255 (found missing or other values)")
    return values.astype(np.uint8).reshape(-1, SIDE, SIDE)
