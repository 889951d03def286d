"""Loads a trained digit model (the registered champion, a run's model or a saved file) and
turns 28x28 uint8 digits into probabilities for 0-9, optionally averaged over small shifts
and rotations (test-time augmentation)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from harness import tracking
from harness.backend import keras
from harness.errors import UserError

CHAMPION = f"models:/{tracking.REGISTERED_MODEL}@{tracking.CHAMPION_ALIAS}"
RUN_ID = re.compile(r"[0-9a-f]{32}")
# (degrees, columns right, rows down): the original, 2-pixel shifts and 10-degree turns,
# within the augmentation ranges the sweep trains with.
TTA_VIEWS = [(0, 0, 0), (0, 2, 0), (0, -2, 0), (0, 0, 2), (0, 0, -2), (10, 0, 0), (-10, 0, 0)]


def load(reference: str, tracking_uri: str | None = None) -> keras.Model:
    """``models:/NAME@ALIAS`` (or any models:/ or runs:/ URI), an MLflow run id, a saved
    MLflow model folder, or a ``.keras`` file. Keras files load in safe mode: no code
    stored in a user's file is run."""
    path = Path(reference)
    if reference.startswith(("models:/", "runs:/")) or (RUN_ID.fullmatch(reference) and not path.exists()):
        uri = reference if ":/" in reference else f"runs:/{reference}/model"
        model = _from_mlflow(uri, tracking.tracking_uri(tracking_uri))
    elif path.is_dir() and (path / "MLmodel").is_file():
        model = _from_mlflow(str(path), None)
    elif path.is_file() and path.suffix == ".keras":
        try:
            model = keras.saving.load_model(path, safe_mode=True)
        except Exception as error:  # Keras raises several kinds for a damaged archive
            raise UserError(f"--model {path}: not a loadable Keras model ({str(error).splitlines()[0]})") from None
    elif path.exists():
        raise UserError(f"--model {path}: expected a .keras file or an MLflow model folder (with an MLmodel file)")
    else:
        raise UserError(f"--model {reference!r}: not a models:/ or runs:/ URI, a 32-character run id, "
                        "or an existing file or folder")
    if tuple(model.input_shape[1:]) != (28, 28, 1) or tuple(model.output_shape[1:]) != (10,):
        raise UserError(f"--model {reference}: takes {model.input_shape[1:]} and gives {model.output_shape[1:]}; "
                        "expected 28x28x1 digits in and 10 probabilities out")
    return model


def _from_mlflow(uri: str, tracking_uri: str | None) -> keras.Model:
    import mlflow
    from mlflow.exceptions import MlflowException

    if tracking_uri is not None:
        if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
            raise UserError(f"--model {uri}: there is no MLflow store at {tracking_uri} "
                            "(train and register a model first: python -m sweeps.reproduce)")
        tracking.use_store(tracking_uri)
    try:
        return mlflow.keras.load_model(uri)
    except MlflowException as error:
        where = f" in {tracking_uri}" if tracking_uri else ""
        hint = " (register one with python -m sweeps.reproduce)" if uri == CHAMPION else ""
        raise UserError(f"--model {uri}: not found{where}{hint}: {str(error).splitlines()[0]}") from None
    except OSError as error:
        raise UserError(f"--model {uri}: cannot read the model ({error})") from None


def probabilities(model: keras.Model, digits: np.ndarray, tta: bool = False) -> np.ndarray:
    """(n, 10) probabilities for (n, 28, 28) uint8 digits; with ``tta`` the mean over TTA_VIEWS."""
    images = digits.reshape(-1, 28, 28, 1)
    views = TTA_VIEWS if tta else TTA_VIEWS[:1]
    total = np.zeros((len(images), 10), dtype=np.float64)
    for degrees, right, down in views:
        view = images if (degrees, right, down) == (0, 0, 0) else transformed(images, degrees, right, down)
        total += model.predict(view, batch_size=1024, verbose=0)
    return (total / len(views)).astype(np.float32)


def transformed(images: np.ndarray, degrees: float, right: float, down: float) -> np.ndarray:
    """The images turned about their centre and shifted, with black fill, as uint8."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    centre = (images.shape[1] - 1) / 2
    # Maps each output pixel (x, y) back to the input pixel it comes from.
    transform = [cos, sin, centre - cos * (centre + right) - sin * (centre + down),
                 -sin, cos, centre + sin * (centre + right) - cos * (centre + down), 0.0, 0.0]
    result = keras.ops.image.affine_transform(
        images.astype("float32"), np.tile(np.float32(transform), (len(images), 1)),
        interpolation="bilinear", fill_mode="constant", fill_value=0)
    return np.clip(np.rint(keras.ops.convert_to_numpy(result)), 0, 255).astype(np.uint8)


def top_k(probability: np.ndarray, k: int = 3) -> list[tuple[int, float]]:
    order = np.argsort(probability)[::-1][:k]
    return [(int(label), float(probability[label])) for label in order]
