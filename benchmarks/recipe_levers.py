"""Benchmark 7: does a Keras lever pay before the sweep adopts it? One recipe trained at a
budget with and without the optimizers' weight EMA (``use_ema``, its averaged weights
validated each epoch through ``keras.callbacks.SwapEMAWeights``), every epoch run (no early
stopping), validation accuracy per epoch and the final log-loss printed as JSON lines.

    python -m benchmarks.recipe_levers --baseline kaggle_cnn --budget long
    python -m benchmarks.recipe_levers --params small.json --budget full --no-ema

Accuracy, not speed: one thread, and each arm is one seed, so a difference of a few images
out of 6,000 is noise.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence

import search_space
import train_trial
from harness import backend, cli, data
from harness.backend import keras
from harness.budgets import BUDGETS
from sweeps import ensemble


def with_ema(make_optimizer):
    """train_trial.make_optimizer, with the optimizer's weight EMA switched on."""

    def make(*args, **kwargs):
        optimizer, callbacks = make_optimizer(*args, **kwargs)
        return type(optimizer).from_config({**optimizer.get_config(), "use_ema": True, "ema_momentum": 0.999}), callbacks

    return make


def measure(params: dict, budget_name: str, ema: bool, seed: int) -> dict:
    budget = dataclasses.replace(BUDGETS[budget_name], patience=10**6)  # every epoch, for the curve
    split = data.split(data.load(), data.DEFAULT_SPLIT_SEED, budget.train_size)
    make_optimizer = train_trial.make_optimizer
    try:
        if ema:
            train_trial.make_optimizer = with_ema(make_optimizer)
        started = time.perf_counter()
        result = train_trial.train(params, split, budget, seed=seed,
                                   callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if ema else [])
    finally:
        train_trial.make_optimizer = make_optimizer
    return {"budget": budget_name, "ema": ema, "seed": seed, "val_accuracy": result.history.get("val_accuracy"),
            "restored_validation_accuracy": result.validation_accuracy,
            "validation_log_loss": ensemble.log_loss(result.validation_probabilities, split.y_val),
            "seconds": time.perf_counter() - started}


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.recipe_levers", description=__doc__.splitlines()[0])
    recipe = parser.add_mutually_exclusive_group(required=True)
    recipe.add_argument("--baseline", choices=search_space.BASELINES)
    recipe.add_argument("--params", metavar="FILE.json")
    parser.add_argument("--budget", choices=BUDGETS, default="long")
    parser.add_argument("--seed", type=cli.non_negative_int, default=0)
    parser.add_argument("--no-ema", action="store_true", help="the arm without EMA only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = train_trial.load_params(args)[0]
    for ema in (False,) if args.no_ema else (False, True):
        print(json.dumps({"recipe": args.baseline or args.params, **measure(params, args.budget, ema, args.seed)}),
              flush=True)
    return 0


if __name__ == "__main__":
    backend.limit_threads(1)  # a sweep worker's setting; before TensorFlow's first computation
    cli.run(main)
