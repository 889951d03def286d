"""The harness is Keras-3 backend-agnostic: a smoke trial on each other installed backend
(a GPU machine has JAX and PyTorch but no TensorFlow)."""

import importlib.util
import json
import os
import subprocess
import sys

import mlflow
import pytest

import search_space

pytestmark = pytest.mark.slow  # a trial in a subprocess on each backend

OTHER_BACKENDS = [name for name in ("jax", "torch") if importlib.util.find_spec(name)]


@pytest.mark.skipif(not OTHER_BACKENDS, reason="neither JAX nor PyTorch is installed")
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_a_smoke_trial_trains_and_logs_on_another_backend(backend, tmp_path):
    # chollet_cnn with a scheduled rate. (Augmentation is left out: on a CPU, JAX compiles each
    # augmentation layer for 10-15 s, and the suite has a 10-minute budget.)
    params = {**search_space.baseline("chollet_cnn"), "lr_schedule": "one_cycle"}
    (tmp_path / "recipe.json").write_text(json.dumps(params))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environment.update(KERAS_BACKEND=backend, PYTHONPATH=os.getcwd())
    finished = subprocess.run(
        [sys.executable, os.path.abspath("train_trial.py"), "--params", "recipe.json", "--budget", "smoke",
         "--train-size", "300", "--max-epochs", "2", "--quiet"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "best epoch" in finished.stdout
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("mnist-trials").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["keras_backend"] == backend
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
    # Read from the logged model's own folder: resolving a runs:/ or models:/ URI would need
    # the process-wide tracking URI, which later tests must find unset.
    [model] = run.outputs.model_outputs
    folder = client.get_logged_model(model.model_id).artifact_location
    requirements = mlflow.artifacts.download_artifacts(artifact_uri=f"{folder}/requirements.txt", dst_path=str(tmp_path))
    assert backend in open(requirements).read()  # the saved model asks for its own backend
