"""The tools users already know read the sweep's default stores: the ``optuna`` command line
and ``optuna-dashboard`` on the journal file, ``mlflow ui`` on the SQLite store (the parent
run expanding to its trials, in headless Chromium)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest

from sweeps import run as sweep_run, study as sweep_study

pytestmark = pytest.mark.slow  # servers and a browser on the smoke sweep's stores
STUDY = sweep_study.DEFAULT_STUDY


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def journal(sweep) -> Path:
    return sweep / "mlruns" / sweep_study.JOURNAL_NAME


def user_environment():
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


def console_script(name: str) -> str:
    """The command as a user's shell finds it, preferring the one installed beside this Python."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert found, f"{name} is not installed (pip install -e \".[test]\")"
    return found


def wait_for(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"nothing answered at {url}")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_the_optuna_command_line_lists_the_trials_and_the_best_one(sweep):
    study = optuna.load_study(study_name=STUDY, storage=sweep_study.open_storage(f"journal:{journal(sweep)}"))
    common = ["--storage", str(journal(sweep)), "--study-name", STUDY, "--format", "json"]
    listed = subprocess.run([console_script("optuna"), "trials", *common], capture_output=True, text=True,
                            timeout=120, cwd=sweep)
    assert listed.returncode == 0, listed.stderr
    trials = json.loads(listed.stdout)
    assert sorted(t["number"] for t in trials) == [t.number for t in study.trials]
    best = subprocess.run([console_script("optuna"), "best-trial", *common], capture_output=True, text=True,
                          timeout=120, cwd=sweep)
    assert best.returncode == 0, best.stderr
    answer = json.loads(best.stdout)
    assert (answer["number"], answer["value"]) == (study.best_trial.number, study.best_value)


def test_optuna_dashboard_serves_the_study_from_the_journal(sweep):
    study = optuna.load_study(study_name=STUDY, storage=sweep_study.open_storage(f"journal:{journal(sweep)}"))
    port = free_port()
    # The README's command, on a port of the test's own.
    server = subprocess.Popen([console_script("optuna-dashboard"), str(journal(sweep)), "--host", "127.0.0.1",
                               "--port", str(port)], cwd=sweep, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=user_environment())
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/api/studies", server)
        summaries = get_json(f"{base}/api/studies")["study_summaries"]
        [summary] = [s for s in summaries if s["study_name"] == STUDY]
        detail = get_json(f"{base}/api/studies/{summary['study_id']}")
        page = urllib.request.urlopen(f"{base}/dashboard", timeout=30).read().decode()
    finally:
        server.terminate()
        server.wait(30)
    assert sorted(t["number"] for t in detail["trials"]) == [t.number for t in study.trials]
    assert {t["state"] for t in detail["trials"]} >= {"Complete", "Pruned"}
    assert [t["number"] for t in detail["best_trials"]] == [study.best_trial.number]
    assert "<html" in page.lower()


def test_mlflow_ui_shows_the_sweep_as_a_parent_run_that_expands_to_its_trials(sweep, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store = f"sqlite:///{sweep}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name(sweep_run.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    port = free_port()
    # The README's command, on a port of the test's own.
    server = subprocess.Popen([console_script("mlflow"), "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
                               "--port", str(port)], cwd=sweep, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=user_environment(), start_new_session=True)
    runs_view = f"#/experiments/{experiment.experiment_id}/runs"

    def linked_runs(driver):
        links = driver.find_elements(By.CSS_SELECTOR, f"a[href*='{runs_view}/']")
        return {link.get_attribute("href").rsplit("/", 1)[-1] for link in links}

    try:
        wait_for(f"http://127.0.0.1:{port}/health", server)
        chromium.get(f"http://127.0.0.1:{port}/{runs_view}")
        # Collapsed, the sweep is one row: its parent run.
        WebDriverWait(chromium, 60).until(lambda d: parent.info.run_id in linked_runs(d))
        assert not linked_runs(chromium) & children
        chromium.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
        WebDriverWait(chromium, 30).until(lambda d: linked_runs(d) >= children)
        names = chromium.find_element(By.TAG_NAME, "body").text
    finally:
        os.killpg(server.pid, 15)  # mlflow ui runs its server in processes of its own
        server.wait(30)
    assert sweep_study.DEFAULT_STUDY in names and "kaggle_cnn" in names
