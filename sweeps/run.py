"""python -m sweeps.run --trials 50: an Optuna study over search_space.suggest, carried up a
fidelity ladder to the full budget and ensembled there.

The five baselines go first; --workers processes train trials (sweeps/supervisor.py); every
trial is a nested MLflow run under the study's parent run; the best explored recipes and the
baselines climb the ladder's rungs (sweeps/rungs.py). Running the same command again resumes
wherever it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

import search_space
from harness import cli, data, records, tracking
from harness.budgets import BUDGETS
from harness.errors import DataError, StoreUnwritable, UserError
from sweeps import front_page, journal, ladder, plan, recovery, rungs, study as sweep_study, supervisor
from sweeps.settings import ENSEMBLE_CANDIDATES, EnsembleSettings, SweepSettings

EXPERIMENT = "mnist-sweeps"
# Each worker is a process that loads TensorFlow (about 1 GB): more than this on one machine
# is a typo, not a plan.
MAX_WORKERS = 64
DEFAULT_STUDY = sweep_study.DEFAULT_STUDY
# @small's size budget: LeNet-5 (61,706 parameters) fits it, kaggle_cnn (887,530) does not.
DEFAULT_SMALL_PARAMS = 100_000


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m sweeps.run", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=cli.positive_int, default=50,
                        help="total trials the study should hold, baselines included (default: 50)")
    parser.add_argument("--study", type=cli.study_name, default=DEFAULT_STUDY,
                        help=f"study name (default: {DEFAULT_STUDY})")
    cli.add_training_arguments(parser, default_budget=None)
    parser.add_argument("--sampler", choices=sweep_study.SAMPLERS, default="tpe")
    parser.add_argument("--objective", choices=sweep_study.OBJECTIVE_CHOICES, default="accuracy",
                        help="what the study optimises (default: accuracy, on validation); accuracy,latency: a "
                             "multi-objective study of validation accuracy and one image's prediction time, whose "
                             "answer is their front (Optuna does not prune multi-objective trials)")
    parser.add_argument("--pruner", choices=sweep_study.PRUNERS,
                        help="default: hyperband; none with --objective accuracy,latency")
    parser.add_argument("--workers", type=cli.int_at_least(1, MAX_WORKERS),
                        help="worker processes here (default: 1 with a GPU; on a CPU one per core, "
                             "at most 2, each with its share of the cores)")
    parser.add_argument("--timeout", type=cli.positive_int, metavar="SECONDS",
                        help="start no trial after this many seconds")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage URL, e.g. postgresql://user:pass@host/db "
                             f"(default: a journal file, mlruns/{sweep_study.JOURNAL_NAME})")
    parser.add_argument("--no-baselines", action="store_true", help="do not enqueue the five baselines first")
    parser.add_argument("--retrain", action="store_true",
                        help="train every trial, even where a finished run of this MLflow store trained the same "
                             "recipe at the same budget, seed, data and split (by default that run is reused)")
    parser.add_argument("--no-warm-start", action="store_true",
                        help="a new study does not start from the best recipes of this storage's earlier sweeps")
    parser.add_argument("--finalists", type=cli.non_negative_int, default=3,
                        help="sampled recipes carried up the ladder to the top rung (the full budget), where "
                             "they and the baselines train at one budget and the best are ensembled; "
                             f"each rung below holds {plan.PROMOTION_FACTOR}x as many (default: 3; 0: explore only)")
    parser.add_argument("--hours", type=cli.positive_float, metavar="H",
                        help="wall-clock of the whole sweep, ladder and ensemble included (default: the budget's, "
                             "2 at quick and at long, the GPU default; none at smoke); exploration takes at most "
                             f"{plan.EXPLORE_SHARE * 100:.0f}%% of it")
    parser.add_argument("--small-params", type=cli.positive_int, default=DEFAULT_SMALL_PARAMS, metavar="N",
                        help="the size budget of the model registered as @small: the top rung's most accurate "
                             f"model with at most N parameters (default: {DEFAULT_SMALL_PARAMS:,})")
    args = parser.parse_args(argv)
    args.objective = tuple(args.objective.split(","))
    if len(args.objective) > 1 and args.sampler == "cmaes":
        parser.error("--sampler cmaes with --objective accuracy,latency: CMA-ES optimises one objective; "
                     "use tpe (the default), random or gp")
    if len(args.objective) > 1 and args.pruner not in (None, "none"):
        parser.error(f"--pruner {args.pruner} with --objective {','.join(args.objective)}: Optuna prunes "
                     "single-objective trials only; leave --pruner out")
    args.pruner = args.pruner or ("hyperband" if len(args.objective) == 1 else "none")
    return args


def gpu_visible() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return listing.returncode == 0 and "GPU" in listing.stdout


def default_budget_name(gpu: bool | None = None) -> str:
    """A GPU explores at the ladder's middle rung: every image and 10 epochs cost it about
    what quick costs two CPU cores, and the same command climbs from there to full."""
    return "long" if (gpu_visible() if gpu is None else gpu) else "quick"


def open_study(args, storage, fingerprint: dict, set_up: Callable[[optuna.Study], None]) -> optuna.Study:
    """Create the study, or join it if its fingerprint matches. Its creator enqueues the
    baselines first and the best recipes of the storage's earlier sweeps after them, then
    ``set_up`` runs (the MLflow parent run), and the fingerprint goes last: other
    invocations, here or on other machines, wait for it before they ask."""
    try:
        if args.study in optuna.study.get_all_study_names(storage):  # checked first: a refused
            raise optuna.exceptions.DuplicatedStudyError  # resume writes nothing to the storage
        study = optuna.create_study(study_name=args.study, storage=storage,
                                    directions=sweep_study.directions(args.objective))
    except optuna.exceptions.DuplicatedStudyError:  # it exists, or another machine just made it
        study = optuna.load_study(study_name=args.study, storage=storage)
        recorded = wait_for_fingerprint(study)
        if not records.same_setup(recorded, fingerprint):
            raise UserError(f"study {args.study!r} was recorded with a different setup "
                            f"({records.describe_difference(recorded, fingerprint)}); "
                            "resume it with its original flags, or name a new one with --study") from None
        return study
    enqueued = 0
    if not args.no_baselines:
        for name in list(search_space.BASELINES)[:args.trials]:
            study.enqueue_trial(search_space.baseline(name), user_attrs={records.BASELINE: name})
            enqueued += 1
    if not args.no_warm_start:
        for name, trial in sweep_study.earlier_best(storage, args.study, fingerprint)[:max(0, args.trials - enqueued)]:
            study.enqueue_trial(trial.params, user_attrs={records.WARM_START: f"{name}#{trial.number}"})
    set_up(study)
    study.set_user_attr(records.FINGERPRINT, fingerprint)
    return study


def wait_for_fingerprint(study: optuna.Study, seconds: float = 60) -> dict:
    waited = 0.0
    while not (recorded := records.recorded_fingerprint(study)):
        if waited >= seconds:
            raise UserError(f"study {study.study_name!r} exists but was never set up by sweeps.run "
                            "(or its creator stopped while setting it up); name a new one with --study")
        time.sleep(0.5)
        waited += 0.5
    return recorded


def parent_run(study: optuna.Study, args, uri: str, settings_tags: dict) -> str:
    """The study's MLflow run, under which every trial's run nests; created once."""
    client = tracking.client(uri)
    run_id = study.user_attrs.get(records.PARENT_RUN_ID)
    if run_id is None:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        run = client.create_run(experiment.experiment_id, run_name=args.study,
                                tags={**tracking.provenance_tags(), records.STUDY_TAG: args.study})
        run_id = run.info.run_id
        study.set_user_attr(records.PARENT_RUN_ID, run_id)
    else:
        client.update_run(run_id, status="RUNNING")
    for key, value in settings_tags.items():
        client.set_tag(run_id, key, value)
    return run_id


def write_best_params(study: optuna.Study) -> Path | None:
    """The best trial's params as a file train_trial.py --params can read."""
    if not study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
        return None
    path = tracking.store_folder() / "studies" / study.study_name / "best_params.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    best = records.best_trial(study)
    path.write_text(json.dumps(search_space.with_recipe_keys(best.params, best.user_attrs.get(records.BASELINE)),
                               indent=2) + "\n")
    return path


