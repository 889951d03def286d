"""Benchmark 6: a sweep under fire. A smoke sweep with several workers has a random worker
killed with SIGKILL every few seconds, and its parent killed once (then the same command is
run again, as a user would); an undisturbed sweep of the same size is the reference. Target:
no completed trial lost, no run left RUNNING, one MLflow run per trial.

    python -m benchmarks.chaos                      # 60 trials, 4 workers, a kill every 8 s
    python -m benchmarks.chaos --trials 30 --workers 2 --every 5
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from benchmarks import results
from harness import cli, records
from sweeps import run as sweep_run, study as sweep_study

SMOKE = ["--budget", "smoke", "--train-size", "1000", "--max-epochs", "2", "--no-baselines", "--finalists", "0"]


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=cli.positive_int, default=60)
    parser.add_argument("--workers", type=cli.positive_int, default=4)
    parser.add_argument("--every", type=float, default=8.0, help="seconds between worker kills (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kills' choices (default: 0)")
    return parser.parse_args(argv)


def sweep_command(args) -> list[str]:
    return [sys.executable, "-m", "sweeps.run", "--trials", str(args.trials), "--workers", str(args.workers), *SMOKE]


def stores(folder: Path):
    study = optuna.load_study(study_name=sweep_study.DEFAULT_STUDY,
                              storage=sweep_study.open_storage(f"journal:{folder}/mlruns/optuna.journal"))
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(sweep_run.EXPERIMENT)
    return study, client.search_runs([experiment.experiment_id], max_results=10_000)


def running_workers(study: optuna.Study) -> list[int]:
    """Process ids of this machine's workers that are mid-trial now."""
    host = socket.gethostname()
    pids = []
    for trial in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        worker_host, _, pid = trial.user_attrs.get(records.WORKER, "").rpartition(":")
        if worker_host == host and pid.isdigit():
            pids.append(int(pid))
    return pids


def undisturbed(args, folder: Path) -> float:
    started = time.time()
    subprocess.run(sweep_command(args), cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - started


def under_fire(args, folder: Path) -> tuple[float, int, list[int]]:
    """The sweep with a worker killed every ``args.every`` seconds and its parent killed once
    halfway, then rerun until it exits 0; returns its wall-clock, the worker kills and the
    completed trials' numbers seen just before the parent was killed."""
    rng = random.Random(args.seed)
    started, kills, before_parent_kill = time.time(), 0, []
    parent_killed = False
    for _ in range(5):  # the first invocation, killed; the ones that finish the study
        sweep = subprocess.Popen(sweep_command(args), cwd=folder, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        while sweep.poll() is None:
            time.sleep(args.every)
            try:
                study = stores(folder)[0]
            except (KeyError, ValueError, AttributeError):
                continue  # not set up yet
            complete = [t.number for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])]
            if not parent_killed and len(complete) >= args.trials // 2:
                before_parent_kill = complete
                os.kill(sweep.pid, signal.SIGKILL)  # the parent alone: its workers see it gone and stop
                parent_killed = True
                break
            if pids := running_workers(study):
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
        sweep.wait()
        if sweep.returncode == 0:
            break
    return time.time() - started, kills, before_parent_kill


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as calm, tempfile.TemporaryDirectory() as fired:
        calm_seconds = undisturbed(args, Path(calm))
        fire_seconds, kills, before = under_fire(args, Path(fired))
        study, runs = stores(Path(fired))
        trials = study.get_trials(deepcopy=False)
        complete_now = {t.number for t in trials if t.state == TrialState.COMPLETE}
        children = [r for r in runs if records.PARENT_RUN_TAG in r.data.tags]
        per_trial = {}
        for run in children:
            number = run.data.tags[records.TRIAL_NUMBER_TAG]
            per_trial[number] = per_trial.get(number, 0) + 1
        lost = records.lost_first_time(trials)
        rows = [
            ["trials asked (all states)", len(trials)],
            ["trials counted toward --trials", records.counted_trials(trials, args.trials)],
            ["completed", len(complete_now)],
            ["workers killed (SIGKILL)", kills],
            ["trials lost with their worker, retried", len(lost)],
            ["retries", sum(records.RETRY_OF in t.user_attrs for t in trials)],
            ["completed trials lost (completed before the parent's kill, not now)", len(set(before) - complete_now)],
            ["MLflow runs per trial (max)", max(per_trial.values(), default=0)],
            ["trials without a run", len({str(t.number) for t in trials} - set(per_trial))],
            ["runs left RUNNING", sum(r.info.status == "RUNNING" for r in runs)],
            ["wall-clock, undisturbed (s)", f"{calm_seconds:.0f}"],
            ["wall-clock, under fire, all invocations (s)", f"{fire_seconds:.0f}"],
        ]
    ok = (not set(before) - complete_now and max(per_trial.values(), default=0) == 1
          and not any(r.info.status == "RUNNING" for r in runs))
    body = (f"A smoke sweep of {args.trials} trials with {args.workers} workers ({' '.join(SMOKE)}), "
            f"a random mid-trial worker killed every {args.every:g} s and the parent killed once halfway, then "
            f"the same command run again until it finished; beside it the same sweep undisturbed.\n\n"
            + results.table(["figure", "value"], rows)
            + f"\n\nNo completed trial lost, one run per trial, none left RUNNING: {'met' if ok else '**not met**'}.")
    results.record("Chaos: workers and the parent killed mid-sweep", body)
    return 0 if ok else 1


if __name__ == "__main__":
    cli.run(main)
