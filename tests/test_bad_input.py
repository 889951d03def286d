"""Users' mistakes across the commands, against a real finished sweep: each gives one line
naming the problem and exit code 2, no traceback, within seconds, and leaves every file of
the existing stores byte for byte as it was."""

import hashlib
import json
import shutil
import time

import numpy as np
import pytest

import search_space
import train_trial
from digits import predict
from sweeps import reproduce, run as sweep_run
from analysis import compare

pytestmark = pytest.mark.slow  # against a finished smoke sweep

SMOKE = ["--budget", "smoke", "--train-size", "300", "--max-epochs", "1"]


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".lock"}


@pytest.fixture
def stores(sweep, tmp_path, monkeypatch):
    """A copy of the finished smoke sweep's folder (its study journal and MLflow store), as cwd."""
    folder = tmp_path / "project"
    shutil.copytree(sweep, folder)
    monkeypatch.chdir(folder)
    np.savez(folder / "corrupt.npz", x_train=np.zeros((3, 5)))
    (folder / "truncated.npz").write_bytes((folder / "corrupt.npz").read_bytes()[:40])
    (folder / "train.csv").write_text("label,pixel0\n1,0\n")  # 783 pixel columns missing
    (folder / "unknown_key.json").write_text(json.dumps({**search_space.baseline("gradio_cnn"), "colour": "red"}))
    (folder / "out_of_range.json").write_text(json.dumps({**search_space.baseline("gradio_cnn"), "learning_rate": 5.0}))
    (folder / "not_json.json").write_text("{family: cnn")
    from PIL import Image, ImageDraw

    digit = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(digit).line([(32, 8), (32, 56)], fill=0, width=6)
    digit.save(folder / "one.png")
    return folder


def cases(folder):
    journal = f"journal:{folder}/mlruns/optuna.journal"
    run = sweep_run.main
    return {
        "--trials 0": (run, ["--trials", "0"], "--trials: 0 must be at least 1"),
        "--trials -5": (run, ["--trials", "-5"], "must be at least 1"),
        "--trials abc": (run, ["--trials", "abc"], "'abc' is not a whole number"),
        "an unknown sampler": (run, ["--sampler", "bayes"], "invalid choice: 'bayes'"),
        "an unknown pruner": (run, ["--pruner", "asha"], "invalid choice: 'asha'"),
        "an unknown budget": (run, ["--budget", "huge"], "invalid choice: 'huge'"),
        "--workers 0": (run, ["--workers", "0"], "must be at least 1"),
        "a malformed storage URL": (run, ["--storage", "postgres//nowhere", *SMOKE], "--storage postgres//nowhere"),
        "an unknown storage dialect": (run, ["--storage", "nosuchdb://x/y", *SMOKE], "--storage nosuchdb://x/y"),
        "a database nobody listens for": (run, ["--storage", "postgresql://u:hunter2@127.0.0.1:9/db", *SMOKE],
                                          "--storage postgresql://u:***@127.0.0.1:9/db"),
        "an unreachable database host": (run, ["--storage", "postgresql://u:hunter2@10.255.255.1:5432/db", *SMOKE],
                                         "--storage postgresql://u:***@10.255.255.1:5432/db"),
        "an unreachable tracking server": (run, ["--tracking-uri", "http://127.0.0.1:9", *SMOKE],
                                           "no MLflow tracking server answers there"),
        "a missing data file": (run, ["--data", "missing.npz", *SMOKE], "missing.npz"),
        "a corrupt data file": (run, ["--data", "corrupt.npz", *SMOKE], "corrupt.npz"),
        "a truncated data file": (run, ["--data", "truncated.npz", *SMOKE], "truncated.npz"),
        "a Kaggle CSV with missing columns": (run, ["--data", "train.csv", *SMOKE], "missing column(s) pixel1"),
        "another budget for a recorded study": (run, ["--trials", "12", "--budget", "smoke"], "different setup"),
        "a negative number of finalists": (run, ["--finalists", "-1", *SMOKE], "--finalists: -1 must be at least 0"),
        "no time for the sweep": (run, ["--hours", "0", *SMOKE], "--hours: 0 must be a number above 0"),
        "hours that are not a number": (run, ["--hours", "soon", *SMOKE], "--hours: 'soon' is not a number"),
        "infinite hours": (run, ["--hours", "inf", *SMOKE], "--hours: inf must be a number above 0"),
        "a params file with an unknown key": (train_trial.main, ["--params", "unknown_key.json", *SMOKE], "colour"),
        "a params value out of range": (train_trial.main, ["--params", "out_of_range.json", *SMOKE],
                                        "learning_rate=5.0 is not in 0.0001..0.01"),
        "a params file that is not JSON": (train_trial.main, ["--params", "not_json.json", *SMOKE], "not_json.json"),
        "an unknown baseline": (train_trial.main, ["--baseline", "alexnet", *SMOKE], "alexnet"),
        "reproduce: a study that does not exist": (reproduce.main, ["--study", "nope", "--storage", journal],
                                                   "no study named 'nope'"),
        "reproduce: a trial number out of range": (reproduce.main, ["--study", "mnist-sweep", "--trial", "999",
                                                                    "--storage", journal], "999"),
        "compare: a study that does not exist": (compare.main, ["--study", "nope", "--storage", journal],
                                                 "no study named 'nope'"),
        "predict: a model that does not exist": (predict.main, ["--model", "models:/nope@champion", "--input",
                                                                "one.png"], "--model models:/nope@champion: not found"),
    }


def test_bad_inputs_give_one_line_exit_2_and_leave_the_stores_intact(stores, run_command):
    before = snapshot(stores / "mlruns")
    for case, (main, argv, message) in cases(stores).items():
        started = time.monotonic()
        code, out, err = run_command(main, argv)
        assert code == 2, (case, out, err)
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, (case, err)
        assert time.monotonic() - started < 15, case  # no long hang, even on an unreachable host
        assert "hunter2" not in out + err
        assert snapshot(stores / "mlruns") == before, case


def test_an_mlflow_store_that_cannot_be_created_is_one_line(stores, run_command):
    shutil.rmtree(stores / "mlruns")
    (stores / "mlruns").write_text("a file where the store folder should be")
    code, _, err = run_command(sweep_run.main, ["--trials", "2", *SMOKE])
    assert code == 2 and err.count("\n") == 1 and "mlruns" in err
    assert (stores / "mlruns").read_text() == "a file where the store folder should be"
