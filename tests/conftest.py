"""Shared fixtures: the shipped data (loaded once), a finished smoke sweep (run once), a
throwaway MLflow store, a way to run a command's main as a user would and see its exit
code and output, and a headless browser."""

import contextlib
import io
import os
import shutil
import socket

import pytest

from harness import cli, data


@pytest.fixture(scope="session")
def mnist():
    return data.load()


# A sweep on a few hundred images, for tests that need a finished study.
SMOKE = ["--budget", "smoke", "--train-size", "300", "--max-epochs", "2", "--finalists", "0"]


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """One smoke study of 8 trials (the five baselines first), then resumed to 9, in a folder
    of its own (mlruns/ holds its journal and MLflow store)."""
    from sweeps import run as sweep_run

    folder = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for trials in (8, 9):
            output = io.StringIO()
            with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(output):
                cli.run(sweep_run.main, ["--trials", str(trials), "--workers", "1", *SMOKE])
            assert exit_info.value.code == 0
    (folder / "summary.txt").write_text(output.getvalue())
    return folder


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlruns/mlflow.db"


@pytest.fixture
def run_command(capsys):
    """Run main(argv) through the CLI edge; return (exit code, stdout, stderr)."""

    def run(main, argv):
        with pytest.raises(SystemExit) as exit_info:
            cli.run(main, [str(a) for a in argv])
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory, mnist):
    """A chollet_cnn trained on 10,000 images with shifts of up to 10 % (so, like a real
    champion, a 1-pixel difference in centring does not flip its answer), saved as a .keras
    file, logged to an MLflow store of its own and registered there as the champion."""
    import types

    import mlflow

    import search_space
    import train_trial
    from harness import tracking
    from harness.budgets import BUDGETS

    folder = tmp_path_factory.mktemp("digits-model")
    budget = BUDGETS["smoke"].overridden(train_size=10000, max_epochs=3)
    model = train_trial.train({**search_space.baseline("chollet_cnn"), "augment": True, "rotation": 0.0, "zoom": 0.0, "shift": 0.1}, data.split(mnist, train_size=10000), budget).model
    path = folder / "digits.keras"
    model.save(path)
    uri = tracking.use_experiment("digits-model", f"sqlite:///{folder}/mlflow.db")
    mlflow.set_registry_uri(uri)
    with mlflow.start_run() as run:
        logged = mlflow.keras.log_model(model, name="model", pip_requirements=["keras"])
    version = mlflow.register_model(logged.model_uri, tracking.REGISTERED_MODEL)
    tracking.client(uri).set_registered_model_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION_ALIAS,
                                                    version.version)
    return types.SimpleNamespace(model=model, path=path, tracking_uri=uri, run_id=run.info.run_id)


# .ci/run sets this, so there the browser tests fail instead of skipping when Chromium is missing.
BROWSER_REQUIRED = os.environ.get("MNIST_SWEEPS_REQUIRE_BROWSER") == "1"


@pytest.fixture
def chromium(tmp_path):
    """Debian's headless Chromium under Selenium, closed after the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        if BROWSER_REQUIRED:
            pytest.fail("Chromium and chromedriver are required here (apt-get install chromium chromium-driver)")
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # Without the background-networking flags Chromium keeps dialing Google's hosts, which
    # this closed network refuses.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield browser
    browser.quit()


def free_port() -> int:
    """A port nothing listens on now, for a server a test starts on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
