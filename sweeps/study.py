"""The Optuna side of a sweep: storage, locks, sampler and pruner."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import sys
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import TrialState

from harness import tracking
from harness.budgets import Budget
from harness.errors import UserError
from sweeps import journal

JOURNAL_NAME = "optuna.journal"
DEFAULT_STUDY = "mnist-sweep"
SAMPLERS = ("tpe", "random", "cmaes", "gp")
PRUNERS = ("hyperband", "median", "none")
# What a study may optimise: each objective's trial metric (train_trial.log_trial logs them)
# and its direction. Validation accuracy always comes first: the ladder, the reports and the
# registry rank by it; a second objective makes the study multi-objective, its answer a front.
OBJECTIVES = {"accuracy": ("validation_accuracy", "maximize"), "latency": ("predict_ms_one_image", "minimize")}
OBJECTIVE_CHOICES = ("accuracy", "accuracy,latency")
# A worker on an RDB storage records a heartbeat this often while its trial runs; a trial
# silent for GRACE_SECONDS is failed (its worker died, or its machine was lost).
HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 120
# An unreachable database host fails within this time instead of hanging.
CONNECT_TIMEOUT_SECONDS = 5


def storage_url(requested: str | None) -> str:
    # Beside the MLflow store. A journal file, not SQLite: several local worker
    # processes append to it safely, where SQLite locks under parallel writers.
    return requested or f"journal:{tracking.store_folder() / JOURNAL_NAME}"


def open_storage(url: str, *, appends: bool = False) -> optuna.storages.BaseStorage:
    """The storage at ``url``. ``appends``: this command is about to write to it, so a journal's
    torn last record is set aside first (sweeps/journal.py)."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the study folder {path.parent}: {error.strerror}") from None
        if appends and (mended := journal.set_aside_torn_tail(path)):
            print(mended, file=sys.stderr)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    engine = {"pool_pre_ping": True}
    postgresql = url.startswith("postgresql")
    if postgresql:
        engine["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    try:
        # Several machines starting on an empty database would race to create Optuna's tables.
        with _postgresql_lock(url, engine, "schema") if postgresql else _no_lock(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats, in Optuna 4
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                              grace_period=GRACE_SECONDS)
    except Exception as error:  # SQLAlchemy raises many kinds for a bad URL or an unreachable host
        raise UserError(f"--storage {redact(url)}: {_first_line(error, url)}") from None


@contextmanager
def _postgresql_lock(url: str, engine_kwargs: dict, name: str):
    """A PostgreSQL advisory lock, held on a connection of its own while the block runs."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with _advisory_lock(engine, name):
            yield
    finally:
        engine.dispose()


@contextmanager
def _advisory_lock(engine, name: str):
    from sqlalchemy import text

    key = zlib.crc32(f"mnist-sweeps:{name}".encode())
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


@contextmanager
def _no_lock():
    yield


def _first_line(error: Exception, url: str) -> str:
    """The error's first line, with the URL's password out of it wherever the driver echoed it."""
    line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    from urllib.parse import urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return line.replace(password, "***") if password else line


@contextmanager
def ask_lock(storage: optuna.storages.BaseStorage, study_name: str, lock_path: str):
    """Held while a worker counts the study's trials and asks for the next one, so workers
    never overshoot --trials: a PostgreSQL advisory lock, which workers on several machines
    share, or else a file lock, which local workers share."""
    if isinstance(storage, optuna.storages.RDBStorage) and storage.engine.dialect.name == "postgresql":
        with _advisory_lock(storage.engine, f"ask:{study_name}"):
            yield
        return
    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_existing(name: str, url: str) -> optuna.Study:
    """A study that must already exist, for the commands that read a sweep or retrain from it."""
    if url.startswith("journal:") and not Path(url.removeprefix("journal:")).is_file():
        raise UserError(f"no study named {name!r}: there is no study storage at {url.removeprefix('journal:')} "
                        "(run python -m sweeps.run first, or pass --storage)")
    if url.startswith("journal:"):
        journal.refuse_if_unreadable(Path(url.removeprefix("journal:")))
    storage = open_storage(url)
    try:
        names = optuna.study.get_all_study_names(storage)
    except Exception as error:  # a corrupt journal, or a database without Optuna's tables
        raise UserError(f"cannot read studies from {redact(url)}: {_first_line(error, url)}") from None
    if name not in names:
        known = f"studies there: {', '.join(sorted(names))}" if names else "it holds no study"
        raise UserError(f"no study named {name!r} in {redact(url)}; {known}")
    return optuna.load_study(study_name=name, storage=storage)




def redact(url: str) -> str:
    """The URL with any password replaced, for logs, tags and messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # Only what differs from Optuna's defaults, or what a default may change to: the
        # search space is conditional (cnn and mlp keys), so one joint model per group;
        # parallel workers must not sample next to each other's running trials. group is
        # still experimental in Optuna 5 (and multivariate and constant_liar in 4): their
        # ExperimentalWarning is the only one silenced.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(n_startup_trials=10, multivariate=True, group=True,
                                              constant_liar=True, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES handles the numeric keys; categorical and conditional ones fall back to random.
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=5)
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)