def summary(sweep: Sweep, sweep_plan: plan.Plan, best_file: Path | None, seconds: float, cores_used: float) -> str:
    study, args, budget_name, uri = sweep.study, sweep.args, sweep_plan.explore.budget.name, sweep.uri
    trials = study.get_trials(deepcopy=False)
    states = supervisor.counts(trials)
    over_cap = states.pop("over cap")
    lost = states.pop("lost")
    unfinished = "".join(f", {states[state]} {state.name.lower()}" for state in (TrialState.RUNNING, TrialState.WAITING)
                         if states[state])
    lines = [f"Study {args.study!r}: {supervisor.finished(states)} trials "
             f"({states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
             f"{states[TrialState.FAIL]} failed{unfinished}) after {seconds / 60:.1f} min in this run; "
             f"the workers kept {cores_used:.2f} of {os.cpu_count()} cores busy"]
    if over_cap:
        lines.append(f"  and {over_cap} sampled networks priced over the {budget_name} budget's cap, "
                     "not trained (recorded as pruned; they do not count toward --trials)")
    if lost:
        lines.append(f"  and {lost} trials lost with their worker (killed or crashed), each retried once with "
                     "the same params (recorded as failed; they do not count toward --trials)")
    baselines = {t.user_attrs[records.BASELINE]: t for t in trials if records.BASELINE in t.user_attrs}
    if baselines:
        lines.append("Baselines at this budget: " + ", ".join(
            f"{name} {records.accuracy(t):.4f}" if t.state == TrialState.COMPLETE else f"{name} {t.state.name.lower()}"
            for name, t in baselines.items()))
    if best_file is None:
        lines.append("No trial has completed yet.")
    else:
        best = records.best_trial(study)
        label = f" ({best.user_attrs[records.BASELINE]})" if records.BASELINE in best.user_attrs else ""
        lines.append(f"Best: trial {best.number}{label}, validation accuracy {records.accuracy(best):.4f}")
        lines.append(f"  params: {json.dumps(best.params)}")
        overrides = "".join(f" --{flag} {value}" for flag, value in (
            ("train-size", args.train_size), ("max-epochs", args.max_epochs), ("data", args.data))
            if value is not None)
        lines.append(f"Reproduce the best trial: python train_trial.py --params {best_file} "
                     f"--budget {budget_name}{overrides} --seed {args.seed}")
        storage = f" --storage {sweep_study.redact(args.storage)}" if args.storage else ""
        storage += f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""
        lines.append(f"Check it over seeds and register it: python -m sweeps.reproduce --study {args.study}{storage}")
        lines.append(f"Compare it with the baselines: python -m analysis.compare --study {args.study}{storage}")
    if not uri.startswith(("http://", "https://")):
        lines.append(f"MLflow: start its UI with  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    lines.append(f"  the sweep's page (leaderboard, plots): {tracking.run_link(uri, sweep.experiment_id, sweep.run_id)}")
    lines.append(f"  every run, best validation accuracy first: {tracking.ranked_link(uri, sweep.experiment_id)}")
    return "\n".join(lines)


def stores_folder_of(storage_url: str, tracking_uri: str) -> Path | None:
    """The local folder of the sweep's stores (the journal's, else the SQLite database's)."""
    if storage_url.startswith("journal:"):
        return Path(storage_url.removeprefix("journal:")).parent
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent
    return None


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children (the workers, once joined)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Sweep:
    """One invocation's stores, study and parent run, and what it tells its workers."""
    args: argparse.Namespace
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    storage_url: str
    uri: str
    client: object  # an mlflow.MlflowClient (tracking.client), imported where it is made
    experiment_id: str
    run_id: str
    settings: SweepSettings  # exploration's; a rung's differs in its study, budget and times
    workers: int
    stores_folder: Path | None
    crashed: list[int] = field(default_factory=list)  # exit codes of workers that died abnormally

    def recover(self, study: optuna.Study | None = None, lock_path: str | None = None, where: str = "") -> None:
        """End the trials of ``study`` (exploration's by default) whose worker is gone, and
        queue their retries (only where a lock path is given: a rung's retries are queued when
        the ladder reaches it)."""
        study = study or self.study
        supervisor.report_orphans(recovery.end_orphaned_trials(
            study, self.storage, self.client, self.experiment_id, self.run_id), where)
        if lock_path is not None:
            supervisor.report_retries(recovery.retry_lost_trials(study, self.storage, lock_path), where)

    def end_on_store_failure(self, outcome: supervisor.Outcome, studies: list[optuna.Study]) -> None:
        """A store could not be written: close what the workers left open, then stop."""
        if outcome.store_failure is None:
            return
        if self.stores_folder is not None:  # the workers are gone; the reserve makes room to close
            recovery.release_space(self.stores_folder)
        mended = None
        if self.storage_url.startswith("journal:"):  # before closing the trials appends to it
            mended = journal.set_aside_torn_tail(Path(self.storage_url.removeprefix("journal:")))
        with contextlib.suppress(Exception):
            for study in studies:
                self.recover(study)
        with contextlib.suppress(Exception):
            self.client.set_terminated(self.run_id, "FAILED")
        # One line for one failure: a journal record the full disk tore is part of its story.
        raise StoreUnwritable(f"cannot write {outcome.store_failure}" + (f"; {mended}" if mended else ""))


def open_sweep(args) -> Sweep:
    """Check the flags, data and stores; create or join the study and its parent run; end the
    trials an earlier invocation's dead workers left running."""
    gpu = gpu_visible()
    workers = args.workers or (1 if gpu else min(2, os.cpu_count() or 1))
    # On a CPU each worker gets its share of the cores: two single-threaded workers train more
    # images together than one worker with both threads (RESULTS.md, "Sweep efficiency").
    threads = None if gpu or workers == 1 else max(1, (os.cpu_count() or 1) // workers)
    budget = BUDGETS[args.budget or default_budget_name(gpu)].overridden(
        train_size=args.train_size, max_epochs=args.max_epochs)
    sweep_study.check_sampler_available(args.sampler)
    dataset = data.load(args.data)
    data.split(dataset, data.DEFAULT_SPLIT_SEED, budget.train_size)  # refuses a bad --train-size now
    if args.finalists and dataset.x_test is None:  # found now, not after hours of training
        raise DataError(f"{dataset.source} has no labelled test set ({dataset.format}), which the ladder's last step "
                        "reads once for the ensemble and the best model; explore only (--finalists 0) or use data "
                        "with test labels")
    storage_url = sweep_study.storage_url(args.storage)
    storage = sweep_study.open_storage(storage_url, appends=True)
    uri = tracking.checked_uri(args.tracking_uri)
    stores_folder = stores_folder_of(storage_url, uri)
    if stores_folder is not None:
        recovery.reserve_space(stores_folder)
    tracking.ensure_experiment(uri, EXPERIMENT)
    fingerprint = records.fingerprint(search_space.SEARCH_SPACE_VERSION, dataset.sha256, budget, data.DEFAULT_SPLIT_SEED,
                                      args.objective)
    tags = {records.STORAGE_TAG: sweep_study.redact(storage_url), records.SWEEP_TRIALS_TAG: str(args.trials),
            records.SWEEP_SAMPLER_TAG: args.sampler, records.SWEEP_PRUNER_TAG: args.pruner,
            records.SWEEP_WORKERS_TAG: str(workers), records.SWEEP_BUDGET_TAG: budget.name,
            records.SWEEP_OBJECTIVE_TAG: ",".join(args.objective),
            records.SWEEP_FINGERPRINT_TAG: json.dumps(fingerprint)}
    study = open_study(args, storage, fingerprint, lambda created: parent_run(created, args, uri, tags))
    run_id = parent_run(study, args, uri, tags)
    client = tracking.client(uri)
    settings = SweepSettings(
        study_name=args.study, storage_url=storage_url, tracking_uri=uri, experiment=EXPERIMENT,
        parent_run_id=run_id, total_trials=args.trials, sampler=args.sampler, pruner=args.pruner,
        seed=args.seed, budget=budget, data_path=args.data, split_seed=data.DEFAULT_SPLIT_SEED,
        lock_path=str(tracking.store_folder() / "studies" / args.study / "ask.lock"), last_start=None,
        threads=threads, retrain=args.retrain, invocation=secrets.token_hex(8), objective=args.objective)
    sweep = Sweep(args, study, storage, storage_url, uri, client, client.get_run(run_id).info.experiment_id,
                  run_id, settings, workers, stores_folder)
    sweep.recover(lock_path=settings.lock_path)
    # An earlier ladder's rungs, climbed again or not (--finalists 0): a trial its dead worker
    # left running is ended now; a climb queues its retry when it reaches the rung.
    for rung in rungs.existing_rungs(study, storage, budget):
        sweep.recover(rung, where=f"Rung {records.rung_budget_name(rung.study_name)}: ")
    return sweep


def command_ends(sweep: Sweep, sweep_plan: plan.Plan, phase: plan.Phase):
    """For the progress bar: when the whole command is expected to end if ``phase`` ends at a
    given time, the later rungs forecast from the recipes exploration would now send up."""
    if not sweep_plan.climbs():
        return None

    def expected_end(phase_ends: float) -> float:
        explored = sweep.study.get_trials(deepcopy=False)  # once per reading, for every later rung
        ranked = ladder.ranked(explored)
        baselines = [t for t in explored if records.BASELINE in t.user_attrs and records.RETRY_OF not in t.user_attrs]

        def candidates(rung: plan.Phase) -> list:
            return ladder.finalists(ranked, rung.trials) + (baselines if rung.top else [])

        return sweep_plan.expected_end(phase, phase_ends, candidates, sweep.workers)

    return expected_end


def explore(sweep: Sweep, sweep_plan: plan.Plan, phase: plan.Phase) -> None:
    settings = dataclasses.replace(sweep.settings, last_start=phase.last_start, deadline=phase.deadline)
    recover = functools.partial(sweep.recover, lock_path=settings.lock_path)
    outcome = supervisor.supervise(sweep.study, settings, sweep.workers, on_worker_lost=recover, title=phase.title,
                                   command_ends=command_ends(sweep, sweep_plan, phase))
    sweep.end_on_store_failure(outcome, [sweep.study])
    recover()  # workers killed at the end
    record_stop(sweep, phase, sweep.study, outcome)


def climb(sweep: Sweep, sweep_plan: plan.Plan, phase: plan.Phase, lower: optuna.Study,
          climbed: list[tuple[plan.Phase, optuna.Study]]) -> optuna.Study:
    outcome, rung = rungs.run_rung(phase, sweep_plan, sweep.study, lower, sweep.settings, sweep.workers,
                                   sweep.storage, sweep.client, sweep.experiment_id, sweep.recover,
                                   command_ends(sweep, sweep_plan, phase))
    climbed.append((phase, rung))
    sweep.end_on_store_failure(outcome, [study for _, study in climbed])
    record_stop(sweep, phase, rung, outcome)
    return rung


def ensemble(sweep: Sweep, phase: plan.Phase, top_rung: optuna.Study) -> None:
    """Once the top rung has no trial running, ensemble it, once per study: invocations that get
    here together take turns on a lock, and the later ones find it built."""
    if not ladder.needs_ensemble(sweep.study, top_rung, ENSEMBLE_CANDIDATES):
        phase.stopped, phase.detail = plan.Stop.DONE, "nothing new to ensemble"
        return
    rungs.wait_for_running(top_rung, lambda: sweep.recover(top_rung), phase.budget.name)
    lock = str(Path(sweep.settings.lock_path).with_name("ensemble.lock"))
    with sweep_study.ask_lock(sweep.storage, f"{top_rung.study_name}#ensemble", lock):
        if not ladder.needs_ensemble(sweep.study, top_rung, ENSEMBLE_CANDIDATES):
            built = records.ladder_result(sweep.study)
            print(f"Ensemble: built meanwhile by another invocation (run {built.ensemble.run_id if built else '?'}); "
                  "nothing to do here", flush=True)
            phase.stopped, phase.detail = plan.Stop.DONE, "built by another invocation"
            return
        failure = rungs.ensemble(EnsembleSettings(
            exploring_study=sweep.study.study_name, rung_study=top_rung.study_name, storage_url=sweep.storage_url,
            tracking_uri=sweep.uri, experiment=EXPERIMENT, parent_run_id=sweep.run_id, budget=phase.budget,
            data_path=sweep.args.data, split_seed=data.DEFAULT_SPLIT_SEED, model_name=tracking.REGISTERED_MODEL,
            small_params=sweep.args.small_params),
            sweep.client, sweep.experiment_id)
    phase.stopped, phase.detail = (plan.Stop.FAILED, failure) if failure else (plan.Stop.DONE, "")


def record_stop(sweep: Sweep, phase: plan.Phase, study: optuna.Study, outcome: supervisor.Outcome) -> None:
    sweep.crashed += outcome.crashed
    trials = study.get_trials(deepcopy=False)
    phase.stopped = plan.stop_of(phase, interrupted=outcome.interrupted, store_failed=outcome.store_failure is not None,
                                 crashed=bool(outcome.crashed), now=time.time(),
                                 counted=records.counted_trials(trials, phase.trials))
    if outcome.idle_since is not None:
        phase.stopped = plan.Stop.OUT_OF_TIME
        left = (phase.deadline - outcome.idle_since) / 60 if phase.deadline else 0.0
        phase.detail = (f"from {time.strftime('%H:%M', time.localtime(outcome.idle_since))} a worker found none of the "
                        f"{outcome.unstarted} queued trial(s) fits the {left:.0f} min left: each is forecast to take longer")


def main(argv: Sequence[str] | None = None) -> int:
    invoked = time.time()
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and summary say it
    sweep = open_sweep(args)
    sweep_plan = plan.make(invoked, sweep.settings.budget, args.study, args.trials, args.pruner, args.finalists,
                           timeout=args.timeout, hours=args.hours)
    print(opening(sweep, sweep_plan), flush=True)
    started, cpu_before = time.time(), children_cpu_seconds()
    climbed: list[tuple[plan.Phase, optuna.Study]] = []
    for phase in sweep_plan.phases:
        if phase.kind == "explore":
            explore(sweep, sweep_plan, phase)
        elif not sweep_plan.may_follow(phase):
            break
        elif phase.kind == "rung":
            climb(sweep, sweep_plan, phase, climbed[-1][1] if climbed else sweep.study, climbed)
        else:
            ensemble(sweep, phase, climbed[-1][1])
        phase.ended = time.time()
    cores_used = (children_cpu_seconds() - cpu_before) / max(time.time() - started, 1e-9)
    return finish(sweep, sweep_plan, climbed, time.time() - started, cores_used)


def opening(sweep: Sweep, sweep_plan: plan.Plan) -> str:
    budget, args, threads = sweep.settings.budget, sweep.args, sweep.settings.threads
    explore_seconds = plan.policy(budget).explore_seconds
    wall_clock = f", {explore_seconds / 60:g} min a sweep" if explore_seconds else ""
    objective = ("objectives: validation accuracy (max) and one image's prediction ms (min), pruning off; "
                 if len(args.objective) > 1 else "")
    line = (f"Study {args.study!r}: budget {budget.name} ({budget.train_size or 'all'} training images, "
            f"up to {budget.max_epochs} epochs, at most {budget.max_training_tflop:g} TFLOP and "
            f"{budget.trial_seconds:g} s a trial{wall_clock}); {objective}sampler {args.sampler}, pruner {args.pruner}, "
            f"{sweep.workers} worker(s){f' of {threads} thread(s)' if threads else ''}; "
            f"storage {sweep_study.redact(sweep.storage_url)}")
    ladder_line = plan.describe(sweep_plan)
    return f"{line}\n{ladder_line}" if ladder_line else line


def finish(sweep: Sweep, sweep_plan: plan.Plan, climbed: list[tuple[plan.Phase, optuna.Study]],
           seconds: float, cores_used: float) -> int:
    """Record the answer on the parent run, close it, write its page and print the summary."""
    study, client, run_id = sweep.study, sweep.client, sweep.run_id
    stops = [phase.stopped for phase in sweep_plan.phases]
    interrupted = plan.Stop.INTERRUPTED in stops
    failed = sweep_plan.explore.stopped == plan.Stop.WORKERS_FAILED
    ensemble_failure = next((p.detail for p in sweep_plan.phases if p.stopped == plan.Stop.FAILED), None)
    client.log_metric(run_id, "worker_cpu_cores", cores_used)
    if study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
        client.log_metric(run_id, "best_validation_accuracy", records.accuracy(records.best_trial(study)))
        client.set_tag(run_id, records.BEST_TRIAL_TAG, str(records.best_trial(study).number))
    result = records.ladder_result(study)
    if result and climbed:
        for key, value in {"top_rung_validation_accuracy": result.champion.validation_accuracy,
                           "ensemble_validation_accuracy": result.ensemble.validation_accuracy,
                           "top_rung_test_accuracy": result.champion.test_accuracy,
                           "ensemble_test_accuracy": result.ensemble.test_accuracy}.items():
            client.log_metric(run_id, key, value)
        client.set_tag(run_id, records.TOP_RUNG_WINNER_TAG, result.champion.label)
    studies = [study, *(rung for _, rung in climbed)]
    running = any(s.get_trials(deepcopy=False, states=[TrialState.RUNNING]) for s in studies)
    if interrupted:
        client.set_terminated(run_id, "KILLED")
    elif failed or ensemble_failure:
        client.set_terminated(run_id, "FAILED")
    elif not running:
        client.set_terminated(run_id, "FINISHED")  # else another invocation's workers are still at it
    front_page.write(study, client, run_id, sweep.uri, sweep.experiment_id, studies[1:])
    print(summary(sweep, sweep_plan, write_best_params(study), seconds, cores_used))
    if climbed:
        print(rungs.ladder_summary(study, climbed))
    explored = sweep_plan.explore
    if explored.stopped == plan.Stop.OUT_OF_TIME:
        counted = records.counted_trials(study.get_trials(deepcopy=False), explored.trials)
        going_on = " The ladder went on with the trials explored." if climbed else " Run the same command again to go on."
        print(f"Stopped starting exploring trials at {explored.limit}: the time left could not hold another whole "
              f"trial; {counted} of {explored.trials} trials are done.{going_on} "
              f"This invocation took {(time.time() - sweep_plan.invoked) / 60:.1f} min.")
    if interrupted:
        print("interrupted: run the same command again to go on to the requested total", file=sys.stderr)
        return 130
    if sweep.crashed:
        print(f"{'error: ' if failed else ''}{len(sweep.crashed)} worker(s) exited abnormally (exit codes "
              f"{sweep.crashed}) and were replaced; a trial one left running was recorded as failed and retried "
              "once (counted above as lost; none if it died before taking one)",
              file=sys.stderr)
    if ensemble_failure:
        print(f"error: {ensemble_failure}", file=sys.stderr)
    return 1 if failed or ensemble_failure else 0


if __name__ == "__main__":
    cli.run(main)
