"""Where runs are recorded: the MLflow store (default ``sqlite:///mlruns/mlflow.db`` with
artifacts in ``mlruns/artifacts``), and the provenance tags every run carries."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from urllib.parse import quote, urlparse

from harness.errors import UserError

# MLflow writes "View run … / View experiment …" to stdout whenever a run on a tracking server
# ends; the commands print their own links once, so a sweep's terminal is not flooded with
# two lines per trial. (Its documented switch; a user who wants the lines sets it to false.)
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

DEFAULT_STORE = Path("mlruns")  # in the current directory
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The Model Registry entry the sweep registers its winner under, and what predict and serve load.
REGISTERED_MODEL = "mnist-digits"
CHAMPION_ALIAS = "champion"  # the best single model
ENSEMBLE_ALIAS = "ensemble"  # a sweep's top-rung models averaged (sweeps/ensemble.py)
SMALL_ALIAS = "small"  # the top rung's most accurate model within a size budget
# The address the README's `mlflow ui` command serves a local store on.
LOCAL_UI = "http://127.0.0.1:5000"
VERSIONED_PACKAGES = ("tensorflow", "keras", "optuna", "mlflow", "numpy")
# Read once, at import: mlflow.set_tracking_uri() writes this variable too, and a later
# command in the same process must not inherit the previous one's store.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def store_folder() -> Path:
    # Absolute: MLflow caches stores by URI, so a relative one would keep pointing at the
    # folder that was current when it was first used.
    return DEFAULT_STORE.resolve()


def tracking_uri(requested: str | None) -> str:
    return requested or USER_TRACKING_URI or f"sqlite:///{store_folder()}/mlflow.db"


def use_experiment(name: str, requested_uri: str | None) -> str:
    """Point this process's MLflow logging at the store and experiment; return the tracking
    URI in use.

    A trial's run is logged through MLflow's fluent API (``mlflow.start_run``,
    ``mlflow.keras.log_model``), which has no per-call store, so the commands that train
    set it process-wide here (``use_store``); readers build a client with ``client(uri)``.
    """
    import mlflow

    uri = checked_uri(requested_uri)
    ensure_experiment(uri, name)
    use_store(uri)
    mlflow.set_experiment(name)
    return uri


def use_store(uri: str) -> None:
    """Point MLflow's fluent API (logging, ``mlflow.keras.load_model``) at this store and
    its Model Registry. (Passing the URIs per call instead does not hold: resolving a
    ``models:/`` URI that way still opens MLflow's default ./mlflow.db, measured with
    MLflow 3.17.)"""
    import mlflow

    quiet_store_logs()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # models are registered in the same store as their runs


def ui_base(tracking_uri: str) -> str:
    """Where the MLflow UI of this store is: the server itself, or the README's `mlflow ui`."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def ranked_link(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs, best validation accuracy first (every trial, and the baselines)."""
    key = quote("metrics.`validation_accuracy`", safe=".")
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?orderByKey={key}&orderByAsc=false"


def quiet_store_logs() -> None:
    """MLflow's SQL store announces a new database's schema at INFO, and logs each database
    error with its traceback before raising it (the commands report the raised error in one
    line); its system-metrics monitor announces itself for every run: none of it belongs on
    the console."""
    import logging

    # Nor do its progress bars for each artifact download (a user's own setting wins).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # The system-metrics monitor announces its start and stop at INFO for every run.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)


def database_file(uri: str) -> str:
    """How a store's database is named in messages: its file for SQLite."""
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else "the MLflow database"


def client(uri: str):
    """An MLflow client of this store, for its runs and its Model Registry."""
    import mlflow

    quiet_store_logs()

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def checked_uri(requested_uri: str | None) -> str:
    """The tracking URI to use, refused in one line if it cannot be a working store.

    MLflow 3 deprecates the plain file store, hence SQLite by default.
    """
    uri = tracking_uri(requested_uri)
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise UserError(f"--tracking-uri {uri}: a SQLite URI has three slashes before a path "
                            f"(sqlite:///mlruns/mlflow.db, or four for an absolute one)")
        database = Path(uri.removeprefix("sqlite:///"))
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the MLflow store folder {database.parent}: "
                            f"{error.strerror}") from None
        if not os.access(database.parent, os.W_OK):
            raise UserError(f"the MLflow store folder {database.parent} is not writable")
    elif parsed.scheme in ("http", "https"):
        check_server(uri)
    elif parsed.scheme not in ("postgresql", "mysql", "file", "databricks"):
        raise UserError(f"--tracking-uri {uri!r}: unsupported scheme (use sqlite:///PATH or http://HOST:PORT)")
    return uri


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id in this store, creating the experiment if need be. A SQLite
    store keeps its artifacts in an ``artifacts`` folder beside the database rather than in
    MLflow's cwd-relative default."""
    from mlflow.exceptions import MlflowException

    store = client(uri)
    artifact_location = None
    if uri.startswith("sqlite:///"):
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    try:
        experiment = store.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return store.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            if (experiment := store.get_experiment_by_name(name)) is None:  # else another machine made it first
                raise
            return experiment.experiment_id
    except MlflowException as error:
        raise UserError(f"MLflow store {uri}: {str(error).splitlines()[0]}") from None


def check_server(uri: str, timeout: float = 5) -> None:
    """Fail in seconds on a tracking server that does not answer; MLflow's own client would
    retry for minutes first."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answers; MLflow reports what is wrong with the store itself
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(f"--tracking-uri {uri}: no MLflow tracking server answers there ({reason})") from None


def provenance_tags() -> dict[str, str]:
    """Package versions and the code's git commit ('-dirty' when it has uncommitted changes)."""
    from harness import records  # here: records loads Optuna, which a command that only predicts never needs

    tags = {f"{records.VERSION_TAG_PREFIX}{name}": package_version(name) for name in VERSIONED_PACKAGES}
    tags[f"{records.VERSION_TAG_PREFIX}python"] = platform.python_version()
    tags[records.KERAS_BACKEND_TAG] = os.environ.get("KERAS_BACKEND", "tensorflow")
    tags[records.GIT_COMMIT_TAG] = git_commit()
    return tags


def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + ("-dirty" if dirty else "")
