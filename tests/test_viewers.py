"""The tools users already know read the sweep's default stores: the ``optuna`` command line
and ``optuna-dashboard`` on the journal file, ``mlflow ui`` on the SQLite store (the parent
run expanding to its trials, in headless Chromium)."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import free_port

from sweeps import run as sweep_run, study as sweep_study

pytestmark = pytest.mark.slow  # servers and a browser on the smoke sweep's stores
STUDY = sweep_study.DEFAULT_STUDY



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


@pytest.fixture(scope="module")
def mlflow_ui(sweep):
    """The README's `mlflow ui` on the smoke sweep's store, on a port of the test's own; yields
    (its address, the client, the experiment id, the parent run, the child runs)."""
    store = f"sqlite:///{sweep}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name(sweep_run.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    port = free_port()
    server = subprocess.Popen([console_script("mlflow"), "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
                               "--port", str(port)], cwd=sweep, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=user_environment(), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health", server)
        yield base, client, experiment.experiment_id, parent, children
    finally:
        os.killpg(server.pid, 15)  # mlflow ui runs its server in processes of its own
        server.wait(30)


def printed_link(sweep, base: str, which: str) -> str:
    """A link the sweep's summary printed, pointed at the test's server."""
    [line] = [line for line in (sweep / "summary.txt").read_text().splitlines() if which in line]
    return line.split(": ", 1)[1].strip().replace("http://127.0.0.1:5000", base)


def linked_runs(driver, experiment_id) -> list[str]:
    """Run ids in the order the page links them."""
    from selenium.webdriver.common.by import By

    ids = []
    for link in driver.find_elements(By.CSS_SELECTOR, f"a[href*='#/experiments/{experiment_id}/runs/']"):
        run_id = link.get_attribute("href").rsplit("/", 1)[-1]
        if run_id not in ids:
            ids.append(run_id)
    return ids


def test_mlflow_ui_shows_the_sweep_as_a_parent_run_that_expands_to_its_trials(mlflow_ui, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, client, experiment_id, parent, children = mlflow_ui
    chromium.get(f"{base}/#/experiments/{experiment_id}/runs")
    # Collapsed, the sweep is one row: its parent run.
    WebDriverWait(chromium, 60).until(lambda d: parent.info.run_id in linked_runs(d, experiment_id))
    child_ids = {r.info.run_id for r in children}
    assert not set(linked_runs(chromium, experiment_id)) & child_ids
    chromium.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
    WebDriverWait(chromium, 30).until(lambda d: set(linked_runs(d, experiment_id)) >= child_ids)
    names = chromium.find_element(By.TAG_NAME, "body").text
    assert sweep_study.DEFAULT_STUDY in names and "kaggle_cnn" in names


def test_the_printed_ranked_link_lists_every_trial_by_validation_accuracy_with_its_datasets(
        sweep, mlflow_ui, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, client, experiment_id, parent, children = mlflow_ui
    scored = sorted((r for r in children if "validation_accuracy" in r.data.metrics),
                    key=lambda r: r.data.metrics["validation_accuracy"], reverse=True)
    chromium.get(printed_link(sweep, base, "best validation accuracy first"))
    WebDriverWait(chromium, 60).until(lambda d: {r.info.run_id for r in scored} <= set(linked_runs(d, experiment_id)))
    shown = [run_id for run_id in linked_runs(chromium, experiment_id) if run_id in {r.info.run_id for r in scored}]
    accuracies = [client.get_run(run_id).data.metrics["validation_accuracy"] for run_id in shown]
    assert accuracies == sorted(accuracies, reverse=True) and len(shown) == len(scored)
    assert "mnist-train" in chromium.find_element(By.TAG_NAME, "body").text  # the Dataset column
    for run in children:
        assert {(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs} >= {
            ("mnist-train", "training"), ("mnist-validation", "validation")}


def test_the_parent_run_page_is_the_sweeps_leaderboard_with_its_plots(sweep, mlflow_ui, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, client, experiment_id, parent, children = mlflow_ui
    study = optuna.load_study(study_name=STUDY, storage=sweep_study.open_storage(f"journal:{journal(sweep)}"))
    best = study.best_trial
    expected = f"validation accuracy {best.value:.4f}"
    chromium.get(printed_link(sweep, base, "the sweep's page"))
    WebDriverWait(chromium, 60).until(lambda d: expected in d.find_element(By.TAG_NAME, "body").text)
    page = chromium.find_element(By.TAG_NAME, "body").text
    label = best.user_attrs.get("baseline") or f"trial {best.number}"
    assert f"Best: {label}, {expected}" in page and "lenet5" in page
    # The interactive plots open from the parent's artifacts (the page's link), without a network:
    # MLflow shows an HTML artifact in a sandboxed frame, scripts allowed.
    written = client.download_artifacts(parent.info.run_id, "sweep_plots/optuna_plots.html")
    plots = open(written).read().count('class="plotly-graph-div"')
    assert plots >= 3
    link = f"#/experiments/{experiment_id}/runs/{parent.info.run_id}/artifacts/sweep_plots/optuna_plots.html"
    assert link in parent.data.tags["mlflow.note.content"]
    chromium.get(f"{base}/{link}")
    WebDriverWait(chromium, 60).until(lambda d: d.find_elements(By.TAG_NAME, "iframe"))
    chromium.switch_to.frame(chromium.find_element(By.TAG_NAME, "iframe"))
    WebDriverWait(chromium, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) == plots)


def test_a_pruned_trials_run_is_not_drawn_as_failed(sweep, mlflow_ui):
    base, client, experiment_id, parent, children = mlflow_ui
    pruned = [r for r in children if r.data.tags.get("optuna_state") == "PRUNED"]
    assert pruned, "the smoke sweep pruned nothing"
    # The UI draws a run's status; FINISHED is its green tick, FAILED and KILLED its red cross.
    assert {r.info.status for r in pruned} == {"FINISHED"}
    assert all(r.data.tags["stop_cause"] in ("pruned", "priced_out") for r in pruned)
