"""python -m digits.predict: label digits with a trained model (default: the registered
champion). A Kaggle "Digit Recognizer" test.csv in gives a Kaggle submission out; PNG or
JPEG files (or folders of them) in give one line per file with the top-3 probabilities.

    python -m digits.predict --input test.csv --output submission.csv
    python -m digits.predict --input my_digits/ --tta
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from digits import classifier, preparation
from harness import cli
from harness.errors import UserError

DEFAULT_SUBMISSION = "submission.csv"


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m digits.predict", description=__doc__.splitlines()[0])
    cli.add_model_arguments(parser, default_model=classifier.CHAMPION)
    parser.add_argument("--input", nargs="+", required=True, type=Path, metavar="PATH",
                        help="a Kaggle test.csv, or PNG/JPEG files and folders of them")
    parser.add_argument("--output", type=Path, metavar="PATH",
                        help=f"where to write: the submission for a CSV (default: {DEFAULT_SUBMISSION}); "
                             "for images, a CSV of file, label and the 10 probabilities")
    parser.add_argument("--tta", action="store_true",
                        help=f"average over {len(classifier.TTA_VIEWS)} views: the digit, 2-pixel shifts "
                             "and 10-degree turns")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kaggle = any(p.suffix.lower() == ".csv" for p in args.input)
    if kaggle and len(args.input) > 1:
        raise UserError("--input: give one Kaggle CSV on its own, or image files and folders")
    output = args.output or (Path(DEFAULT_SUBMISSION) if kaggle else None)
    if output is not None:
        check_writable(output)
    # Read and check every input before the slow part (loading the model).
    if kaggle:
        digits, names = preparation.read_kaggle_test_csv(args.input[0]), None
    else:
        files = preparation.image_files(args.input)
        digits = np.stack([preparation.read_image_file(f) for f in files])
        names = [str(f) for f in files]
    model = classifier.load(args.model, args.tracking_uri)
    probability = classifier.probabilities(model, digits, tta=args.tta)
    labels = probability.argmax(axis=1)
    if kaggle:
        rows = [["ImageId", "Label"], *([i, int(label)] for i, label in enumerate(labels, start=1))]
        write_csv(output, rows)
        counts = np.bincount(labels, minlength=10)
        print(f"Wrote {len(labels)} predictions to {output} (Kaggle submission: ImageId,Label); "
              f"labels 0-9: {' '.join(map(str, counts))}")
        return 0
    width = max(len(n) for n in names)
    for name, row in zip(names, probability):
        top = ", ".join(f"{label} {p:.3f}" for label, p in classifier.top_k(row))
        print(f"{name:<{width}}  {int(row.argmax())}  ({top})")
    if output is not None:
        write_csv(output, [["file", "label", *(f"p{d}" for d in range(10))],
                           *([n, int(r.argmax()), *(f"{p:.6f}" for p in r)] for n, r in zip(names, probability))])
        print(f"Wrote {len(names)} predictions to {output}", file=sys.stderr)
    return 0


def check_writable(path: Path) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"--output {path}: is a folder; name a file")
    if not folder.is_dir():
        raise UserError(f"--output {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"--output {path}: the folder {folder} is not writable")


def write_csv(path: Path, rows: list[list]) -> None:
    """All or nothing: a half-written submission never replaces a good one."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text.getvalue())
    os.replace(partial, path)


if __name__ == "__main__":
    cli.run(main)
