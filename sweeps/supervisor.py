"""Runs a study's worker processes until it holds the trials asked for, under a live progress
bar, replacing workers that trained their share or died, and stopping them on Ctrl-C."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from harness import records
from sweeps import plan, progress
from sweeps.settings import STORE_FAILED_EXIT, SweepSettings


# Without a terminal, a progress line at least this often while trials run.
PLAIN_LINE_SECONDS = 300


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
    # A rung's: when a worker first found nothing queued that fits the time left, and how many
    # trials were queued then.
    idle_since: float | None = None
    unstarted: int = 0
    topped_up: list[str] = field(default_factory=list)  # labels top_up queued, in order


def _worker_process(settings: SweepSettings, worker_index: int, failures) -> None:
    """A worker process's entry point. Its import of the trial code (and so of TensorFlow)
    happens here, in the worker, never in the parent."""
    from sweeps import objective

    objective.worker_main(settings, worker_index, failures)


def supervise(study: optuna.Study, settings: SweepSettings, worker_count: int,
              on_worker_lost: Callable[[], None] = lambda: None, title: str | None = None,
              command_ends: Callable[[float], float] | None = None,
              top_up: Callable[[float], str | None] | None = None,
              rung_forecast: Callable[[list[optuna.trial.FrozenTrial], float], float] | None = None) -> Outcome:
    """Run the workers under a live progress bar (done, time left, pruned, failed, best so far),
    starting a fresh one whenever a worker has trained its share of trials and the study
    still needs more. A worker that dies (killed, crashed) is replaced too, after
    ``on_worker_lost`` has ended the trial it left running and queued its retry. When the
    study holds what was asked while time is left, ``top_up(now)`` may queue one more trial
    (returning its label) for the worker that would otherwise idle. ``rung_forecast(trials,
    now)``: a rung's seconds left, from its trials, for the bar's time left.

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
        # A new number for every process, so a replacement does not replay its sampler's seed;
        # and the total as topped up so far, which the worker trains up to.
        worker_settings = dataclasses.replace(settings, total_trials=total)
        worker = context.Process(target=_worker_process, args=(worker_settings, started, failures))
        started += 1
        worker.start()
        return worker

    def needs_more() -> bool:
        nonlocal total
        if outcome.interrupted or outcome.store_failure is not None:
            return False
        if settings.last_start is not None and time.time() >= settings.last_start:
            return False
        trials = study.get_trials(deepcopy=False)
        if records.counted_trials(trials, total) >= total:
            # Not before this invocation's workers start: a rung finished earlier stays as it is.
            added = top_up(time.time()) if top_up is not None and started else None
            if added is None:
                return False
            total += 1
            outcome.topped_up.append(added)
            return True
        if settings.fit_forecasts and not plan.startable(trials, settings.budget, settings.deadline, time.time(),
                                                         settings.any_start_until):
            if outcome.idle_since is None:  # what is queued needs more time than is left
                outcome.idle_since = time.time()
                outcome.unstarted = sum(t.state == TrialState.WAITING for t in trials)
            return False
        return True

    stop_signals: list[int] = []
    woken = threading.Event()

    def on_stop_signal(signum, frame):
        stop_signals.append(signum)
        woken.set()

    outcome = Outcome()
    total = settings.total_trials
    if not needs_more():
        return outcome  # done before, or out of time: no worker need load TensorFlow to find that out
    previous = {number: signal.signal(number, on_stop_signal) for number in (signal.SIGINT, signal.SIGTERM)}
    workers = [start_worker() for _ in range(worker_count)]
    initial = finished(counts(study.get_trials(deepcopy=False)))
    latest: list[optuna.trial.FrozenTrial] = []  # the trials as the loop last read them

    time_left = progress.TimeLeft(total, initial, ends_by=settings.deadline, command_ends=command_ends,
                                  forecast=(lambda now: rung_forecast(latest, now)) if rung_forecast else None)
    # A terminal gets a live bar; a log file (nohup, a scheduler) a plain line per finished
    # trial, and one every few minutes while long trials run, not hours of bar frames.
    interactive = sys.stderr.isatty()
    last_line, last_done = 0.0, None
    try:
        with tqdm(total=total, initial=min(initial, total), unit="trial", desc=title or study.study_name,
                  file=sys.stderr, mininterval=1, dynamic_ncols=True, bar_format=progress.BAR_FORMAT,
                  disable=not interactive) as bar:
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
                trials = latest[:] = study.get_trials(deepcopy=False)
                states = counts(trials)
                values = [records.accuracy(t) for t in trials if t.state == TrialState.COMPLETE]
                best = f", best {max(values):.4f}" if values else ""
                apart = f", over cap {states['over cap']}" if states["over cap"] else ""
                apart += f", lost and retried {states['lost']}" if states["lost"] else ""
                done = min(finished(states), total)
                time_left.total = bar.total = total  # one more for each trial topped up
                postfix = (f"{time_left.describe(done)}, pruned {states[TrialState.PRUNED]}, "
                           f"failed {states[TrialState.FAIL]}{apart}{best}")
                if interactive:
                    bar.set_postfix_str(postfix, refresh=False)
                    bar.refresh()  # elapsed time and time left tick on while long trials run
                    bar.update(done - bar.n)
                elif done != last_done or time.time() - last_line >= PLAIN_LINE_SECONDS:
                    print(f"{time.strftime('%H:%M:%S')} {title or study.study_name}: {done}/{total} trials, {postfix}",
                          file=sys.stderr, flush=True)
                    last_line, last_done = time.time(), done
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return outcome


def report_retries(numbers: list[int], where: str = "") -> None:
    if numbers:
        print(f"{where}Queued a retry of trial(s) {', '.join(map(str, numbers))} with the same params: a trial lost "
              "with its worker does not count toward --trials", flush=True)


def report_orphans(numbers: list[int], where: str = "") -> None:
    if numbers:
        print(f"{where}Ended trial(s) {', '.join(map(str, numbers))}: left running by a worker that is gone "
              "(now FAIL in Optuna, KILLED in MLflow, with the reason)", flush=True)
