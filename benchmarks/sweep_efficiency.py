"""Benchmark 3: wall-clock until a sweep's best validation accuracy reaches 99.0 % and 99.2 %,
for the default sweep against TPE with no pruning and against random search: same space,
budget, baselines and machine, one arm after another. Target: the default sweep needs at most
a third of the no-pruning sweep's time.

    python -m benchmarks.sweep_efficiency                         # the three arms, ~45 min each at most
    python -m benchmarks.sweep_efficiency --existing default=mnist-sweep --arms tpe-no-pruning random

An arm stops early once its best trial reaches the highest threshold (Ctrl-C to its sweep:
the running trials are recorded as failed). Times are read from the study's records: from
its first trial's start to the end of the first trial at or over the threshold. A no-pruning
arm that stops before reaching a threshold still bounds the ratio; to decide the target it
must run three times as long as the default arm needed, e.g. after a default arm that
reached 99.2 % in 25 min:

    python -m benchmarks.sweep_efficiency --existing default=mnist-sweep --arms tpe-no-pruning --timeout 4500
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from benchmarks import results
from harness import cli
from sweeps import study as sweep_study

ARMS = {
    "default": [],  # TPE as configured in sweeps/study.py, Hyperband
    "tpe-no-pruning": ["--pruner", "none"],
    "random": ["--sampler", "random", "--pruner", "none"],
}
THRESHOLDS = (0.990, 0.992)
TARGET = 1 / 3


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.sweep_efficiency", description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--existing", nargs="+", default=[], metavar="ARM=STUDY",
                        help="read an arm from a study already run with that arm's flags instead of running it")
    parser.add_argument("--trials", type=cli.positive_int, default=50)
    parser.add_argument("--timeout", type=cli.positive_int, default=45 * 60, metavar="SECONDS",
                        help="an arm starts no trial after this (default: 2700, the quick sweep's 45 minutes)")
    parser.add_argument("--prefix", default="bench", help="arms' study names: PREFIX-ARM (default: bench)")
    parser.add_argument("--budget", default="quick", help="budget of the arms it runs (default: quick)")
    args = parser.parse_args(argv)
    existing = {}
    for item in args.existing:
        arm, _, name = item.partition("=")
        if arm not in ARMS or not name:
            parser.error(f"--existing {item}: expected ARM=STUDY with ARM one of {', '.join(ARMS)}")
        existing[arm] = name
    args.existing = existing
    return args


def run_arm(study_name: str, flags: list[str], args) -> None:
    """One sweep, as a user runs it; stopped with Ctrl-C once it reaches the last threshold."""
    command = [sys.executable, "-m", "sweeps.run", "--trials", str(args.trials), "--study", study_name,
               "--budget", args.budget, "--timeout", str(args.timeout), "--finalists", "0", *flags]
    print("$", " ".join(command[1:]), flush=True)
    sweep = subprocess.Popen(command, start_new_session=True)
    storage = sweep_study.open_storage(sweep_study.storage_url(None))
    try:
        while sweep.poll() is None:
            time.sleep(15)
            try:
                reached = best_value(optuna.load_study(study_name=study_name, storage=storage)) >= THRESHOLDS[-1]
            except KeyError:  # not created yet
                continue
            if reached:
                os.killpg(sweep.pid, signal.SIGINT)  # its workers ignore SIGINT; the parent stops them
                sweep.wait()
    except KeyboardInterrupt:  # the sweep runs in a session of its own: pass the Ctrl-C on
        os.killpg(sweep.pid, signal.SIGINT)
        sweep.wait()
        raise
    if sweep.returncode not in (0, 130):
        raise SystemExit(f"the {study_name} sweep exited with {sweep.returncode}")


def best_value(study: optuna.Study) -> float:
    values = [t.value for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])]
    return max(values, default=0.0)


def time_to(study: optuna.Study, threshold: float) -> float | None:
    """Seconds from the study's first trial start to the first completed trial at or over
    ``threshold``; None if none reached it."""
    trials = study.get_trials(deepcopy=False)
    start = min(t.datetime_start for t in trials if t.datetime_start)
    reached = [t.datetime_complete for t in trials
               if t.state == TrialState.COMPLETE and t.value >= threshold]
    return (min(reached) - start).total_seconds() if reached else None


def span(study: optuna.Study) -> float:
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(t.datetime_start for t in trials)).total_seconds()


def verdict(threshold: float, ours: float | None, plain: float | None, plain_span: float) -> str:
    """The ratio default / no pruning at one threshold, or its upper bound when the no-pruning
    arm stopped (time or trials) before reaching it: it would have needed more than its span."""
    to = f"To {threshold:.1%}: default / no pruning"
    if ours is None:
        return f"{to}: no ratio (the default arm did not reach it)."
    if plain is not None:
        ratio = ours / plain
        return f"{to} = **{ratio:.2f}**; target <= 1/3: {'met' if ratio <= TARGET else '**not met**'}."
    bound = ours / plain_span
    outcome = "met" if bound <= TARGET else "undecided (the no-pruning arm stopped too early to tell)"
    return (f"{to} < **{bound:.2f}** (the no-pruning arm did not reach it in {plain_span / 60:.1f} min); "
            f"target <= 1/3: {outcome}.")


def minutes(seconds: float | None, bound: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds is not None else f"not reached in {bound / 60:.1f} min"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = {arm: args.existing.get(arm, f"{args.prefix}-{arm}") for arm in dict.fromkeys([*args.existing, *args.arms])}
    for arm in args.arms:
        if arm not in args.existing:
            run_arm(names[arm], ARMS[arm], args)
    rows, times, spans = [], {}, {}
    for arm, name in names.items():
        study = sweep_study.load_existing(name, sweep_study.storage_url(None))
        states = {s: len(study.get_trials(deepcopy=False, states=[s])) for s in (TrialState.COMPLETE, TrialState.PRUNED)}
        length = spans[arm] = span(study)
        times[arm] = {threshold: time_to(study, threshold) for threshold in THRESHOLDS}
        rows.append([arm, f"`{name}`", " ".join(ARMS[arm]) or "(defaults)", f"{best_value(study):.4f}",
                     *[minutes(times[arm][t], length) for t in THRESHOLDS], f"{length / 60:.1f} min",
                     f"{states[TrialState.COMPLETE]} / {states[TrialState.PRUNED]}"])
    body = (f"Each arm: `python -m sweeps.run --trials {args.trials} --budget {args.budget}` with the flags "
            "shown, the five baselines first, one after another on this machine.\n\n"
            + results.table(["arm", "study", "flags", "best", *[f"time to {t:.1%}" for t in THRESHOLDS],
                             "span", "complete / pruned (priced out included)"], rows))
    if "default" in times and "tpe-no-pruning" in times:
        for threshold in THRESHOLDS:
            body += "\n\n" + verdict(threshold, times["default"][threshold],
                                      times["tpe-no-pruning"][threshold], spans["tpe-no-pruning"])
    results.record("Sweep efficiency", body)
    return 0


if __name__ == "__main__":
    cli.run(main)
