"""Which recipe wins per size and per millisecond: a sweep's accuracy-cost fronts.

A front holds the models no other model beats on both validation accuracy and a cost: its
parameters (what a phone or a page downloads), one image's prediction time, or its training
seconds. Fronts are drawn separately for the explored trials and for the top rung, since a
recipe's accuracy at a few epochs and at the full budget are not comparable. Read from what
the study and its MLflow runs already hold; Optuna computes each front (Study.best_trials of a
two-objective study of the points) and draws it (plot_pareto_front).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

import search_space
from harness import records


@dataclass(frozen=True)
class Cost:
    metric: str  # the MLflow metric every trained trial's run logs
    title: str  # an axis's words
    unit: str  # how a table cell shows it
    log_scale: bool


COSTS = {
    "params": Cost("param_count", "parameters", "{:,.0f}", True),
    "latency": Cost("predict_ms_one_image", "ms to predict one image", "{:.2f} ms", True),
    "training": Cost("train_seconds", "training seconds", "{:,.0f} s", False),
}


@dataclass(frozen=True)
class Point:
    """One model: its validation accuracy, its costs (those its run logged) and where it came from."""
    label: str
    accuracy: float
    costs: dict[str, float]  # by COSTS key
    run_id: str | None
    recipe: str
    baseline: bool


ENSEMBLE_LABEL = "ensemble"


def runs_under(client, experiment_id: str, parent_run_id: str) -> dict[str, object]:
    """The sweep's trial runs (nested under its parent run), by run id, in one query."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{records.PARENT_RUN_TAG}` = '{parent_run_id}'",
                              max_results=5000)
    return {run.info.run_id: run for run in runs}


def points(trials: Iterable[FrozenTrial], runs: dict[str, object]) -> list[Point]:
    """The completed trials as points, each with the costs its MLflow run logged (a reused
    trial's run carries its source's figures)."""
    found = []
    for trial in trials:
        run = runs.get(trial.user_attrs.get(records.MLFLOW_RUN_ID))
        if trial.state != TrialState.COMPLETE or run is None:
            continue
        metrics = run.data.metrics
        costs = {key: metrics[cost.metric] for key, cost in COSTS.items() if cost.metric in metrics}
        found.append(Point(records.label(trial), records.accuracy(trial), costs, run.info.run_id,
                           search_space.describe(trial.params), records.BASELINE in trial.user_attrs))
    return found


@contextlib.contextmanager
def _quiet_optuna():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory"
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def as_study(candidates: list[Point], cost: str) -> optuna.Study:
    """The points that have ``cost``, as the trials of an in-memory study that minimises the
    cost and maximises validation accuracy (each trial's ``point`` attribute indexes
    ``candidates``)."""
    with _quiet_optuna():
        study = optuna.create_study(directions=["minimize", "maximize"])
    study.add_trials([optuna.trial.create_trial(values=[point.costs[cost], point.accuracy],
                                                user_attrs={"point": index, "label": point.label})
                      for index, point in enumerate(candidates) if math.isfinite(point.costs.get(cost, math.nan))])
    return study


def front(candidates: list[Point], cost: str) -> list[Point]:
    """The points on the accuracy-``cost`` front, cheapest first."""
    study = as_study(candidates, cost)
    if not study.trials:
        return []
    chosen = [candidates[trial.user_attrs["point"]] for trial in study.best_trials]
    return sorted(chosen, key=lambda point: (point.costs[cost], -point.accuracy))


