"""Train the five seed recipes at a budget and evaluate each once on the test set, so the
comparison report can set our measured figure beside the documented one.

    python -m sweeps.baselines                       # full budget, seed 0, all five
    python -m sweeps.baselines --seeds 3 --only chollet_cnn lenet5
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import search_space
import train_trial
from harness import cli, data, tracking
from harness.budgets import BUDGETS
from harness.errors import DataError

EXPERIMENT = "mnist-baselines"


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m sweeps.baselines", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=cli.positive_int, default=1,
                        help="seeds per baseline, counting up from --seed (default: 1)")
    parser.add_argument("--only", nargs="+", choices=search_space.BASELINES, metavar="NAME",
                        help=f"train only these ({', '.join(search_space.BASELINES)})")
    cli.add_training_arguments(parser, default_budget="full")
    return parser.parse_args(argv)


def mean_and_sd(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    budget = BUDGETS[args.budget].overridden(train_size=args.train_size, max_epochs=args.max_epochs)
    dataset = data.load(args.data)
    if dataset.x_test is None:
        raise DataError(f"{dataset.source} has no labelled test set ({dataset.format}); "
                             "baselines are evaluated on one")
    split = data.split(dataset, data.DEFAULT_SPLIT_SEED, budget.train_size)
    uri = tracking.use_experiment(EXPERIMENT, args.tracking_uri)
    names = args.only or list(search_space.BASELINES)
    seeds = range(args.seed, args.seed + args.seeds)
    print(f"{len(names)} baseline(s) x {len(seeds)} seed(s) at budget {budget.name} "
          f"({budget.train_size or 'all'} training images, up to {budget.max_epochs} epochs); "
          f"MLflow experiment {EXPERIMENT!r} at {uri}", flush=True)
    rows = []
    for name in names:
        validation, test = [], []
        for seed in seeds:
            result, metrics, run_id = train_trial.run_logged_trial(
                search_space.baseline(name), dataset, split, budget, seed=seed, baseline=name,
                evaluate_on_test=True, run_name=f"{name} seed {seed}")
            if result.diverged:
                print(f"{name} seed {seed}: FAILED, the loss diverged; run {run_id}", flush=True)
                continue
            validation.append(metrics["validation_accuracy"])
            test.append(metrics["test_accuracy"])
            print(f"{name} seed {seed}: validation {validation[-1]:.4f}, test {test[-1]:.4f}, "
                  f"{result.epochs_run} epochs, {result.train_seconds:.0f} s; run {run_id}", flush=True)
        rows.append((name, validation, test))
    print("\n| baseline | documented | validation | test | seeds |\n| --- | --- | --- | --- | --- |")
    for name, validation, test in rows:
        print(f"| {name} | {search_space.DOCUMENTED_ACCURACY[name]} | "
              f"{mean_and_sd(validation) if validation else 'diverged'} | "
              f"{mean_and_sd(test) if test else '-'} | {len(validation)} |")
    return 0 if all(validation for _, validation, _ in rows) else 1


if __name__ == "__main__":
    cli.run(main)
