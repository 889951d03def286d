"""The sweep against the baselines: a Markdown report with tables and plots, from what the
study and MLflow already hold. It trains nothing and changes no trial, so it works on a
study that is still running.

    python -m analysis.compare --study mnist-sweep --out reports/mnist-sweep

The files go to --out and, as artifacts under report/, to the study's parent MLflow run.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import optuna
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial, TrialState

import search_space
from harness import cli, figures, records, tracking
from harness.errors import UserError
from analysis import front
from sweeps import answer, front_page, plan, study as sweep_study
from harness.records import StopCause

# Where measured test accuracies of the baselines live: sweeps.baselines, train_trial.py.
TEST_EXPERIMENTS = ("mnist-baselines", "mnist-trials")
TOP = 5
CURVES = 3  # top sampled trials drawn over the baselines' learning curves
# Shared by MLP and CNN points, so every finished trial has them (parallel coordinates).
COMMON_PARAMS = ["family", "optimizer", "lr_schedule", "batch_size",
                 "label_smoothing", "augment", "dense_units"]


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m analysis.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=sweep_study.DEFAULT_STUDY,
                        help=f"study name (default: {sweep_study.DEFAULT_STUDY})")
    parser.add_argument("--out", metavar="DIR", help="report folder (default: reports/STUDY)")
    parser.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: the journal in mlruns/)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    return parser.parse_args(argv)


@dataclass
class Row:
    """One trial as the report shows it, with the MLflow run its numbers come from."""
    trial: FrozenTrial
    run: mlflow.entities.Run | None

    @property
    def label(self) -> str:
        return records.label(self.trial)

    def metric(self, key: str):
        return self.run.data.metrics.get(key) if self.run else None

    @property
    def epochs(self) -> int:
        logged = self.metric("epochs_run")
        return int(logged) if logged is not None else len(self.trial.intermediate_values)

    @property
    def training_seconds(self) -> float | None:
        logged = self.metric("train_seconds")
        if logged is not None:
            return logged
        if self.run and self.run.info.end_time:  # stopped runs: their wall-clock
            return (self.run.info.end_time - self.run.info.start_time) / 1000
        return None

    @property
    def validation(self) -> str:
        if self.trial.value is None:
            return self.trial.state.name.lower()
        cause = records.stop_cause(self.trial)
        if cause == StopCause.TIME_SHARE:
            return f"{self.trial.value:.4f} (time share, epoch {self.epochs})"
        if self.trial.state == TrialState.COMPLETE:
            return f"{self.trial.value:.4f}"
        return f"{self.trial.value:.4f} ({'pruner' if cause == StopCause.PRUNED else 'stopped'}, epoch {self.epochs})"


def existing_store(requested: str | None) -> str:
    """The tracking URI to read, refused if it names a SQLite store that does not exist."""
    uri = tracking.tracking_uri(requested)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no MLflow store at {uri.removeprefix('sqlite:///')} (pass --tracking-uri)")
    if uri.startswith(("http://", "https://")):
        tracking.check_server(uri)
    return uri


def report_folder(requested: str | None, study_name: str) -> Path:
    """Where the report goes: a folder, made now, so a bad --out is refused before any work."""
    out = Path(requested) if requested else Path("reports") / study_name
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file is there; the report is a folder (report.md and its plots)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create it ({error.strerror})") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"--out {out}: not writable")
    return out


def fetch_run(client: mlflow.MlflowClient, run_id: str | None):
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def baseline_experiment_ids(client: mlflow.MlflowClient) -> list[str]:
    """The experiments of this store that hold stand-alone baseline runs."""
    return [e.experiment_id for e in map(client.get_experiment_by_name, TEST_EXPERIMENTS) if e]


def measured_test_accuracy(client: mlflow.MlflowClient, name: str) -> str:
    """Mean test accuracy of the baseline's evaluated runs, preferring the full budget."""
    experiments = baseline_experiment_ids(client)
    if not experiments:
        return "not evaluated"
    runs = client.search_runs(experiments, f"tags.{records.BASELINE_TAG} = '{name}' and metrics.test_accuracy >= 0",
                              max_results=200)
    if not runs:
        return "not evaluated"
    by_budget: dict[str, list[float]] = {}
    for run in runs:
        by_budget.setdefault(run.data.tags.get(records.BUDGET_TAG, "?"), []).append(run.data.metrics["test_accuracy"])
    budget = "full" if "full" in by_budget else max(by_budget, key=lambda b: len(by_budget[b]))
    values = by_budget[budget]
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{spread} ({budget}, {len(values)} seed{'s' * (len(values) > 1)})"


