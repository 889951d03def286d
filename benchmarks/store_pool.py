"""Benchmark 9: what does a sweep's ensemble gain from the models its store's other sweeps
trained? The ensemble step's candidates (the best 16 by validation accuracy of the sweep's top
rung and of every top rung of the store with the same data, split and budget) against the
sweep's own top rung's best 16 alone, and against every model of those top rungs; each set's
ensemble chosen on one half of validation and scored on the other, over the same random halves
for every set (paired), as Markdown; then each set's choice on all of validation.

    python -m benchmarks.store_pool --study mnist-sweep-3

A model two sweeps share (a reused run) counts once. The test set is not read. Costs one
prediction of the validation images per distinct model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from optuna.trial import FrozenTrial

from benchmarks import halves
from harness import cli, data, records, tracking
from harness.errors import UserError
from sweeps import ensemble, ladder, selection
from sweeps import study as sweep_study
from sweeps.settings import ENSEMBLE_CANDIDATES


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.store_pool", description=__doc__.splitlines()[0])
    add_ensemble_study_arguments(parser)
    return parser.parse_args(argv)


def add_ensemble_study_arguments(parser) -> None:
    """The options of the benchmarks that read a finished ladder's ensemble candidates: the
    study, its Optuna storage, and the data and tracking store."""
    parser.add_argument("--study", default=sweep_study.DEFAULT_STUDY, type=cli.study_name,
                        help=f"a study whose ladder has built its ensemble (default: {sweep_study.DEFAULT_STUDY})")
    parser.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: the journal in mlruns/)")
    cli.add_store_arguments(parser)


class StoreModels(NamedTuple):
    """Every distinct model of a store's top rungs set up as a sweep's, predicted on validation."""
    top_rung: str
    other_rungs: list[str]
    model_labels: dict[str, str]  # by model run id, in the ensemble step's order (best validation accuracy first)
    own_ids: list[str]  # the ids of the sweep's own top rung's best ENSEMBLE_CANDIDATES
    pooled_ids: list[str]  # the ids the ensemble step weighs
    predicted: dict[str, np.ndarray]  # by model run id
    trials: dict[str, FrozenTrial]  # by model run id, the trial that trained or reused it
    y_val: np.ndarray  # the validation images' digits


def store_models(study_name: str, storage: str | None, data_path, tracking_uri: str | None) -> StoreModels:
    import mlflow
    import optuna

    url = sweep_study.storage_url(storage)
    result = records.ladder_result(sweep_study.load_existing(study_name, url))
    if result is None:
        raise UserError(f"study {study_name!r} has no ensemble yet: run its ladder to the end first")
    opened = sweep_study.open_storage(url)
    own = ladder.finished_models(optuna.load_study(study_name=result.top_rung, storage=opened).get_trials(deepcopy=False))
    others = sweep_study.other_top_rungs(opened, result.top_rung)
    every = ladder.ensemble_candidates(own, others, len(own) + sum(map(len, others.values())))
    labelled = {records.model_run_id(candidate.trial): candidate.label for candidate in every}
    trials = {records.model_run_id(candidate.trial): candidate.trial for candidate in every}
    own_ids = [records.model_run_id(t) for t in own][:ENSEMBLE_CANDIDATES]
    pooled_ids = [records.model_run_id(c.trial) for c in ladder.ensemble_candidates(own, others, ENSEMBLE_CANDIDATES)]
    split = data.split(data.load(data_path), data.DEFAULT_SPLIT_SEED)
    tracking.use_store(tracking.tracking_uri(tracking_uri))
    predicted = {run_id: mlflow.keras.load_model(f"runs:/{run_id}/model").predict(split.x_val[..., None], batch_size=1000, verbose=0)
                 for run_id in labelled}
    return StoreModels(result.top_rung, list(others), labelled, own_ids, pooled_ids, predicted, trials, split.y_val)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    store = store_models(args.study, args.storage, args.data, args.tracking_uri)
    labelled, predicted, y = store.model_labels, store.predicted, store.y_val
    own_ids, pooled_ids, others = store.own_ids, store.pooled_ids, store.other_rungs
    rungs = 1 + len(others)
    sets = {f"{store.top_rung} alone, best {len(own_ids)}": own_ids,
            f"the store's {rungs} top rungs, best {len(pooled_ids)} (as the ensemble step does)": pooled_ids,
            f"the store's {rungs} top rungs, all {len(labelled)}": list(labelled)}
    print(f"Top rungs set up as {store.top_rung}: {', '.join([store.top_rung, *others])}; "
          f"{len(labelled)} distinct models\n")
    scored = {name: [] for name in sets}
    for fit, held in selection.random_halves(len(y)):
        for name, ids in sets.items():
            candidates = halves.calibrated_on([predicted[i] for i in ids], y, fit)
            scored[name].append(selection.chosen_and_scored(candidates, y, fit, held))
    halves.print_table(scored, "candidates", "its own top rung alone")
    print("\nEach set's choice on all of validation\n\n| candidates | validation accuracy | log-loss | members |\n"
          "| --- | --- | --- | --- |")
    for name, ids in sets.items():
        candidates, _ = ensemble.calibrate([predicted[i] for i in ids], y)
        print(halves.choice_row(name, candidates, y, selection.greedy(candidates, y), [labelled[i] for i in ids]))
    return 0


if __name__ == "__main__":
    cli.run(main)
