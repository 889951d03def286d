"""The comparison report on a smoke sweep: every baseline named, every number traceable to
an MLflow run, the files beside the study's parent run; missing studies refused."""

import re
import warnings

import mlflow
import pytest

import search_space
from analysis import compare
from sweeps import baselines, study as sweep_study

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.slow]  # on a finished smoke sweep


def stores(folder):
    return ["--storage", f"journal:{folder}/mlruns/optuna.journal",
            "--tracking-uri", f"sqlite:///{folder}/mlruns/mlflow.db"]


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    """The report of the smoke sweep, after one baseline was evaluated on the test set."""
    from harness import cli

    with pytest.raises(SystemExit) as evaluated:
        cli.run(baselines.main, ["--only", "chollet_cnn", "--budget", "smoke", "--train-size", "300",
                                 "--max-epochs", "1", "--tracking-uri", f"sqlite:///{sweep}/mlruns/mlflow.db"])
    assert evaluated.value.code == 0
    out = tmp_path_factory.mktemp("report")
    with pytest.raises(SystemExit) as compared, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a user's terminal would show, once each
        cli.run(compare.main, ["--study", "mnist-sweep", "--out", str(out), *stores(sweep)])
    assert compared.value.code == 0
    # No library warning in the command's output (deprecations are hidden from users by Python).
    assert [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)] == []
    return out


def table_rows(text, header):
    section = text.split(header, 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| ---")][1:]


def test_the_report_names_all_five_baselines_with_their_documented_figures(report):
    rows = {row[0]: row for row in table_rows((report / "report.md").read_text(), "## Baselines")}
    assert list(rows) == list(search_space.BASELINES)
    for name, row in rows.items():
        assert row[1] == search_space.DOCUMENTED_ACCURACY[name]


def test_every_number_in_the_tables_traces_back_to_an_mlflow_run(report, sweep):
    client = mlflow.MlflowClient(f"sqlite:///{sweep}/mlruns/mlflow.db")
    text = (report / "report.md").read_text()
    for row in table_rows(text, "## Baselines") + table_rows(text, "## Top 5 trials"):
        run = client.get_run(row[-1])
        value = float(row[2].split()[0])  # validation, possibly followed by why it stopped
        trial_number = int(run.data.tags["optuna_trial_number"])
        logged = run.data.metrics.get("validation_accuracy")
        if logged is None:  # a stopped trial: its figure is the last epoch it logged
            logged = max(client.get_metric_history(row[-1], "val_accuracy"), key=lambda m: m.step).value
        assert value == pytest.approx(logged, abs=5e-5), trial_number
    chollet = {r[0]: r for r in table_rows(text, "## Baselines")}["chollet_cnn"]
    (evaluated,) = client.search_runs([client.get_experiment_by_name(baselines.EXPERIMENT).experiment_id],
                                      "tags.baseline = 'chollet_cnn'")
    assert chollet[3] == f"{evaluated.data.metrics['test_accuracy']:.4f} (smoke, 1 seed)"
    assert {r[0]: r for r in table_rows(text, "## Baselines")}["lenet5"][3] == "not evaluated"


def test_the_top_trials_are_ranked_with_their_difference_to_the_best_baseline(report):
    rows = table_rows((report / "report.md").read_text(), "## Top 5 trials")
    values = [float(row[2]) for row in rows]
    assert 1 <= len(rows) <= 5 and values == sorted(values, reverse=True)
    assert all(re.fullmatch(r"[+-]\d+\.\d\d", row[3]) for row in rows)


def test_the_plots_are_written_and_attached_to_the_parent_run(report, sweep):
    written = {p.name for p in report.iterdir()}
    assert {"report.md", "optimization_history.png", "parallel_coordinates.png",
            "learning_curves.png", "confusion_matrices.png"} <= written
    client = mlflow.MlflowClient(f"sqlite:///{sweep}/mlruns/mlflow.db")
    study = sweep_study.load_existing("mnist-sweep", f"journal:{sweep}/mlruns/optuna.journal")
    attached = client.list_artifacts(study.user_attrs["mlflow_parent_run_id"], "report")
    assert {f"report/{name}" for name in written} == {a.path for a in attached}


def test_a_missing_study_is_one_line_and_exit_2(sweep, run_command, tmp_path):
    code, _, err = run_command(compare.main, ["--study", "nope", "--out", tmp_path, *stores(sweep)])
    assert code == 2 and err.count("\n") == 1
    assert "no study named 'nope'" in err and "studies there: mnist-sweep" in err
    code, _, err = run_command(compare.main, ["--study", "x", "--storage", f"journal:{tmp_path}/none.journal"])
    assert code == 2 and "there is no study storage at" in err
