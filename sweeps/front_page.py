"""The sweep's parent run as its front page in the MLflow UI: a leaderboard as the run's
Description (with links to the best runs and to all runs ranked), and Optuna's plots
(interactive HTML and PNG) as its artifacts.

Written at the end of every invocation, so a resumed sweep's page is current.
"""

from __future__ import annotations

import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

import search_space
from analysis import front
from harness import records, tracking
from sweeps import answer, study as sweep_study

LEADERS = 10
# The plots' known notes, each true of a drawing that is right as drawn (ignore_plot_warnings):
PLOT_WARNINGS = (
    # PED-ANOVA's caveat for each setting some of whose values only one trial tried, a line per
    # setting; a sweep's conditional space always has some. The plot's title says how it was made.
    "Some regimes for parameter",
    # PED-ANOVA's note when too few trials finished to rank settings (a short or resumed-early
    # sweep): the importances plot is left out or drawn even, as the leaderboard says.
    "The number of trials is too small to compute importances",
    # Matplotlib's note when an Optuna plot's axis spans one value (one rung, one trial).
    "Attempting to set identical low and high",
    # Matplotlib's note when a plot's labels leave its tight layout no room (a large study's
    # many trials): the PNG is cropped to what is drawn all the same.
    "Tight layout not applied",
    # PED-ANOVA's reminder, whenever it is given a target, that it ranks settings by what
    # reaches low values: importance_target negates accuracy for it.
    "PedAnovaImportanceEvaluator computes the importances of params to achieve low",
)
PLOTS_FOLDER = "sweep_plots"
# MLflow cuts a tag's value, the Description among them, at 8,000 characters (its
# MAX_TAG_VAL_LENGTH), logging a warning: the page is fitted to it here instead.
NOTE_LIMIT = 8000
LEFT_OUT = ("_Left out to fit MLflow's {limit:,}-character Description: {what}. "
            "`python -m analysis.compare` writes them all, linked._")


@dataclass(frozen=True, eq=False)
class Block:
    """A part of the Description: ``rank`` 0 is always kept; the highest ranks go first when
    the whole does not fit."""
    rank: int
    name: str  # what the line about left-out blocks calls it
    lines: list[str]


def fit(blocks: list[Block], limit: int) -> str:
    """The blocks in their order, less the least important ones (highest rank first, the later
    of equals first) until the text fits ``limit`` characters, with a line naming them."""
    kept = list(blocks)
    removable = sorted((b for b in blocks if b.rank > 0), key=lambda b: (b.rank, blocks.index(b)), reverse=True)
    left_out: list[Block] = []

    def text() -> str:
        lines = [line for block in kept for line in block.lines]
        if left_out:
            what = ", ".join(block.name for block in sorted(left_out, key=blocks.index))
            lines += ["", LEFT_OUT.format(limit=limit, what=what)]
        return "\n".join(lines) + "\n"

    while len(text()) > limit and removable:
        block = removable.pop(0)
        kept.remove(block)
        left_out.append(block)
    return text()[:limit]


