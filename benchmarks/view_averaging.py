"""Benchmark 8: which test-time views pay, on validation only? A finished ladder's ensemble
candidates (as the ensemble step weighed them) predict the validation images under sets of
views (shifts and turns); each model's accuracy and log-loss at its own temperature over each
set, then the ensemble chosen on one half of validation and scored on the other, over the same
random halves for every set (paired), as Markdown.

    python -m benchmarks.view_averaging --study mnist-sweep

The test set is not read. Costs one prediction of the validation images per model and view.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmarks import halves, store_pool
from digits.classifier import transformed
from harness import cli, data, records, tracking
from harness.calibration import log_loss, temperature
from harness.errors import UserError
from sweeps import ensemble, selection
from sweeps import study as sweep_study

# (degrees, columns right, rows down) of each view beside the digit itself.
ONE_PIXEL = [(0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
TWO_PIXELS = [(0, 2, 0), (0, -2, 0), (0, 0, 2), (0, 0, -2)]
VIEW_SETS = {
    "the digit alone": [],
    "1-pixel shifts (5 views)": ONE_PIXEL,
    "2-pixel shifts (5)": TWO_PIXELS,
    "1- and 2-pixel shifts (9)": ONE_PIXEL + TWO_PIXELS,
    "2-pixel shifts, 10-degree turns (7, digits.predict --tta)": TWO_PIXELS + [(10, 0, 0), (-10, 0, 0)],
    "1-pixel shifts, 5-degree turns (7)": ONE_PIXEL + [(5, 0, 0), (-5, 0, 0)],
}

def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.view_averaging", description=__doc__.splitlines()[0])
    store_pool.add_ensemble_study_arguments(parser)
    return parser.parse_args(argv)


def candidate_views(study_name: str, storage_url: str, tracking_uri: str | None, images: np.ndarray):
    """The ensemble's candidates' labels and, for each, its probabilities on every view."""
    import mlflow
    import optuna

    study = sweep_study.load_existing(study_name, storage_url)
    result = records.ladder_result(study)
    if result is None:
        raise UserError(f"study {study_name!r} has no ensemble yet: run its ladder to the end first")
    tracking.use_store(tracking.tracking_uri(tracking_uri))
    if all(score.model_run_id for score in result.scores):
        weighed = [(score.label, score.model_run_id) for score in result.scores]
    else:  # a ladder from before candidates were pooled: its own top rung's, by trial number
        top = optuna.load_study(study_name=result.top_rung, storage=sweep_study.open_storage(storage_url))
        weighed = [(records.label(top.trials[number]), records.model_run_id(top.trials[number]))
                   for number in result.candidates]
    views = sorted({view for chosen in VIEW_SETS.values() for view in chosen})
    moved = {view: transformed(images, *view) for view in views}
    labels, predicted = [], []
    for label, model_run_id in weighed:
        model = mlflow.keras.load_model(f"runs:/{model_run_id}/model")
        labels.append(label)
        predicted.append({(0, 0, 0): model.predict(images, batch_size=1000, verbose=0),
                          **{view: model.predict(moved[view], batch_size=1000, verbose=0) for view in views}})
    return labels, predicted


def over(probabilities: dict, view_set: list, temperature_: float) -> np.ndarray:
    """A candidate over the digit and a set of its views, as the ensemble averages a member."""
    return ensemble.over_views([probabilities[view] for view in [(0, 0, 0), *view_set]], temperature_)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    split = data.split(data.load(args.data), data.DEFAULT_SPLIT_SEED)
    labels, predicted = candidate_views(args.study, sweep_study.storage_url(args.storage), args.tracking_uri,
                                        split.x_val[..., None])
    y = split.y_val
    temperatures = [temperature(p[(0, 0, 0)], y) for p in predicted]
    names = list(VIEW_SETS)
    print("Each candidate on all validation images: accuracy, log-loss at its temperature\n")
    print("| candidate | " + " | ".join(names) + " |\n|" + " --- |" * (len(names) + 1))
    for label, probabilities, t in zip(labels, predicted, temperatures):
        cells = [over(probabilities, VIEW_SETS[name], t) for name in names]
        print(f"| {label} | " + " | ".join(f"{selection.accuracy(c, y):.4f}, {log_loss(c, y):.4f}" for c in cells) + " |")
    scored = {name: [] for name in names}
    for fit, held in selection.random_halves(len(y)):
        half_temperatures = [temperature(p[(0, 0, 0)][fit], y[fit]) for p in predicted]
        for name in names:
            candidates = [over(p, VIEW_SETS[name], t) for p, t in zip(predicted, half_temperatures)]
            scored[name].append(selection.chosen_and_scored(candidates, y, fit, held))
    print()
    halves.print_table(scored, "views", "the digit alone")
    return 0


if __name__ == "__main__":
    cli.run(main)
