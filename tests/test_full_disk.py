"""A sweep whose stores fill their disk mid-sweep ends with one line and a non-zero exit code,
leaves no run RUNNING and no torn journal record, and the same command resumes once there is
room again. The disk is a real small file system (tmpfs, mounted by root, as CI runs)."""

import os
import re
import shutil
import subprocess
import sys

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from harness import records
from sweeps import run as sweep_run, study as sweep_study

pytestmark = pytest.mark.slow
FAST_SMOKE = ["--budget", "smoke", "--train-size", "300", "--max-epochs", "1", "--workers", "1", "--no-baselines", "--finalists", "0"]


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("MNIST_SWEEPS_REQUIRE_TMPFS") == "1" or os.environ.get("CI") == "true":
            pytest.fail(f"CI runs as root and must be able to mount a tmpfs: {mounted.stderr.strip()}")
        pytest.skip(f"needs root to mount a small file system: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def resize(folder, size_bytes):
    subprocess.run(["mount", "-o", f"remount,size={-(-size_bytes // 1024)}k", str(folder)], check=True)


def sweep(folder, trials):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run([sys.executable, "-m", "sweeps.run", "--trials", str(trials), *FAST_SMOKE], cwd=folder,
                          capture_output=True, text=True, timeout=900, env=environment)


def stores(folder):
    study = optuna.load_study(study_name=sweep_study.DEFAULT_STUDY,
                              storage=sweep_study.open_storage(f"journal:{folder}/mlruns/optuna.journal"))
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(sweep_run.EXPERIMENT)
    return study, client.search_runs([experiment.experiment_id], max_results=1000)


def test_a_full_disk_mid_sweep_is_one_line_and_the_same_command_resumes(small_disk):
    # Two trials on a roomy disk, then room for a few more: sampled models differ in size (0.4 to
    # 1.7 MB in three smoke trials measured), so a fixed small disk filled in CI before an
    # unlucky first sample's trial completed.
    roomy = sweep(small_disk, 2)
    assert roomy.returncode == 0, roomy.stderr
    resize(small_disk, shutil.disk_usage(small_disk).used + (4 << 20))
    full = sweep(small_disk, 40)
    assert full.returncode == 1, full.stderr
    errors = [line for line in full.stderr.replace("\r", "\n").splitlines()  # less the progress lines
              if line.strip() and not re.match(rf"\d\d:\d\d:\d\d {sweep_study.DEFAULT_STUDY}: ", line)]
    assert len(errors) == 1 and errors[0].startswith("error: cannot write /") and "Traceback" not in full.stderr
    assert "No space left on device" in errors[0] or "database or disk is full" in errors[0]
    assert "free some space" in errors[0] and "run the same command again" in errors[0]
    study, runs = stores(small_disk)
    before = [(t.number, t.state, t.value) for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(before) >= 2
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    assert (small_disk / "mlruns" / "optuna.journal").read_bytes().endswith(b"\n")

    resize(small_disk, 256 << 20)
    total = len(before) + 3
    again = sweep(small_disk, total)
    assert again.returncode == 0, again.stderr
    study, runs = stores(small_disk)
    assert [(t.number, t.state, t.value) for t in study.trials if t.number in {n for n, _, _ in before}] == before
    assert records.counted_trials(study.trials, total) == total
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    # The trial the full disk cut short was retried with its params: the disk cost time, not a sample.
    lost = records.lost_first_time(study.trials)
    assert lost and all(any(t.user_attrs.get(records.RETRY_OF) == l.number for t in study.trials) for l in lost)