def cell(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def baseline_table(rows: dict[str, Row], client) -> list[str]:
    lines = ["| baseline | documented (its seed) | validation, this sweep | test, measured | params | "
             "training time (s) | epochs | MLflow run |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in search_space.BASELINES:
        row = rows.get(name)
        documented = search_space.DOCUMENTED_ACCURACY[name]
        test = measured_test_accuracy(client, name)
        if row is None:
            lines.append(f"| {name} | {documented} | not in this study | {test} | - | - | - | - |")
            continue
        lines.append(f"| {name} | {documented} | {row.validation} | {test} | {cell(row.metric('param_count'))} | "
                     f"{cell(row.training_seconds)} | {row.epochs} | {row.run.info.run_id if row.run else '-'} |")
    return lines


def top_table(top: list[Row], best_baseline: Row | None) -> list[str]:
    reference = f" vs {best_baseline.label} (points)" if best_baseline else ""
    lines = [f"| rank | trial | validation | difference{reference} | recipe | params | training time (s) | "
             "epochs | MLflow run |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rank, row in enumerate(top, 1):
        difference = (f"{(records.accuracy(row.trial) - records.accuracy(best_baseline.trial)) * 100:+.2f}"
                      if best_baseline else "-")
        lines.append(f"| {rank} | {row.label} | {records.accuracy(row.trial):.4f} | {difference} | {search_space.describe(row.trial.params)} | "
                     f"{cell(row.metric('param_count'))} | {cell(row.training_seconds)} | {row.epochs} | "
                     f"{row.run.info.run_id if row.run else '-'} |")
    return lines


def rung_studies(study: optuna.Study, storage_url: str) -> list[optuna.Study]:
    """The ladder's upper rungs the sweep has climbed so far, lowest first."""
    if records.recorded_budget_name(study) == "?":
        return []
    storage = sweep_study.open_storage(storage_url)
    names = set(optuna.study.get_all_study_names(storage))
    rungs = [records.rung_study_name(study.study_name, budget.name)
             for budget in plan.upper_rungs(records.recorded_budget(study))]
    return [optuna.load_study(study_name=name, storage=storage) for name in rungs if name in names]


def rung_table(rows: list[Row], explored: dict[int, FrozenTrial], explored_rank: dict[int, int],
               documented: bool) -> list[str]:
    """A rung's models, best first, beside where each stood in exploration."""
    lines = [f"| rank | model | validation, this rung | exploration (rank) |{' documented (its seed) |' if documented else ''} "
             "recipe | training time (s) | epochs | MLflow run |",
             f"| --- | --- | --- | --- |{' --- |' if documented else ''} --- | --- | --- | --- |"]
    for rank, row in enumerate(rows, 1):
        source = explored.get(row.trial.user_attrs.get(records.SOURCE_TRIAL, -1))
        before = "-"
        if source is not None and records.accuracy(source) is not None:
            before = f"{records.accuracy(source):.4f}" + (f" ({explored_rank[source.number]})" if source.number in explored_rank
                                               else f" ({source.state.name.lower()})")
        name = row.trial.user_attrs.get(records.BASELINE)
        seed = f" {search_space.DOCUMENTED_ACCURACY[name]} |" if name else " - |"
        lines.append(f"| {rank} | {row.label} | {row.validation} | {before} |{seed if documented else ''} "
                     f"{search_space.describe(row.trial.params)} | {cell(row.training_seconds)} | {row.epochs} | "
                     f"{row.run.info.run_id if row.run else '-'} |")
    return lines


def ladder_section(study: optuna.Study, rungs: list[optuna.Study], client, finished: list[Row]) -> list[str]:
    """The top rung (the headline: every finalist and baseline at one full budget), the
    ensemble, and the rungs below it, each beside the exploration ranking."""
    explored = {t.number: t for t in study.get_trials(deepcopy=False)}
    explored_rank = {row.trial.number: rank for rank, row in enumerate(finished, 1)}
    lines = []
    result = records.ladder_result(study)
    for position, rung in enumerate(reversed(rungs)):
        budget = records.rung_budget_name(rung.study_name)
        rows = [Row(t, fetch_run(client, t.user_attrs.get(records.MLFLOW_RUN_ID)))
                for t in rung.get_trials(deepcopy=False) if records.accuracy(t) is not None]
        rows.sort(key=lambda row: records.accuracy(row.trial), reverse=True)
        waiting = sum(t.state == TrialState.WAITING for t in rung.get_trials(deepcopy=False))
        if position == 0:
            lines += [f"## Top rung: every model at budget `{budget}`", "",
                      "The sweep's finalists and the five baselines, trained at one budget and ranked on validation "
                      "accuracy; \"exploration\" is the figure (and rank among completed trials) each had at the "
                      "exploring budget, where a time share or the pruner may have cut it.", ""]
            if result:
                lines += ["**Answer:** every choice made on validation, each test figure read once after them.", "",
                          *(f"- {line.strip()}" for line in answer.answer_lines(result)), "",
                          "The models the ensemble step weighed (the top rung's, and any other sweep's in the store, "
                          "labelled with its study), on the validation images:", "",
                          *answer.candidate_table(result), "", *answer.rule_table(result.ensemble.rule_scores, result.ensemble.rule, result.ensemble.views)]
        else:
            lines += [f"## Rung `{budget}`", ""]
        lines += rung_table(rows, explored, explored_rank, documented=position == 0) if rows else [
            "No model finished at this rung (none was promoted to it, or its time ran out)."]
        if waiting:
            lines += ["", f"{waiting} promoted model(s) not started: the rung's share of the sweep's time ran out."]
        lines.append("")
    return lines


def front_section(fronts: dict[str, list[front.Point]], tracking_uri: str, parent_run) -> list[str]:
    """The accuracy-cost fronts as tables (their plots are with the others)."""
    if not fronts:
        return []
    experiment_id = parent_run.info.experiment_id
    return ["## The accuracy-cost fronts", "",
            "Each table lists the models no other model of its group beats on both validation accuracy and "
            "the cost, cheapest first: what to deploy for a size or a speed. Prediction times are medians "
            "of Keras' predict_on_batch on the worker's threads (one per worker in a two-worker CPU sweep); "
            "the baselines are marked.", "",
            *front.sections(fronts, lambda run_id: tracking.run_link(tracking_uri, experiment_id, run_id))]


# --- Plots --------------------------------------------------------------------------------

def plot_history(study: optuna.Study, baselines: dict[str, Row]):
    from optuna.visualization.matplotlib import plot_optimization_history

    axes = plot_optimization_history(study, **front_page.accuracy_target(study))
    values = [records.accuracy(row.trial) for row in baselines.values() if records.accuracy(row.trial) is not None]
    for (name, row), style in zip(baselines.items(), ["--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]):
        if records.accuracy(row.trial) is not None:
            axes.axhline(records.accuracy(row.trial), linestyle=style, color="gray", linewidth=1,
                         label=f"{name} ({records.accuracy(row.trial):.4f})")
    best = records.accuracy(records.best_trial(study))
    top = min(1.0, best + 0.003)  # the floor zooms in on the good trials, but stays below the best
    axes.set_ylim(min(max(0.8, min(values + [best]) - 0.005), top - 0.01), top)
    axes.legend(loc="lower right", fontsize=7)
    axes.set_title(f"{study.study_name}: validation accuracy by trial; baselines at this budget")
    return axes.figure


def plot_importances(study: optuna.Study):
    from optuna.visualization.matplotlib import plot_param_importances

    return plot_param_importances(study, evaluator=front_page.importance_evaluator(),
                                  **front_page.importance_target(study)).figure


def plot_parallel(study: optuna.Study, params: list[str]):
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    axes = plot_parallel_coordinate(study, params=params, **front_page.accuracy_target(study))
    axes.figure.set_size_inches(12, 5)
    return axes.figure


def plot_learning_curves(client, top: list[Row], baselines: dict[str, Row]):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for rows, style in ((list(baselines.values()), "--"), (top, "-o")):
        for row in rows:
            if row.run is None:
                continue
            history = sorted(client.get_metric_history(row.run.info.run_id, "val_accuracy"), key=lambda m: m.step)
            if history:
                axes.plot([m.step + 1 for m in history], [m.value for m in history], style,
                          label=f"{row.label} ({records.accuracy(row.trial):.4f})" if records.accuracy(row.trial) else row.label)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy")
    axes.set_ylim(bottom=max(0.9, axes.get_ylim()[0]))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    axes.set_title("Learning curves: top sampled trials (solid) over the baselines (dashed)")
    figure.tight_layout()
    return figure


def stored_confusion_matrix(client: mlflow.MlflowClient, run_id: str) -> np.ndarray | None:
    with tempfile.TemporaryDirectory(prefix="confusion-") as folder:
        try:
            path = client.download_artifacts(run_id, "confusion_matrix.csv", folder)
        except Exception:  # no such artifact: the run was stopped before its figures
            return None
        return np.loadtxt(path, delimiter=",", skiprows=1, dtype=int)[:, 1:]


def kaggle_confusion(client, row: Row | None) -> tuple[np.ndarray, str] | None:
    """kaggle_cnn's validation confusion matrix: this sweep's run if it got that far, else
    the latest stored kaggle_cnn run that has one."""
    if row and (run_id := records.model_run_id(row.trial)) and (matrix := stored_confusion_matrix(client, run_id)) is not None:
        return matrix, "kaggle_cnn, this sweep"
    experiments = baseline_experiment_ids(client)
    for run in client.search_runs(experiments, f"tags.{records.BASELINE_TAG} = 'kaggle_cnn' and attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=20) if experiments else []:
        if (matrix := stored_confusion_matrix(client, run.info.run_id)) is not None:
            return matrix, f"kaggle_cnn, budget {run.data.tags.get(records.BUDGET_TAG, '?')} (run {run.info.run_id[:8]})"
    return None


def plot_confusions(client: mlflow.MlflowClient, best: Row, kaggle: tuple[np.ndarray, str] | None):
    import matplotlib.pyplot as plt

    model_run = records.model_run_id(best.trial)  # a reused trial's figures are its source run's
    matrix = stored_confusion_matrix(client, model_run) if model_run else None
    panels = [(matrix, f"best: {best.label} ({records.accuracy(best.trial):.4f})")] if matrix is not None else []
    if kaggle:
        panels.append(kaggle)
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    for ax, (matrix, title) in zip(axes[0], panels):
        figures.draw_confusion_matrix(ax, matrix, f"{title}: validation")
    figure.tight_layout()
    return figure


# --- The report ---------------------------------------------------------------------------

def build_report(study: optuna.Study, tracking_uri: str, storage: str, out: Path) -> Path:
    import matplotlib.pyplot as plt

    client = tracking.client(tracking_uri)
    trials = study.get_trials(deepcopy=False)
    rows = [Row(t, fetch_run(client, t.user_attrs.get(records.MLFLOW_RUN_ID))) for t in trials]
    baselines = {row.trial.user_attrs[records.BASELINE]: row for row in rows if records.BASELINE in row.trial.user_attrs}
    finished = sorted((row for row in rows if row.trial.state == TrialState.COMPLETE),
                      key=lambda row: records.accuracy(row.trial), reverse=True)
    scored = [row for row in baselines.values() if records.accuracy(row.trial) is not None]
    best_baseline = max(scored, key=lambda row: records.accuracy(row.trial)) if scored else None
    states = {state: sum(t.state == state for t in trials) for state in TrialState}
    budget = records.recorded_fingerprint(study).get(records.BUDGET_KEY, {})
    rungs = rung_studies(study, storage)
    parent = study.user_attrs.get(records.PARENT_RUN_ID, "unknown")
    parent_run = fetch_run(client, parent)
    fronts = front.groups(study, rungs, client, parent_run.info.experiment_id, parent) if parent_run else {}

    out.mkdir(parents=True, exist_ok=True)
    notes = []
    plots = {}
    # Optuna's plots switch matplotlib to its ggplot style for good; the context restores ours.
    with warnings.catch_warnings(), plt.style.context("default"):
        front_page.ignore_plot_warnings()
        plots["optimization_history.png"] = plot_history(study, baselines)
        importances = {}
        try:
            importances = optuna.importance.get_param_importances(study, evaluator=front_page.importance_evaluator(),
                                                                  target=front_page.importance_target(study).get("target"))
            plots["param_importances.png"] = plot_importances(study)
        except (ValueError, RuntimeError) as error:
            notes.append(f"Hyperparameter importances: not computed ({error}).")
        shared = [p for p in importances if all(p in row.trial.params for row in finished)][:8]
        plots["parallel_coordinates.png"] = plot_parallel(study, shared or COMMON_PARAMS)
        sampled = [row for row in finished if records.BASELINE not in row.trial.user_attrs]  # baselines: dashed
        plots["learning_curves.png"] = plot_learning_curves(client, sampled[:CURVES], baselines)
        kaggle = kaggle_confusion(client, baselines.get("kaggle_cnn"))
        if kaggle is None:
            notes.append("kaggle_cnn: no stored validation confusion matrix in this MLflow store.")
        confusion = plot_confusions(client, finished[0], kaggle)
        if confusion is not None:
            plots["confusion_matrices.png"] = confusion
        plots.update(front.figures(fronts))
        for name, figure in plots.items():  # drawn here, where the filters above still hold
            figure.savefig(out / name, dpi=110, bbox_inches="tight")
            plt.close(figure)

    best = finished[0]
    lines = [
        f"# Study `{study.study_name}`: the sweep against the baselines", "",
        f"- Storage: `{sweep_study.redact(storage)}`; MLflow parent run `{parent}` at `{tracking_uri}`",
        f"- Budget `{budget.get('name', '?')}`: {budget.get('train_size') or 'all'} training images, up to "
        f"{budget.get('max_epochs', '?')} epochs, {budget.get('max_training_tflop', '?')} TFLOP and "
        f"{budget.get('trial_seconds', '?')} s a trial",
        f"- Trials: {len(trials)} ({states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
        f"{states[TrialState.FAIL]} failed, {states[TrialState.RUNNING]} running)",
        f"- Best at the exploring budget: {best.label}, validation accuracy {records.accuracy(best.trial):.4f}"
        + (f", {(records.accuracy(best.trial) - records.accuracy(best_baseline.trial)) * 100:+.2f} points vs the best baseline "
           f"({best_baseline.label}, {records.accuracy(best_baseline.trial):.4f})" if best_baseline else ""),
        "", *ladder_section(study, rungs, client, finished),
        *front_section(fronts, tracking_uri, parent_run),
        "## Baselines at the exploring budget", "",
        "Validation accuracy is this sweep's warm-start trial at the sweep's budget (a stopped trial "
        "shows its last epoch's figure and why it stopped). Test accuracy is from `python -m "
        "sweeps.baselines` (or `train_trial.py --evaluate-test`) runs, the full budget where there are any.",
        "", *baseline_table(baselines, client),
        "", f"## Top {TOP} trials at the exploring budget", "", *top_table(finished[:TOP], best_baseline), "",
        "## Plots", "",
    ]
    captions = {
        "optimization_history.png": "Optimization history; the baselines at this budget as horizontal lines",
        "param_importances.png": "Hyperparameter importances",
        "parallel_coordinates.png": "Parallel coordinates of the finished trials",
        "learning_curves.png": "Learning curves of the top trials over the baselines'",
        "confusion_matrices.png": "Validation confusion matrices: the best trial and kaggle_cnn",
    }
    for name in plots:
        caption = captions.get(name, f"Front: {name.removeprefix('front_').removesuffix('.png').replace('_', ' ')}")
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    lines += ["Best trial's params:", "", "```json", json.dumps(best.trial.params, indent=2), "```", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    if parent_run is not None:
        client.log_artifacts(parent, str(out), artifact_path="report")
    else:
        print(f"note: the study's parent run {parent} is not in this MLflow store; the report is only in {out}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    storage = sweep_study.storage_url(args.storage)
    study = sweep_study.load_existing(args.study, storage)
    if not study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
        raise UserError(f"study {args.study!r} has no finished trial yet: nothing to compare")
    tracking_uri = existing_store(args.tracking_uri)
    out = report_folder(args.out, args.study)
    report = build_report(study, tracking_uri, storage, out)
    print(f"Report: {report} (and the plots beside it); also under report/ in the study's parent MLflow run")
    return 0


if __name__ == "__main__":
    cli.run(main)
