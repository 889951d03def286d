"""python -m sweeps.run --trials 50: an Optuna study over search_space.suggest.

The five baselines go first; --workers processes train trials; every trial is a nested
MLflow run under the study's parent run. Running the same command again resumes the study
up to --trials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

import search_space
from harness import cli, data, tracking
from harness.budgets import BUDGETS
from harness.errors import StoreUnwritable, UserError
from sweeps import front_page, journal, ladder, progress, records, recovery, study as sweep_study
from sweeps.settings import ENSEMBLE_MEMBERS, STORE_FAILED_EXIT, EnsembleSettings, SweepSettings

EXPERIMENT = "mnist-sweeps"
DEFAULT_STUDY = sweep_study.DEFAULT_STUDY


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m sweeps.run", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=cli.positive_int, default=50,
                        help="total trials the study should hold, baselines included (default: 50)")
    parser.add_argument("--study", default=DEFAULT_STUDY, help=f"study name (default: {DEFAULT_STUDY})")
    cli.add_training_arguments(parser, default_budget=None)
    parser.add_argument("--sampler", choices=sweep_study.SAMPLERS, default="tpe")
    parser.add_argument("--pruner", choices=sweep_study.PRUNERS, default="hyperband")
    parser.add_argument("--workers", type=cli.positive_int,
                        help="worker processes here (default: 1 with a GPU; on a CPU one per core, "
                             "at most 2, each with its share of the cores)")
    parser.add_argument("--timeout", type=cli.positive_int, metavar="SECONDS",
                        help="start no trial after this many seconds")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage URL, e.g. postgresql://user:pass@host/db "
                             f"(default: a journal file, mlruns/{sweep_study.JOURNAL_NAME})")
    parser.add_argument("--no-baselines", action="store_true", help="do not enqueue the five baselines first")
    parser.add_argument("--finalists", type=cli.non_negative_int, default=3,
                        help="sampled recipes carried up the ladder to the top rung (the full budget), where "
                             "they and the baselines train at one budget and the best are ensembled; "
                             f"each rung below holds {ladder.PROMOTION_FACTOR}x as many (default: 3; 0: explore only)")
    parser.add_argument("--hours", type=cli.positive_float, metavar="H",
                        help="wall-clock of the whole sweep, ladder and ensemble included (default: the budget's, "
                             "2 at quick and at long, the GPU default; none at smoke); exploration takes at most "
                             f"{ladder.EXPLORE_SHARE:.0%} of it")
    return parser.parse_args(argv)


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
    baselines first, then ``set_up`` runs (the MLflow parent run), and the fingerprint goes
    last: other invocations, here or on other machines, wait for it before they ask."""
    try:
        if args.study in optuna.study.get_all_study_names(storage):  # checked first: a refused
            raise optuna.exceptions.DuplicatedStudyError  # resume writes nothing to the storage
        study = optuna.create_study(study_name=args.study, storage=storage, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:  # it exists, or another machine just made it
        study = optuna.load_study(study_name=args.study, storage=storage)
        recorded = wait_for_fingerprint(study)
        if recorded != fingerprint:
            raise UserError(f"study {args.study!r} was recorded with a different setup "
                            f"({records.describe_difference(recorded, fingerprint)}); "
                            "resume it with its original flags, or name a new one with --study") from None
        return study
    if not args.no_baselines:
        for name in list(search_space.BASELINES)[:args.trials]:
            study.enqueue_trial(search_space.baseline(name), user_attrs={records.BASELINE: name})
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


def counts(trials: list[optuna.trial.FrozenTrial]) -> Counter:
    """Trials by state; samples priced over the cap (PRUNED in Optuna) and trials lost with
    their worker and retried (FAIL) are counted apart."""
    over_cap = {t.number for t in records.priced_out(trials)}
    lost = {t.number for t in records.lost_first_time(trials)}
    states = Counter(t.state for t in trials if t.number not in over_cap | lost)
    states["over cap"] = len(over_cap)
    states["lost"] = len(lost)
    return states


def finished(states: Counter) -> int:
    return states[TrialState.COMPLETE] + states[TrialState.PRUNED] + states[TrialState.FAIL]


@dataclass
class Outcome:
    crashed: list[int] = field(default_factory=list)  # exit codes of workers that died abnormally
    interrupted: bool = False  # stopped by Ctrl-C (or SIGTERM)
    store_failure: str | None = None  # what a worker could not write, when one could not


def _worker_process(settings: SweepSettings, worker_index: int, failures) -> None:
    """A worker process's entry point. Its import of the trial code (and so of TensorFlow)
    happens here, in the worker, never in the parent."""
    from sweeps import objective

    objective.worker_main(settings, worker_index, failures)


def supervise(study: optuna.Study, settings: SweepSettings, worker_count: int,
              on_worker_lost: Callable[[], None] = lambda: None, phase: str | None = None) -> Outcome:
    """Run the workers under a live progress bar (done, time left, pruned, failed, best so far),
    starting a fresh one whenever a worker has trained its share of trials and the study
    still needs more. A worker that dies (killed, crashed) is replaced too, after
    ``on_worker_lost`` has ended the trial it left running and queued its retry.

    Ctrl-C (or SIGTERM to this process) asks each worker to stop (SIGTERM): at its next
    batch it records its running trial as failed, with the reason, closes the trial's
    MLflow run and exits. A second one kills the workers and returns at once; the next
    invocation ends the trials they leave running. The signal only sets a flag here too,
    so no store write of this process is cut short."""
    from tqdm import tqdm

    # Spawned, not forked: each worker gets a fresh TensorFlow runtime of its own.
    context = multiprocessing.get_context("spawn")
    failures = context.SimpleQueue()  # what a worker could not write, before it exits
    started = 0

    def start_worker() -> multiprocessing.Process:
        nonlocal started
        # A new number for every process, so a replacement does not replay its sampler's seed.
        worker = context.Process(target=_worker_process, args=(settings, started, failures))
        started += 1
        worker.start()
        return worker

    def needs_more() -> bool:
        return (not outcome.interrupted and outcome.store_failure is None
                and (settings.last_start is None or time.time() < settings.last_start)
                and records.counted_trials(study.get_trials(deepcopy=False), total) < total)

    stop_signals: list[int] = []
    woken = threading.Event()

    def on_stop_signal(signum, frame):
        stop_signals.append(signum)
        woken.set()

    outcome = Outcome()
    total = settings.total_trials
    if records.counted_trials(study.get_trials(deepcopy=False), total) >= total:
        return outcome  # done before: no worker need load TensorFlow to find that out
    previous = {number: signal.signal(number, on_stop_signal) for number in (signal.SIGINT, signal.SIGTERM)}
    workers = [start_worker() for _ in range(worker_count)]
    initial = finished(counts(study.get_trials(deepcopy=False)))
    ends_by = settings.ends_by or (settings.last_start + settings.budget.longest_trial_seconds
                                   if settings.last_start else None)
    time_left = progress.TimeLeft(total, initial, ends_by=ends_by)
    try:
        with tqdm(total=total, initial=min(initial, total), unit="trial", desc=phase or study.study_name,
                  file=sys.stderr, mininterval=1, dynamic_ncols=True, bar_format=progress.BAR_FORMAT) as bar:
            while workers:
                woken.wait(2)
                woken.clear()
                if len(stop_signals) > 1:
                    for worker in workers:
                        worker.kill()
                    bar.write("Quit at once; running the same command again ends the trials left running.",
                              file=sys.stderr)
                    raise KeyboardInterrupt
                if stop_signals and not outcome.interrupted:
                    outcome.interrupted = True
                    bar.write("Stopping: each running trial is recorded as failed and its MLflow run closed "
                              "(Ctrl-C again quits at once).", file=sys.stderr)
                    for worker in workers:
                        if worker.is_alive():
                            os.kill(worker.pid, signal.SIGTERM)
                for worker in [w for w in workers if not w.is_alive()]:
                    workers.remove(worker)
                    if worker.exitcode == STORE_FAILED_EXIT:
                        if outcome.store_failure is None:  # the others stop too, recording what they can
                            outcome.store_failure = failures.get() if not failures.empty() else "a store"
                            for other in workers:
                                if other.is_alive():
                                    os.kill(other.pid, signal.SIGTERM)
                    elif worker.exitcode != 0 and not outcome.interrupted and outcome.store_failure is None:
                        outcome.crashed.append(worker.exitcode)
                        on_worker_lost()
                    if needs_more():  # it trained its share of trials, or died
                        workers.append(start_worker())
                trials = study.get_trials(deepcopy=False)
                states = counts(trials)
                values = [t.value for t in trials if t.state == TrialState.COMPLETE]
                best = f", best {max(values):.4f}" if values else ""
                apart = f", over cap {states['over cap']}" if states["over cap"] else ""
                apart += f", lost and retried {states['lost']}" if states["lost"] else ""
                done = min(finished(states), total)
                bar.set_postfix_str(f"{time_left.describe(done)}, pruned {states[TrialState.PRUNED]}, "
                                    f"failed {states[TrialState.FAIL]}{apart}{best}", refresh=False)
                bar.refresh()  # elapsed time and time left tick on while long trials run
                bar.update(done - bar.n)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return outcome


def write_best_params(study: optuna.Study) -> Path | None:
    """The best trial's params as a file train_trial.py --params can read."""
    if not study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
        return None
    path = tracking.store_folder() / "studies" / study.study_name / "best_params.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(study.best_trial.params, indent=2) + "\n")
    return path


def summary(study: optuna.Study, args, budget_name: str, best_file: Path | None, uri: str,
            parent_run_id: str, experiment_id: str, seconds: float, cores_used: float) -> str:
    trials = study.get_trials(deepcopy=False)
    states = counts(trials)
    over_cap = states.pop("over cap")
    lost = states.pop("lost")
    unfinished = "".join(f", {states[state]} {state.name.lower()}" for state in (TrialState.RUNNING, TrialState.WAITING)
                         if states[state])
    lines = [f"Study {args.study!r}: {finished(states)} trials "
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
            f"{name} {t.value:.4f}" if t.state == TrialState.COMPLETE else f"{name} {t.state.name.lower()}"
            for name, t in baselines.items()))
    if best_file is None:
        lines.append("No trial has completed yet.")
    else:
        best = study.best_trial
        label = f" ({best.user_attrs[records.BASELINE]})" if records.BASELINE in best.user_attrs else ""
        lines.append(f"Best: trial {best.number}{label}, validation accuracy {best.value:.4f}")
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
    lines.append(f"  the sweep's page (leaderboard, plots): {tracking.run_link(uri, experiment_id, parent_run_id)}")
    lines.append(f"  every run, best validation accuracy first: {tracking.ranked_link(uri, experiment_id)}")
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