def leaderboard(study: optuna.Study, tracking_uri: str, experiment_id: str, run_id: str,
                rungs: list[optuna.Study] = (), fronts: dict[str, list[front.Point]] | None = None) -> str:
    """The Description: the ladder's answer (top rung and ensemble), the accuracy-cost fronts
    of its last step (``fronts``' last group), each rung's models, the best explored trials,
    the baselines, the stop causes counted, and links; fitted to MLflow's limit (``fit``)."""
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=records.accuracy, reverse=True)

    def run_link(linked_run: str) -> str:
        return tracking.run_link(tracking_uri, experiment_id, linked_run)

    def linked(trial: optuna.trial.FrozenTrial) -> str:
        trial_run = trial.user_attrs.get(records.MLFLOW_RUN_ID)
        return f"[{records.label(trial)}]({run_link(trial_run)})" if trial_run else records.label(trial)

    plots = f"{run_link(run_id)}/artifacts/{PLOTS_FOLDER}"
    blocks = [Block(0, "title", [f"# Sweep `{study.study_name}`", ""])]
    result = records.ladder_result(study)
    if result:
        blocks.append(Block(0, "answer", [
            "**Answer (the top rung, every model at one full budget):**", "",
            *(f"- {line.strip()}" for line in answer.answer_lines(result)), "",
            f"The [ensemble]({run_link(result.ensemble.run_id)}) and the best single model are registered; each "
            "test figure was read once, after every choice.", "", *answer.candidate_table(result), "",
            *answer.rule_table(result.ensemble.rule_scores, result.ensemble.rule, result.ensemble.views)]))
    for place, rung in enumerate(reversed(list(rungs))):
        finished = sorted((t for t in rung.get_trials(deepcopy=False) if records.accuracy(t) is not None),
                          key=records.accuracy, reverse=True)
        if finished:
            blocks.append(Block(3 if place == 0 else 6, f"rung {records.rung_budget_name(rung.study_name)}'s table", [
                f"| rung `{records.rung_budget_name(rung.study_name)}` | validation accuracy | how it stopped | network and training |",
                "| --- | --- | --- | --- |",
                *(f"| {linked(t)} | {records.accuracy(t):.4f} | {records.stop_cause(t).value} | {search_space.describe(t.params)} |"
                  for t in finished), ""]))
    if rungs:
        blocks.append(Block(1, "exploration", [f"Exploration (budget `{records.recorded_budget_name(study)}`):", ""]))
    if complete:
        best = complete[0]
        blocks.append(Block(1, "the best trial", [
            f"**Best: {records.label(best)}, validation accuracy {records.accuracy(best):.4f}** "
            f"({search_space.describe(best.params)}). "
            f"[All runs ranked by validation accuracy]({tracking.ranked_link(tracking_uri, experiment_id)}); "
            f"the best retrained over seeds and registered: `python -m sweeps.reproduce --study "
            f"{study.study_name}` ([models]({tracking.ui_base(tracking_uri)}/#/models/{tracking.REGISTERED_MODEL})).", ""]))
        blocks.append(Block(5, f"the {LEADERS} best explored trials", [
            "| rank | trial | validation accuracy | network and training |", "| --- | --- | --- | --- |",
            *(f"| {rank} | {linked(t)} | {records.accuracy(t):.4f} | {search_space.describe(t.params)} |"
              for rank, t in enumerate(complete[:LEADERS], start=1)), ""]))
    else:
        blocks.append(Block(1, "the best trial", ["No trial has completed yet.", ""]))
    if fronts:
        group, candidates = list(fronts.items())[-1]
        blocks.append(Block(2, "the accuracy-cost fronts", [
            f"**Which model wins per size, per millisecond and per training second** ({group}; [plots]({plots}), "
            "baselines marked; each list holds the models no other beats on both, cheapest first):", "",
            *front.summary(candidates, run_link), ""]))
    baselines = {t.user_attrs[records.BASELINE]: t for t in trials if records.BASELINE in t.user_attrs}
    if baselines:
        rows = []
        for name in search_space.BASELINES:
            if (trial := baselines.get(name)) is not None:
                value = f"{records.accuracy(trial):.4f}" if records.accuracy(trial) is not None else "-"
                cause = records.stop_cause(trial)
                rows.append(f"| {linked(trial)} | {value} | {cause.value if cause else trial.state.name.lower()} |")
        blocks.append(Block(4, "the baselines' table", ["| baseline | validation accuracy | how it stopped |", "| --- | --- | --- |", *rows, ""]))
    causes = Counter(cause.value for t in trials if (cause := records.stop_cause(t)) is not None)
    blocks.append(Block(0, "stop causes", [
        "Trials by how they stopped: " + ", ".join(f"{cause} {count}" for cause, count in causes.most_common())
        + f". [Optuna's plots]({plots}/optuna_plots.html) (interactive; PNGs beside it in `{PLOTS_FOLDER}/`)."]))
    return fit(blocks, NOTE_LIMIT)


def ignore_plot_warnings() -> None:
    """Inside a ``warnings.catch_warnings()`` block: keep the plots' known notes (PLOT_WARNINGS)
    and Optuna's experimental-API notes for its matplotlib plots off the terminal."""
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    for message in PLOT_WARNINGS:
        warnings.filterwarnings("ignore", message, UserWarning)