def plot(candidates: list[Point], cost: str, title: str):
    """Optuna's Pareto-front plot of the points, the baselines named beside theirs; None
    when fewer than two points have the cost."""
    study = as_study(candidates, cost)
    if len(study.trials) < 2:
        return None
    from optuna.visualization.matplotlib import plot_pareto_front

    with warnings.catch_warnings():  # Optuna's matplotlib plots are experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = plot_pareto_front(study, target_names=[COSTS[cost].title, "validation accuracy"])
    if COSTS[cost].log_scale:
        axes.set_xscale("log")
    for trial in study.trials:
        point = candidates[trial.user_attrs["point"]]
        if point.baseline or point.label == ENSEMBLE_LABEL:
            axes.annotate(point.label, (point.costs[cost], point.accuracy), textcoords="offset points",
                          xytext=(4, -10), fontsize=7)
    accuracies = sorted(point.accuracy for point in candidates)
    floor = accuracies[len(accuracies) // 4]  # the worst quarter (cut-short trials) below the view
    axes.set_ylim(max(0.0, floor - 0.003), min(1.0, accuracies[-1] + 0.002))
    axes.set_title(title, fontsize=9)
    axes.figure.set_size_inches(7, 4.5)
    return axes.figure


def table(candidates: list[Point], cost: str, link) -> list[str]:
    """The front's models as a Markdown table, cheapest first, each with every cost it has;
    ``link(run_id)`` makes a run's address."""
    chosen = front(candidates, cost)
    if not chosen:
        return [f"No model has {COSTS[cost].title} logged."]
    lines = ["| model | validation accuracy | " + " | ".join(c.title for c in COSTS.values()) + " | recipe |",
             "| --- | --- |" + " --- |" * len(COSTS) + " --- |"]
    for point in chosen:
        name = f"[{point.label}]({link(point.run_id)})" if point.run_id else point.label
        figures = " | ".join(COSTS[key].unit.format(point.costs[key]) if key in point.costs else "-" for key in COSTS)
        lines.append(f"| {name}{' (baseline)' if point.baseline else ''} | {point.accuracy:.4f} | {figures} | {point.recipe} |")
    return lines


def ensemble_point(result: records.LadderResult | None, runs: dict[str, object]) -> list[Point]:
    """The ladder's ensemble as a point of the top rung's fronts, where its run logged costs."""
    run = runs.get(result.ensemble.run_id) if result else None
    if run is None:
        return []
    metrics = run.data.metrics
    costs = {key: metrics[cost.metric] for key, cost in COSTS.items() if cost.metric in metrics}
    return [Point(ENSEMBLE_LABEL, result.ensemble.validation_accuracy, costs, run.info.run_id,
                  " + ".join(result.ensemble.members), baseline=False)]


def groups(study: optuna.Study, rungs: list[optuna.Study], client, experiment_id: str,
           parent_run_id: str) -> dict[str, list[Point]]:
    """The points of a sweep's fronts: its explored trials, and (once it has climbed) its top
    rung's models with the ensemble."""
    runs = runs_under(client, experiment_id, parent_run_id)
    found = {f"Explored at `{records.recorded_budget_name(study)}`": points(study.get_trials(deepcopy=False), runs)}
    if rungs:
        top = rungs[-1]
        found[f"Top rung at `{records.rung_budget_name(top.study_name)}`"] = (
            points(top.get_trials(deepcopy=False), runs) + ensemble_point(records.ladder_result(study), runs))
    return found


def summary(candidates: list[Point], link) -> list[str]:
    """Each front in one Markdown bullet, cheapest first, each model linked with its accuracy
    and that cost: the fronts where room is short (an MLflow Description)."""
    lines = []
    for key, cost in COSTS.items():
        chosen = front(candidates, key)
        if chosen:
            models = " · ".join(
                f"{f'[{point.label}]({link(point.run_id)})' if point.run_id else point.label}"
                f"{' (baseline)' if point.baseline else ''} {point.accuracy:.4f} at {cost.unit.format(point.costs[key])}"
                for point in chosen)
            lines.append(f"- against {cost.title}: {models}")
    return lines


def sections(groups: dict[str, list[Point]], link) -> list[str]:
    """The Markdown of every front: per group of points (explored, top rung), per cost."""
    lines = []
    for group, candidates in groups.items():
        if not candidates:
            continue
        for key, cost in COSTS.items():
            lines += [f"**{group}: validation accuracy against {cost.title}**", "", *table(candidates, key, link), ""]
    return lines


def figures(groups: dict[str, list[Point]]) -> dict[str, object]:
    """Each front's plot, by file name (front_<group>_<cost>.png)."""
    drawn = {}
    for group, candidates in groups.items():
        for key, cost in COSTS.items():
            figure = plot(candidates, key, f"{group}: validation accuracy against {cost.title}") if candidates else None
            if figure is not None:
                drawn[f"front_{slug(group)}_{key}.png"] = figure
    return drawn


def slug(text: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in text.lower()).split())