def sampler_seed(seed: int, invocation: str, worker_index: int, trials_so_far: int) -> int:
    """A worker's sampler seed: --seed, this invocation's nonce, the worker's number and the
    study's size, so no two workers here or on other machines draw the same samples, and one
    seed still reproduces a worker's draws (it is recorded on each trial)."""
    digest = hashlib.sha256(f"{seed}:{invocation}:{worker_index}:{trials_so_far}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def check_sampler_available(name: str) -> None:
    needs = {"cmaes": "cmaes", "gp": "torch"}
    module = needs.get(name)
    if module and importlib.util.find_spec(module) is None:
        raise UserError(f"--sampler {name} needs the {module} package: pip install {module}")


def directions(objective: tuple[str, ...]) -> list[str]:
    return [OBJECTIVES[name][1] for name in objective]


def objective_values(objective: tuple[str, ...], metrics: dict[str, float]) -> list[float]:
    """A trained (or reused) trial's values for the study, from its logged metrics."""
    return [metrics[OBJECTIVES[name][0]] for name in objective]


def make_pruner(name: str, budget: Budget) -> optuna.pruners.BasePruner:
    if name == "hyperband":  # on per-epoch validation accuracy; steps are epochs from 1
        # Never at the last epoch (training ends there anyway), e.g. with --max-epochs 2 at quick.
        first_rung = max(1, min(budget.first_rung, budget.max_epochs - 1))
        return optuna.pruners.HyperbandPruner(min_resource=first_rung, max_resource=budget.max_epochs,
                                              reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def trial_id(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of a study's trial, for the storage calls that take one."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


# A new study starts from this many of the best recipes its storage's earlier sweeps found.
WARM_START_RECIPES = 5


def earlier_best(storage: optuna.storages.BaseStorage, study_name: str, fingerprint: dict,
                 count: int = WARM_START_RECIPES) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    """The best sampled recipes of the storage's other sweeps of the same search space, data
    and split, each recipe once, as their exploring trials with the study each is from: first
    those the sweeps' top rungs trained, lowest calibrated validation log-loss there first (as
    first trained, not their spare seeds), then the explored ones, best validation accuracy
    first. A new sweep enqueues them, so it explores new ground instead of re-finding them, its
    sampler learns from them at once, and its ladder can carry up again, and reuse, what won at
    the top budget: a recipe that pays only there (an augmented one, for one) ranks low at the
    exploring budget, where the pruner may even have stopped it."""
    from harness import records
    from sweeps import ladder

    same = (records.SEARCH_SPACE_VERSION_KEY, records.DATA_SHA256_KEY, records.SPLIT_SEED_KEY)
    at_the_top, explored = [], []
    summaries = optuna.study.get_all_study_summaries(storage, include_best_trial=False)
    names = {summary.study_name for summary in summaries}
    for summary in summaries:
        recorded = summary.user_attrs.get(records.FINGERPRINT, {})
        if (summary.study_name == study_name or "@" in summary.study_name
                or any(recorded.get(key) != fingerprint.get(key) for key in same)):
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        explored += [(summary.study_name, trial) for trial in trials if trial.state == TrialState.COMPLETE
                     and records.BASELINE not in trial.user_attrs and records.accuracy(trial) is not None]
        result = records.ladder_result(study)
        if result is None or result.top_rung not in names:  # no ladder yet, or its top rung deleted
            continue
        top_rung = optuna.load_study(study_name=result.top_rung, storage=storage)
        for trained in ladder.by_log_loss(top_rung.get_trials(deepcopy=False)):
            if records.CALIBRATED_LOG_LOSS in trained.user_attrs and records.BASELINE not in trained.user_attrs:
                at_the_top.append((trained.user_attrs[records.CALIBRATED_LOG_LOSS], summary.study_name,
                                   trials[ladder.source_number(trained)]))
    ordered = [(name, trial) for _, name, trial in sorted(at_the_top, key=lambda found: found[0])]
    ordered += sorted(explored, key=lambda pair: records.accuracy(pair[1]), reverse=True)
    best, seen = [], set()
    for name, trial in ordered:
        key = json.dumps(trial.params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            best.append((name, trial))
    return best[:count]


def other_top_rungs(storage: optuna.storages.BaseStorage, top_rung: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    """The trials of the storage's other ladder rungs set up as ``top_rung`` is (search space,
    data, split and budget), by study name: the top rungs of its other sweeps, whose models the
    ensemble step also weighs."""
    from harness import records

    recorded = records.recorded_fingerprint(optuna.load_study(study_name=top_rung, storage=storage))
    if not recorded:
        return {}
    names = sorted(summary.study_name for summary in optuna.study.get_all_study_summaries(storage, include_best_trial=False)
                   if "@" in summary.study_name and summary.study_name != top_rung
                   and records.same_setup(summary.user_attrs.get(records.FINGERPRINT, {}), recorded))
    return {name: optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False) for name in names}