def last_start(invoked: float, timeout: int | None, budget, explore_ends: float | None = None) -> float | None:
    """When the last exploring trial may start: --timeout says so directly; the budget's
    wall-clock, and the ladder's share for exploration, leave room for one whole trial after it."""
    limits = [invoked + timeout] if timeout else []
    if budget.sweep_seconds:
        limits.append(invoked + budget.sweep_seconds - budget.longest_trial_seconds)
    if explore_ends is not None:
        limits.append(explore_ends - budget.longest_trial_seconds)
    return min(limits) if limits else None


def main(argv: Sequence[str] | None = None) -> int:
    invoked = time.time()
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and summary say it
    gpu = gpu_visible()
    budget_name = args.budget or default_budget_name(gpu)
    workers = args.workers or (1 if gpu else min(2, os.cpu_count() or 1))
    # On a CPU each worker gets its share of the cores: measured here, two single-threaded
    # workers train 1.4x the images of one worker with both threads (RESULTS.md).
    threads = None if gpu or workers == 1 else max(1, (os.cpu_count() or 1) // workers)
    budget = BUDGETS[budget_name].overridden(train_size=args.train_size, max_epochs=args.max_epochs)
    sweep_study.check_sampler_available(args.sampler)
    dataset = data.load(args.data)
    data.split(dataset, data.DEFAULT_SPLIT_SEED, budget.train_size)  # refuses a bad --train-size now
    storage_url = sweep_study.storage_url(args.storage)
    storage = sweep_study.open_storage(storage_url, appends=True)
    uri = tracking.checked_uri(args.tracking_uri)
    stores_folder = stores_folder_of(storage_url, uri)
    if stores_folder is not None:
        recovery.reserve_space(stores_folder)
    tracking.ensure_experiment(uri, EXPERIMENT)
    fingerprint = records.fingerprint(dataset.sha256, budget, data.DEFAULT_SPLIT_SEED)
    tags = {"optuna_storage": sweep_study.redact(storage_url), "sweep.trials": str(args.trials),
            "sweep.sampler": args.sampler, "sweep.pruner": args.pruner, "sweep.workers": str(workers),
            "sweep.budget": budget.name, "sweep.fingerprint": json.dumps(fingerprint)}
    study = open_study(args, storage, fingerprint, lambda created: parent_run(created, args, uri, tags))
    run_id = parent_run(study, args, uri, tags)

    client = tracking.client(uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    lock_path = str(tracking.store_folder() / "studies" / args.study / "ask.lock")

    def recover() -> None:
        report_orphans(recovery.end_orphaned_trials(study, storage, client, experiment_id, run_id))
        report_retries(recovery.retry_lost_trials(study, storage, lock_path))
        # An earlier ladder's rungs, climbed again or not (--finalists 0): a trial its dead worker
        # left running is ended here; a climb queues its retry when it reaches the rung.
        for rung in existing_rungs(study, storage, budget):
            report_orphans(recovery.end_orphaned_trials(rung, storage, client, experiment_id, run_id),
                           f"Rung {records.rung_budget_name(rung.study_name)}: ")

    recover()
    rungs = ladder.upper_rungs(budget) if args.finalists else []
    ladder_seconds = args.hours * 3600 if args.hours else budget.ladder_seconds
    ladder_ends = invoked + ladder_seconds if ladder_seconds else None
    explore_ends = ladder.explore_ends(invoked, ladder_seconds) if rungs else ladder_ends
    wall_clock = f", {budget.sweep_seconds / 60:g} min a sweep" if budget.sweep_seconds else ""
    print(f"Study {args.study!r}: budget {budget.name} ({budget.train_size or 'all'} training images, "
          f"up to {budget.max_epochs} epochs, at most {budget.max_training_tflop:g} TFLOP and "
          f"{budget.trial_seconds:g} s a trial{wall_clock}); sampler {args.sampler}, pruner {args.pruner}, "
          f"{workers} worker(s){f' of {threads} thread(s)' if threads else ''}; storage {sweep_study.redact(storage_url)}", flush=True)
    if rungs:
        print(describe_ladder(budget, rungs, args.finalists, ladder_seconds), flush=True)
    settings = SweepSettings(
        study_name=args.study, storage_url=storage_url, tracking_uri=uri, experiment=EXPERIMENT,
        parent_run_id=run_id, total_trials=args.trials, sampler=args.sampler, pruner=args.pruner,
        seed=args.seed, budget=budget, data_path=args.data, split_seed=data.DEFAULT_SPLIT_SEED,
        lock_path=lock_path, last_start=last_start(invoked, args.timeout, budget, explore_ends), threads=threads)
    started = time.time()
    cpu_before = children_cpu_seconds()

    def end_on_store_failure(outcome: Outcome, recover_all: Callable[[], None]) -> None:
        if outcome.store_failure is None:
            return
        # The workers are gone; the reserve makes room to close what they left open.
        if stores_folder is not None:
            recovery.release_space(stores_folder)
        with contextlib.suppress(Exception):
            recover_all()
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        if storage_url.startswith("journal:"):
            journal.set_aside_torn_tail(Path(storage_url.removeprefix("journal:")))
        raise StoreUnwritable(f"cannot write {outcome.store_failure}")

    outcome = supervise(study, settings, workers, on_worker_lost=recover,
                        phase=f"explore ({budget.name})" if rungs else None)
    end_on_store_failure(outcome, recover)
    recover()  # workers killed at the end
    counted = records.counted_trials(study.get_trials(deepcopy=False), args.trials)
    failed = bool(outcome.crashed) and counted < args.trials  # else the retries made up for them
    explore_stopped = (not outcome.interrupted and counted < args.trials and settings.last_start is not None
                       and time.time() > settings.last_start)
    timed_out = args.timeout is not None and time.time() > invoked + args.timeout
    climbed: list[optuna.Study] = []
    crashed = list(outcome.crashed)
    ensemble_failure = None
    if rungs and not outcome.interrupted and not failed and not timed_out and (counted >= args.trials or explore_stopped):
        outcome, climbed = climb(study, settings, workers, storage, client, experiment_id, args.finalists, ladder_ends)
        end_on_store_failure(outcome, lambda: [recovery.end_orphaned_trials(rung, storage, client, experiment_id, run_id)
                                               for rung in climbed])
        crashed += outcome.crashed
        if not outcome.interrupted and climbed and ladder.needs_ensemble(study, climbed[-1], ENSEMBLE_MEMBERS):
            ensemble_failure = ensemble(EnsembleSettings(
                exploring_study=study.study_name, rung_study=climbed[-1].study_name, storage_url=storage_url,
                tracking_uri=uri, experiment=EXPERIMENT, parent_run_id=run_id, budget=rungs[-1],
                data_path=args.data, split_seed=data.DEFAULT_SPLIT_SEED, model_name=tracking.REGISTERED_MODEL),
                client, experiment_id)
    cores_used = (children_cpu_seconds() - cpu_before) / max(time.time() - started, 1e-9)

    complete = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    client.log_metric(run_id, "worker_cpu_cores", cores_used)
    if complete:
        client.log_metric(run_id, "best_validation_accuracy", study.best_value)
        client.set_tag(run_id, "best_trial", str(study.best_trial.number))
    result = study.user_attrs.get(records.LADDER_RESULT)
    if result and climbed:
        for key, value in {"top_rung_validation_accuracy": result["champion"]["validation_accuracy"],
                           "ensemble_validation_accuracy": result["ensemble"]["validation_accuracy"],
                           "top_rung_test_accuracy": result["champion"]["test_accuracy"],
                           "ensemble_test_accuracy": result["ensemble"]["test_accuracy"]}.items():
            client.log_metric(run_id, key, value)
        client.set_tag(run_id, "top_rung_winner", result["champion"]["label"])
    running = any(s.get_trials(deepcopy=False, states=[TrialState.RUNNING]) for s in [study, *climbed])
    if outcome.interrupted:
        client.set_terminated(run_id, "KILLED")
    elif failed or ensemble_failure:
        client.set_terminated(run_id, "FAILED")
    elif not running:
        client.set_terminated(run_id, "FINISHED")  # else another invocation's workers are still at it
    front_page.write(study, client, run_id, uri, experiment_id, climbed)
    print(summary(study, args, budget.name, write_best_params(study), uri, run_id, experiment_id,
                  time.time() - started, cores_used))
    if climbed:
        print(ladder_summary(study, climbed))
    if explore_stopped:
        limit = (f"--timeout {args.timeout}" if timed_out
                 else f"exploration's share of the sweep's {ladder_seconds / 3600:g}-hour wall-clock"
                 if rungs and explore_ends is not None and settings.last_start == explore_ends - budget.longest_trial_seconds
                 else f"the {budget.name} budget's {budget.sweep_seconds / 60:g}-minute wall-clock" if budget.sweep_seconds
                 else f"the sweep's {ladder_seconds / 3600:g}-hour wall-clock")
        going_on = " The ladder went on with the trials explored." if climbed else " Run the same command again to go on."
        print(f"Stopped starting exploring trials at {limit}: the time left could not hold another whole trial; "
              f"{counted} of {args.trials} trials are done.{going_on} "
              f"This invocation took {(time.time() - invoked) / 60:.1f} min.")
    if outcome.interrupted:
        print("interrupted: run the same command again to go on to the requested total", file=sys.stderr)
        return 130
    if crashed:
        print(f"{'error: ' if failed else ''}{len(crashed)} worker(s) exited abnormally (exit codes "
              f"{crashed}); the trials they left running were recorded as failed and retried once",
              file=sys.stderr)
    if ensemble_failure:
        print(f"error: {ensemble_failure}", file=sys.stderr)
    return 1 if failed or ensemble_failure else 0


def describe_ladder(budget, rungs, finalists: int, seconds: float | None) -> str:
    counts = ladder.promotion_counts(finalists, len(rungs))
    steps = [f"{budget.name} (explore)"] + [
        f"{rung.name} ({rung.train_size or 'all'} images, {rung.max_epochs} epochs: best {count}"
        f"{' and the 5 baselines' if index == len(rungs) - 1 else ''})"
        for index, (rung, count) in enumerate(zip(rungs, counts))]
    limit = f", all within {seconds / 3600:g} h" if seconds else ""
    return f"Ladder: {' -> '.join(steps)}, then an ensemble of the top rung's best{limit}"


def climb(study: optuna.Study, settings: SweepSettings, workers: int, storage, client, experiment_id: str,
          finalists: int, ladder_ends: float | None) -> tuple[Outcome, list[optuna.Study]]:
    """Carry the explored trials up the ladder, a rung at a time: promote, train, go on.
    Returns how the last rung's workers ended and the rung studies climbed so far."""
    rungs = ladder.upper_rungs(settings.budget)
    counts = ladder.promotion_counts(finalists, len(rungs))
    lower, climbed, outcome = study, [], Outcome()
    for index, (budget, count) in enumerate(zip(rungs, counts)):
        rung = open_rung(study, storage, budget)
        climbed.append(rung)
        promoted = ladder.promote(lower, study, rung, budget, count, top=index == len(rungs) - 1)
        now = time.time()
        ends = ladder.rung_ends(now, ladder_ends, len(rungs) - index)
        rung_settings = dataclasses.replace(
            settings, study_name=rung.study_name, budget=budget, pruner="none",
            total_trials=ladder.requested_trials(rung), last_start=ladder.rung_last_start(now, ends, budget),
            ends_by=ends, lock_path=str(Path(settings.lock_path).with_name(f"ask-{budget.name}.lock")))

        def recover_rung(rung=rung, lock_path=rung_settings.lock_path) -> None:
            where = f"Rung {records.rung_budget_name(rung.study_name)}: "
            report_orphans(recovery.end_orphaned_trials(rung, storage, client, experiment_id, settings.parent_run_id), where)
            report_retries(recovery.retry_lost_trials(rung, storage, lock_path), where)

        recover_rung()
        deadline = f"; ends by {time.strftime('%H:%M', time.localtime(ends))}" if ends else ""
        print(f"Rung {index + 2} of {len(rungs) + 1}, {budget.name} ({budget.train_size or 'all'} training images, "
              f"up to {budget.max_epochs} epochs): "
              f"{'promoted ' + ', '.join(promoted) if promoted else 'nothing new promoted'}{deadline}", flush=True)
        outcome = supervise(rung, rung_settings, workers, on_worker_lost=recover_rung,
                            phase=f"rung {index + 2}/{len(rungs) + 1} ({budget.name})")
        if outcome.interrupted or outcome.store_failure is not None:
            return outcome, climbed
        recover_rung()
        lower = rung
    return outcome, climbed


def existing_rungs(exploring: optuna.Study, storage, budget) -> list[optuna.Study]:
    """The upper rungs of ``exploring``'s ladder that an invocation has opened."""
    names = set(optuna.study.get_all_study_names(storage))
    return [optuna.load_study(study_name=name, storage=storage) for rung in ladder.upper_rungs(budget)
            if (name := records.rung_study_name(exploring.study_name, rung.name)) in names]


def open_rung(exploring: optuna.Study, storage, budget) -> optuna.Study:
    """The study of one upper rung of ``exploring``'s ladder, created on first use."""
    name = records.rung_study_name(exploring.study_name, budget.name)
    rung = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    if records.EXPLORING_STUDY not in rung.user_attrs:
        rung.set_user_attr(records.EXPLORING_STUDY, exploring.study_name)
        rung.set_user_attr(records.FINGERPRINT, records.rung_fingerprint(records.recorded_fingerprint(exploring), budget))
    return rung


def _ensemble_process(settings: EnsembleSettings) -> None:
    from sweeps import ensemble as top_rung_ensemble  # TensorFlow, in this process only

    top_rung_ensemble.main(settings)


def ensemble(settings: EnsembleSettings, client, experiment_id: str) -> str | None:
    """Ensemble the top rung in a process of its own (the parent never loads TensorFlow).
    Returns why it failed, or None. An ensemble run left RUNNING (its process killed, here or
    by an earlier invocation) is closed as KILLED: a rerun builds a new one."""
    print("Ensembling the top rung: k chosen on validation, then one test pass each for the ensemble "
          "and the best single model", flush=True)
    close_stale_ensembles(settings.rung_study, client, experiment_id)
    process = multiprocessing.get_context("spawn").Process(target=_ensemble_process, args=(settings,))
    process.start()
    try:
        process.join()
    except KeyboardInterrupt:  # Ctrl-C reached the ensemble's process too
        process.terminate()
        process.join()
        raise
    finally:
        close_stale_ensembles(settings.rung_study, client, experiment_id)
    if process.exitcode != 0:
        return (f"the ensemble step failed (exit code {process.exitcode}); run the same command again "
                "to retry it: every trained rung is kept")
    return None


def close_stale_ensembles(rung_study: str, client, experiment_id: str) -> None:
    stale = client.search_runs([experiment_id], max_results=100, filter_string=(
        f"tags.{records.FIDELITY} = 'ensemble' and tags.{records.STUDY_TAG} = '{rung_study}' "
        "and attributes.status = 'RUNNING'"))
    for run in stale:
        client.set_tag(run.info.run_id, records.REASON, "its process ended before the ensemble was registered")
        client.set_terminated(run.info.run_id, "KILLED")


def ladder_summary(study: optuna.Study, climbed: list[optuna.Study]) -> str:
    """Each rung's results, then the headline: the top rung's winner and the ensemble."""
    lines = []
    for rung in climbed:
        trials = sorted((t for t in rung.get_trials(deepcopy=False) if t.value is not None),
                        key=lambda t: t.value, reverse=True)
        budget = records.rung_budget_name(rung.study_name)
        waiting = sum(t.state == TrialState.WAITING for t in rung.get_trials(deepcopy=False))
        untrained = f"; {waiting} not started (the rung's time ran out)" if waiting else ""
        lines.append(f"Rung {budget}: " + (", ".join(f"{records.label(t)} {t.value:.4f}" for t in trials) or "nothing finished")
                     + untrained)
    result = study.user_attrs.get(records.LADDER_RESULT)
    if result:
        champion, averaged = result["champion"], result["ensemble"]
        lines.append(f"Top rung's winner: {champion['label']}, validation {champion['validation_accuracy']:.4f}, "
                     f"test {champion['test_accuracy']:.4f} (read once): {champion['model']}")
        if "runner_up" in champion:
            lines.append("  " + ladder.describe_lead(champion))
        lines.append(f"Ensemble of {len(averaged['members'])} ({', '.join(averaged['members'])}; k chosen on validation): "
                     f"validation {averaged['validation_accuracy']:.4f}, test {averaged['test_accuracy']:.4f} "
                     f"(read once): {averaged['model']}")
        lines.append(f"Label your digits with it: python -m digits.predict --model {averaged['model']} YOUR.csv")
    return "\n".join(lines)


def report_retries(numbers: list[int], where: str = "") -> None:
    if numbers:
        print(f"{where}Queued a retry of trial(s) {', '.join(map(str, numbers))} with the same params: a trial lost "
              "with its worker does not count toward --trials", flush=True)


def report_orphans(numbers: list[int], where: str = "") -> None:
    if numbers:
        print(f"{where}Ended trial(s) {', '.join(map(str, numbers))}: left running by a worker that is gone "
              "(now FAIL in Optuna, KILLED in MLflow, with the reason)", flush=True)


if __name__ == "__main__":
    cli.run(main)