def accuracy_target(study: optuna.Study) -> dict:
    """What Optuna's single-objective plots and importances need to draw a multi-objective
    study: its first value, validation accuracy, as their target. Empty for one objective."""
    if len(study.directions) == 1:
        return {}
    return {"target": records.accuracy, "target_name": "validation accuracy"}


def objective_names(study: optuna.Study) -> list[str]:
    names = records.recorded_fingerprint(study).get(records.OBJECTIVE_KEY, records.DEFAULT_OBJECTIVE)
    return [sweep_study.OBJECTIVES[name][0] for name in names]


def importance_target(study: optuna.Study) -> dict:
    """accuracy_target for the importances: PED-ANOVA ranks settings by what reaches *low*
    target values (a one-objective study's direction it reads itself), so a multi-objective
    study's accuracy goes in negated, the best models lowest."""
    if len(study.directions) == 1:
        return {}
    return {"target": lambda trial: -records.accuracy(trial), "target_name": "validation accuracy"}


def importance_evaluator():
    """PED-ANOVA: how much each setting separates the best tenth of the trials from the rest.
    That is the question a sweep asks ("what do the winners share?"), and unlike fANOVA it
    also weighs the settings only some networks have (a second block's filters); Optuna 5's
    default, named so the report means the same whichever Optuna reads it."""
    return optuna.importance.PedAnovaImportanceEvaluator()


def write(study: optuna.Study, client, run_id: str, tracking_uri: str, experiment_id: str,
          rungs: list[optuna.Study] = ()) -> None:
    """Set the parent run's Description and replace its plots."""
    fronts = front.groups(study, list(rungs), client, experiment_id, run_id)
    client.set_tag(run_id, records.NOTE_TAG, leaderboard(study, tracking_uri, experiment_id, run_id, rungs, fronts))
    with tempfile.TemporaryDirectory() as folder:
        if save_plots(study, Path(folder), fronts):
            client.log_artifacts(run_id, folder, PLOTS_FOLDER)


def save_plots(study: optuna.Study, folder: Path, fronts: dict[str, list[front.Point]] | None = None) -> bool:
    """Optuna's four plots of the study: one interactive HTML page (plotly.js embedded once, so it
    opens without a network) and a PNG each; and a PNG of each accuracy-cost front. False when
    no trial has completed."""
    if not study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna import visualization
    from optuna.visualization import matplotlib as static

    complete = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    # Parallel coordinates over the settings every completed trial has (the space is conditional).
    shared = [name for name in complete[0].params if all(name in t.params for t in complete)]
    sections = []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its plots log a warning per conditional parameter
    # Optuna's matplotlib style stays inside the context.
    with warnings.catch_warnings(), plt.style.context("default"):
        ignore_plot_warnings()
        evaluator = importance_evaluator()
        target = accuracy_target(study)
        plots = {
            "optimization_history": (visualization.plot_optimization_history, static.plot_optimization_history, target),
            "param_importances": (visualization.plot_param_importances, static.plot_param_importances,
                                  {"evaluator": evaluator, **importance_target(study)}),
            "parallel_coordinate": (visualization.plot_parallel_coordinate, static.plot_parallel_coordinate,
                                    {"params": shared, **target}),
            "intermediate_values": (visualization.plot_intermediate_values, static.plot_intermediate_values, {}),
        }
        if target:  # a multi-objective study: its own front, as its sampler saw it
            plots["pareto_front"] = (visualization.plot_pareto_front, static.plot_pareto_front,
                                     {"target_names": objective_names(study)})
        for name, (interactive, still, options) in plots.items():
            try:
                figure = interactive(study, **options)
                axes = still(study, **options)
            except Exception:  # e.g. importances of too few trials: the page goes without that plot
                continue
            sections.append(figure.to_html(full_html=False, include_plotlyjs=not sections))
            axes.figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(axes.figure)
        for name, figure in front.figures(fronts or {}).items():
            figure.savefig(folder / name, dpi=100, bbox_inches="tight")
            plt.close(figure)
    optuna.logging.set_verbosity(verbosity)
    (folder / "optuna_plots.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{study.study_name}: Optuna plots</title>"
        f"</head><body>{''.join(sections)}</body></html>\n")
    return True
