"""Users' mistakes across the commands, against a real finished sweep: each gives one line
naming the problem and exit code 2, no traceback, within seconds, and leaves every file of
the existing stores byte for byte as it was."""

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import search_space
import train_trial
from digits import predict
from sweeps import reproduce, run as sweep_run
from analysis import compare
from benchmarks import selection_rules, spare_seeds, store_pool, time_left, view_averaging

pytestmark = pytest.mark.slow  # against a finished smoke sweep

SMOKE = ["--budget", "smoke", "--train-size", "300", "--max-epochs", "1"]


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".lock"}


@pytest.fixture
def stores(sweep, mnist, tmp_path, monkeypatch):
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
    pixels = mnist.x_train[:600].reshape(600, -1)  # Kaggle's train.csv: labels, but no test set
    rows = [",".join(map(str, [label, *row])) for label, row in zip(mnist.y_train[:600], pixels)]
    (folder / "kaggle_train.csv").write_text("label," + ",".join(f"pixel{i}" for i in range(784)) + "\n"
                                             + "\n".join(rows) + "\n")
    (folder / "utf16.json").write_text(json.dumps(search_space.baseline("gradio_cnn")), encoding="utf-16")
    (folder / "idx_damaged").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / "idx_damaged" / f"{name}.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(6) + b"not deflate data")
    (folder / "a_file.md").write_text("a report file where --out names the report's folder\n")
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
        "a study name with a quote": (run, ["--study", "bob's", *SMOKE], "is not a usable study name"),
        "a study name with a slash": (run, ["--study", "a/b", *SMOKE], "is not a usable study name"),
        "a study name with a rung's @": (run, ["--study", "x@full", *SMOKE], "is not a usable study name"),
        "a ladder on data without a test set": (run, ["--study", "kaggle", "--data", "kaggle_train.csv", *SMOKE],
                                                "has no labelled test set"),
        "--evaluate-test on data without a test set": (train_trial.main, ["--baseline", "gradio_cnn", "--evaluate-test",
                                                                          "--data", "kaggle_train.csv", *SMOKE],
                                                       "has no labelled test set"),
        "a UTF-16 params file": (train_trial.main, ["--params", "utf16.json", *SMOKE], "not UTF-8 text"),
        "a damaged gzip IDX file": (run, ["--data", "idx_damaged", *SMOKE], "damaged gzip data"),
        "a SQLite URI with two slashes": (run, ["--tracking-uri", "sqlite://mlruns/mlflow.db", *SMOKE],
                                          "a SQLite URI has three slashes"),
        "--workers without an upper bound": (run, ["--workers", "1000", *SMOKE], "--workers: 1000 is more than 64"),
        "compare: --out names a file": (compare.main, ["--study", "mnist-sweep", "--out", "a_file.md"],
                                        "--out a_file.md: a file is there"),
        "compare: a tracking server that is down": (compare.main, ["--study", "mnist-sweep", "--tracking-uri",
                                                                   "http://127.0.0.1:9"],
                                                    "no MLflow tracking server answers there"),
        "views benchmark: a study without an ensemble": (view_averaging.main, ["--study", "mnist-sweep", "--storage",
                                                                               journal], "has no ensemble yet"),
        "store pool benchmark: a study without an ensemble": (store_pool.main, ["--study", "mnist-sweep", "--storage",
                                                                              journal], "has no ensemble yet"),
        "selection rules benchmark: a study without an ensemble": (selection_rules.main, ["--study", "mnist-sweep",
                                                                                         "--storage", journal],
                                                                   "has no ensemble yet"),
        "selection rules benchmark: two pools asked for": (selection_rules.main, ["--study", "mnist-sweep", "--every",
                                                                                  "--candidates", "32"],
                                                           "--candidates: not allowed with argument --every"),
        "spare seeds benchmark: a study without an ensemble": (spare_seeds.main, ["--study", "mnist-sweep",
                                                                                 "--storage", journal],
                                                               "has no ensemble yet"),
        "time left: a log that does not exist": (time_left.main, ["missing.txt"], "missing.txt: cannot read it"),
        "time left: a log without progress lines": (time_left.main, ["train.csv"], "no progress line"),
        "time left: a start that is not a time": (time_left.main, ["summary.txt", "--started", "noon"],
                                                  "'noon' is not a time of day"),
    }


CASES = list(cases(Path("/nowhere")))


def test_the_table_holds_at_least_thirty_mistakes():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES)
def test_a_bad_input_gives_one_line_exit_2_and_leaves_the_stores_intact(stores, run_command, case):
    before = snapshot(stores / "mlruns")
    main, argv, message = cases(stores)[case]
    started = time.monotonic()
    code, out, err = run_command(main, argv)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert time.monotonic() - started < 15  # no long hang, even on an unreachable host
    assert "hunter2" not in out + err
    assert snapshot(stores / "mlruns") == before


def test_an_mlflow_store_that_cannot_be_created_is_one_line(stores, run_command):
    shutil.rmtree(stores / "mlruns")
    (stores / "mlruns").write_text("a file where the store folder should be")
    code, _, err = run_command(sweep_run.main, ["--trials", "2", *SMOKE])
    assert code == 2 and err.count("\n") == 1 and "mlruns" in err
    assert (stores / "mlruns").read_text() == "a file where the store folder should be"
