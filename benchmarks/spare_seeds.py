"""Benchmark 12: where should the top rung's spare seeds go: more seeds of one recipe, or
seeds of a second? For every pair of recipes of which the store's top rungs hold several
models (one per training seed), ``SEEDS`` models of the first against half as many of the
first plus half of the second: alone, as a plain average of the set; and inside the ensemble
step's pool (its candidates without either recipe's models, plus the set), as the step's
greedy selection chooses. Each chosen (and its temperatures fitted) on one half of validation
and scored on the other, over the same random halves for every set (paired), as Markdown.

    python -m benchmarks.spare_seeds --study mnist-sweep-6

The test set is not read. Costs one prediction of the validation images per distinct model.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from optuna.trial import FrozenTrial

from benchmarks import halves, store_pool
from harness import cli, records
from sweeps import ladder, selection

SEEDS = 4

CalibratedHalf = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]  # choosing half, held half, models by id


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.spare_seeds", description=__doc__.splitlines()[0])
    store_pool.add_ensemble_study_arguments(parser)
    return parser.parse_args(argv)


def models_by_recipe(trials: dict[str, FrozenTrial]) -> list[list[str]]:
    """The model ids of ``trials`` (by model id) grouped by recipe (their sampled parameters),
    each group in training-seed order (the first training's seed 0 first); groups with the
    most models first."""
    groups: dict[str, list[str]] = defaultdict(list)
    for model_id, trial in trials.items():
        groups[json.dumps(trial.params, sort_keys=True)].append(model_id)
    ordered = [sorted(ids, key=lambda model_id: trials[model_id].user_attrs.get(records.TRAINING_SEED, 0))
               for ids in groups.values()]
    return sorted(ordered, key=len, reverse=True)


def seed_pairs(groups: list[list[str]], seeds: int = SEEDS) -> list[tuple[list[str], list[str]]]:
    """Each ordered pair of recipes (first, second), as their models, where the first has at
    least ``seeds`` models and the second half as many."""
    return [(first, second) for first in groups if len(first) >= seeds
            for second in groups if second is not first and len(second) >= seeds // 2]


def one_and_two_recipes(first: list[str], second: list[str], seeds: int = SEEDS) -> dict[str, list[str]]:
    """The first recipe's first ``seeds`` models; the first half of them and as many of the
    second recipe's."""
    return {"one recipe": first[:seeds], "two recipes": first[: seeds // 2] + second[: seeds // 2]}


def calibrated_halves(predicted: dict[str, np.ndarray], labels: np.ndarray,
                      ) -> list[CalibratedHalf]:
    """The random halves of validation, each with every model at the temperature fitted on its
    choosing half: once per half, as every set of every pair draws on the same models."""
    ids = list(predicted)
    return [(fit, held, dict(zip(ids, halves.calibrated_on([predicted[i] for i in ids], labels, fit))))
            for fit, held in selection.random_halves(len(labels))]


def scored_over_halves(sets: dict[str, list[str]], calibrated: list[CalibratedHalf], labels: np.ndarray,
                       choose: Callable[[list[np.ndarray], np.ndarray], dict[int, float]],
                       ) -> dict[str, np.ndarray]:
    """Each set's held-out (accuracy, log-loss, distinct members) over the ``calibrated`` halves."""
    scores = {name: [] for name in sets}
    for fit, held, models in calibrated:
        for name, ids in sets.items():
            scores[name].append(selection.chosen_and_scored([models[i] for i in ids], labels, fit, held, choose))
    return {name: np.array(rows) for name, rows in scores.items()}


def pair_row(first_name: str, second_name: str, scores: dict[str, np.ndarray]) -> str:
    one, two = scores["one recipe"], scores["two recipes"]
    gain = two[:, 0] - one[:, 0]
    return (f"| {first_name} | {second_name} | {one[:, 0].mean():.4f} / {one[:, 1].mean():.4f} | "
            f"{two[:, 0].mean():.4f} / {two[:, 1].mean():.4f} | {gain.mean():+.4f} "
            f"(ahead in {(gain > 0).sum()}, behind in {(gain < 0).sum()}) | {two[:, 1].mean() - one[:, 1].mean():+.4f} |")


def recipe_name(trial: FrozenTrial, label: str) -> str:
    name = label.rsplit(" seed ", 1)[0]
    return f"{name} (augmented)" if ladder.augmented(trial) else name


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    store = store_pool.store_models(args.study, args.storage, args.data, args.tracking_uri)
    groups = models_by_recipe(store.trials)
    names = {ids[0]: recipe_name(store.trials[ids[0]], store.model_labels[ids[0]]) for ids in groups}
    pairs = seed_pairs(groups)
    print(f"Top rungs set up as {store.top_rung}: {', '.join([store.top_rung, *store.other_rungs])}; "
          f"{len(store.model_labels)} distinct models of {len(groups)} recipes; {len(pairs)} pairs of recipes with "
          f"{SEEDS} and {SEEDS // 2} models\n")
    if not pairs:
        print(f"No recipe has {SEEDS} models: nothing to compare.")
        return 0
    header = (f"| first recipe | second recipe | {SEEDS} of the first: accuracy / log-loss | "
              f"{SEEDS // 2} of each: accuracy / log-loss | two recipes against one: accuracy | log-loss |\n"
              "| --- | --- | --- | --- | --- | --- |")
    calibrated = calibrated_halves(store.predicted, store.y_val)
    contexts = {"alone, as a plain average": (False, selection.average),
                "added to the ensemble step's pool, as its greedy selection chooses": (True, selection.greedy)}
    for context, (pooled, choose) in contexts.items():
        print(f"\nThe set {context}: held-out accuracy and log-loss over {selection.HALVES} random halves of validation\n")
        print(header)
        gains = []
        for first, second in pairs:
            rest = [i for i in store.pooled_ids if i not in first and i not in second] if pooled else []
            sets = {name: rest + ids for name, ids in one_and_two_recipes(first, second).items()}
            scores = scored_over_halves(sets, calibrated, store.y_val, choose)
            gains.append((scores["two recipes"] - scores["one recipe"]).mean(axis=0))
            print(pair_row(names[first[0]], names[second[0]], scores))
        gains = np.array(gains)
        print(f"\nTwo recipes against one, over the {len(pairs)} pairs: accuracy {gains[:, 0].mean():+.4f} "
              f"(ahead in {(gains[:, 0] > 0).sum()} pairs, behind in {(gains[:, 0] < 0).sum()}), "
              f"log-loss {gains[:, 1].mean():+.4f} (lower in {(gains[:, 1] < 0).sum()} pairs)")
    return 0


if __name__ == "__main__":
    cli.run(main)
