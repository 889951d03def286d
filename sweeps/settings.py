"""What the sweep's parent tells each worker process: the study, the stores, the budget and
the limits. Plain data, so the parent can build it without loading TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass

from harness.budgets import Budget

# A worker process trains at most this many trials, then exits and the parent starts a
# fresh one if the study needs more: TensorFlow keeps part of every trained model even
# after clear_session(), and glibc the pages a large trial freed; a fresh process is the
# one portable way to give them back, for seconds of start-up (RESULTS.md, "Structure").
TRIALS_PER_PROCESS = 8
# A worker that could not write a store (full disk, file-size limit, I/O error) stops with this
# exit code (sysexits' EX_IOERR), after putting the reason on the queue the parent gave it.
STORE_FAILED_EXIT = 74
# The ensemble weighs the top rung's best ENSEMBLE_CANDIDATES models (by validation accuracy:
# enough for the finalists, the baselines, the top-ups and the spare seeds). Its greedy rule
# runs ENSEMBLE_ROUNDS rounds of forward selection and keeps at most ENSEMBLE_MEMBERS distinct
# models; the bagged rule and the plain average may weigh every candidate, and are chosen only
# where that held up better on held-out validation (sweeps/selection.py), since each member
# costs every prediction a pass of one more network.
ENSEMBLE_CANDIDATES = 16
ENSEMBLE_ROUNDS = 20
ENSEMBLE_MEMBERS = 8


@dataclass(frozen=True)
class SweepSettings:
    study_name: str
    storage_url: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    total_trials: int
    sampler: str
    pruner: str
    seed: int
    budget: Budget
    data_path: str | None
    split_seed: int
    lock_path: str
    # The phase's (sweeps/plan.py): time.time() after which no trial starts, and by which the
    # phase must end, a trial's time share cut to fit. None: no limit.
    last_start: float | None
    deadline: float | None = None
    # A rung's workers start only queued trials whose forecast fits the time left before the
    # deadline (sweeps.plan.fits), in queue order; exploration's ask for the next sample.
    fit_forecasts: bool = False
    any_start_until: float | None = None  # until then, a rung's queued trials start in order, forecast or not
    # This invocation's nonce (random, made by the parent): with --seed it seeds the workers'
    # samplers, so invocations on several machines draw different samples.
    invocation: str = ""
    retrain: bool = False  # train every trial, even where a finished run of the store trained the same
    trials_per_process: int = TRIALS_PER_PROCESS
    threads: int | None = None  # CPU threads per worker; None: the backend's default
    objective: tuple[str, ...] = ("accuracy",)  # the study's objectives (sweeps.study.OBJECTIVES), accuracy first


@dataclass(frozen=True)
class EnsembleSettings:
    """What the parent tells the process that ensembles the top rung (sweeps/ensemble.py)."""
    exploring_study: str
    rung_study: str  # the top rung's study
    storage_url: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    budget: Budget  # the top rung's
    data_path: str | None
    split_seed: int
    model_name: str
    threads: int | None = None
    small_params: int = 100_000  # @small: the most accurate top-rung model with at most this many parameters
