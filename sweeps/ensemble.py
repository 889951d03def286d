"""The ladder's last step, in a worker process of its own: the top rung's models averaged.

The candidates are the best models, by validation accuracy, of the top rung (the sweep's
finalists, their seeds and the baselines, all at one full budget) and of the store's other
sweeps' top rungs set up the same (same data, split and budget): those were trained on the same
images, so each sweep in a store chooses from everything the store has trained
(``ladder.ensemble_candidates``; in sweep E this lowered the chosen ensemble's validation
log-loss: ``benchmarks.store_pool``, RESULTS.md). Each candidate's probabilities are first set
to the temperature that makes its own validation log-loss lowest (Guo et al., 2017: label
smoothing and dropout leave models under- or overconfident by different amounts, and selection
would otherwise weigh that, not what they get right). The members and their weights are chosen
on validation log-loss by one of ``selection.RULES`` (greedy forward selection with replacement,
its bagged version, or the plain average of every candidate), over the digit alone or averaged
over test-time views (the digit and its four 1-pixel shifts): the pair whose ensembles had the
lowest log-loss on validation images they were not chosen on (random halves; in sweep D the
views did not pay, ``benchmarks.view_averaging``). Log-loss, not accuracy: on 6,000 validation
images, accuracy moves in steps of a few images, within the split's noise, and choosing on it
made most ensembles one model. After every choice is made,
the test set is read once for the ensemble and once for the best single model (this sweep's top
rung's best validation accuracy). Both are registered: the single model under the ``champion``
alias, the ensemble under ``ensemble``, so ``digits.predict`` and ``digits.serve`` load either
like any model.
"""

from __future__ import annotations

import logging

import numpy as np

import train_trial
from harness import backend, data, run_logging, tracking
from harness.backend import keras
from harness.calibration import log_loss, temperature, tempered
from sweeps import selection
from sweeps.selection import accuracy, greedy_selection, weighted_average
from sweeps.settings import ENSEMBLE_CANDIDATES, EnsembleSettings


# (rows down, columns right) of each test-time view, black fill: the digit first. One pixel:
# two-pixel shifts and 10-degree turns lost most on validation (benchmarks.view_averaging).
SHIFTS = [(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)]


def shifted(images: np.ndarray, down: int, right: int) -> np.ndarray:
    """(n, 28, 28, 1) images moved by whole pixels with black fill: what ``shift_layers`` does."""
    moved = np.zeros_like(images)
    rows, columns = images.shape[1:3]
    moved[:, max(down, 0):rows + min(down, 0), max(right, 0):columns + min(right, 0)] = \
        images[:, max(-down, 0):rows + min(-down, 0), max(-right, 0):columns + min(-right, 0)]
    return moved


def shift_layers(inputs, down: int, right: int, name: str):
    """The same move as ``shifted`` in plain Keras layers (pad, then crop), so the saved
    ensemble loads in safe mode and carries its views to digits.predict and digits.serve."""
    padded = keras.layers.ZeroPadding2D(((max(down, 0), max(-down, 0)), (max(right, 0), max(-right, 0))),
                                        name=f"pad_{name}")(inputs)
    return keras.layers.Cropping2D(((max(-down, 0), max(down, 0)), (max(-right, 0), max(right, 0))),
                                   name=f"crop_{name}")(padded)


def view_probabilities(model: keras.Model, images: np.ndarray) -> list[np.ndarray]:
    """The model's probabilities on each of SHIFTS' views of the images, the digit first."""
    return [model.predict(shifted(images, down, right) if (down, right) != (0, 0) else images,
                          batch_size=1000, verbose=0) for down, right in SHIFTS]


def over_views(views: list[np.ndarray], temperature_: float) -> np.ndarray:
    """A candidate over its views as the averaged model computes it: each view at the
    candidate's temperature, then their mean."""
    return np.mean([tempered(view, temperature_) for view in views], axis=0)


def calibrate(probabilities: list[np.ndarray], labels: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    """Each candidate at its own temperature, and the temperatures."""
    temperatures = [temperature(p, labels) for p in probabilities]
    return [tempered(p, t) for p, t in zip(probabilities, temperatures)], temperatures


def calibrated_sets(probabilities: list[np.ndarray], views: list[list[np.ndarray]], labels: np.ndarray,
                    fit: np.ndarray | slice = slice(None)) -> tuple[list[float], dict[int, list[np.ndarray]]]:
    """Each candidate's temperature fitted on the ``fit`` images (by default all), and the
    candidates at it by view count: over the digit alone (1) and averaged over its views."""
    temperatures = [temperature(p[fit], labels[fit]) for p in probabilities]
    return temperatures, {1: [tempered(p, t) for p, t in zip(probabilities, temperatures)],
                          len(SHIFTS): [over_views(candidate_views, t) for candidate_views, t in zip(views, temperatures)]}


def chosen_on_halves(probabilities: list[np.ndarray], views: list[list[np.ndarray]], labels: np.ndarray,
                     calibrated_on_all: dict[int, list[np.ndarray]]):
    """Each selection rule, over the digit alone and over its views, tried on random halves of
    validation (every candidate calibrated on the half it is chosen on), and each also applied
    to all of it (``calibrated_on_all``, by view count). Returns the records.RuleScore of every
    pair, the view count and rule with the lowest held-out log-loss, and that rule's weights on
    all of validation."""
    from harness import records

    held = selection.held_out(lambda fit: calibrated_sets(probabilities, views, labels, fit)[1], labels)
    view_count, rule = selection.lowest_held_out_log_loss(held)
    rule_scores, chosen_weights = [], {}
    for (count, name), halves in held.items():
        weights = selection.RULES[name](calibrated_on_all[count], labels)
        mean = weighted_average(calibrated_on_all[count], weights)
        rule_scores.append(records.RuleScore(
            rule=name, views=count, held_out_accuracy=float(np.mean([score[0] for score in halves])),
            held_out_log_loss=float(np.mean([score[1] for score in halves])),
            held_out_members=float(np.mean([score[2] for score in halves])),
            validation_accuracy=accuracy(mean, labels), validation_log_loss=log_loss(mean, labels),
            members=len(weights)))
        if (count, name) == (view_count, rule):
            chosen_weights = weights
    return rule_scores, view_count, rule, chosen_weights


def paired_lead(leader: np.ndarray, runner_up: np.ndarray, labels: np.ndarray) -> dict:
    """How far the leader is ahead of the runner-up on the same validation images, and
    McNemar's exact two-sided p-value for it: only the images exactly one of them gets right
    count, which makes it a far sharper test than comparing two accuracies' error bars."""
    from math import comb

    leader_right = leader.argmax(axis=1) == labels
    runner_right = runner_up.argmax(axis=1) == labels
    only_leader = int((leader_right & ~runner_right).sum())
    only_runner = int((runner_right & ~leader_right).sum())
    discordant = only_leader + only_runner
    tail = sum(comb(discordant, i) for i in range(min(only_leader, only_runner) + 1)) / 2 ** discordant
    return {"only_leader": only_leader, "only_runner_up": only_runner, "p_value": min(1.0, 2 * tail)}


def averaged(members: list[keras.Model], weights: list[float], temperatures: list[float] | None = None,
             shifts: list[tuple[int, int]] | None = None) -> keras.Model:
    """One model that takes uint8 digits and returns the members' weighted mean probabilities,
    each member at its temperature and, with ``shifts``, averaged over those views of the digit
    (plain Keras layers, so it loads in safe mode like any model). Every network ends in
    Dense(10, softmax) (train_trial.build_model): a member at a temperature other than 1 is its
    layers but the last, then a copy of that Dense without its softmax, the logits divided by
    the temperature, and the softmax."""
    temperatures = temperatures or [1.0] * len(members)
    inputs = keras.Input(shape=(28, 28, 1), dtype="uint8", name="digits")
    views = [inputs if (down, right) == (0, 0) else shift_layers(inputs, down, right, f"view_{number}")
             for number, (down, right) in enumerate(shifts or [(0, 0)])]
    outputs = []
    for index, (member, temperature_) in enumerate(zip(members, temperatures), start=1):
        member.name = f"member_{index}"  # a functional model needs its layers' names unique
        if temperature_ == 1.0:
            per_view = [member(view) for view in views]
        else:
            last = member.layers[-1]
            trunk = keras.Sequential(member.layers[:-1], name=f"member_{index}")
            logits = keras.layers.Dense(last.units, name=f"logits_{index}")
            hidden = [trunk(view) for view in views]
            logits.build(hidden[0].shape)
            logits.set_weights(last.get_weights())
            scale = keras.layers.Rescaling(1.0 / temperature_, name=f"temperature_{index}")
            softmax = keras.layers.Activation("softmax", name=f"probabilities_{index}")
            per_view = [softmax(scale(logits(features))) for features in hidden]
        outputs.append(per_view[0] if len(per_view) == 1 else keras.layers.Average(name=f"views_{index}")(per_view))
    if len(members) == 1:
        return keras.Model(inputs, outputs[0], name="ensemble")
    weighted = [keras.layers.Rescaling(weight, name=f"weight_{index}")(output)
                for index, (output, weight) in enumerate(zip(outputs, weights), start=1)]
    return keras.Model(inputs, keras.layers.Add(name="mean_probabilities")(weighted), name="ensemble")


def main(settings: EnsembleSettings) -> None:
    """Choose the members on validation, test once, log and register; the outcome goes to the
    exploring study's ``records.LadderResult``, which the parent reports."""
    import mlflow
    import optuna

    from harness import records
    from sweeps import answer, ladder
    from sweeps import study as sweep_study
    from sweeps.reproduce import evaluate_and_register

    if settings.threads:
        backend.limit_threads(settings.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    dataset = data.load(settings.data_path)
    split = data.split(dataset, settings.split_seed, settings.budget.train_size)
    tracking.use_experiment(settings.experiment, settings.tracking_uri)
    storage = sweep_study.open_storage(settings.storage_url)
    exploring = optuna.load_study(study_name=settings.exploring_study, storage=storage)
    top = optuna.load_study(study_name=settings.rung_study, storage=storage)
    own = ladder.finished_models(top.get_trials(deepcopy=False))
    if not own:
        return
    others = sweep_study.other_top_rungs(storage, settings.rung_study)
    other_rungs = list(others)
    pool = ladder.ensemble_candidates(own, others, ENSEMBLE_CANDIDATES)
    x_val = split.x_val[..., None]
    loaded, predicted = {}, {}  # by model run id: a model two trials share is loaded and predicted once

    def model_of(trial) -> keras.Model:
        if (run_id := records.model_run_id(trial)) not in loaded:
            loaded[run_id] = mlflow.keras.load_model(f"runs:/{run_id}/model")
        return loaded[run_id]

    def probabilities_of(trial) -> np.ndarray:
        if (run_id := records.model_run_id(trial)) not in predicted:
            predicted[run_id] = model_of(trial).predict(x_val, batch_size=1000, verbose=0)
        return predicted[run_id]

    views = [view_probabilities(model_of(candidate.trial), x_val) for candidate in pool]
    for candidate, candidate_views in zip(pool, views):
        predicted[records.model_run_id(candidate.trial)] = candidate_views[0]
    probabilities = [candidate_views[0] for candidate_views in views]
    temperatures, calibrated_on_all = calibrated_sets(probabilities, views, split.y_val)
    calibrated, with_views = calibrated_on_all[1], calibrated_on_all[len(SHIFTS)]
    rule_scores, view_count, rule, weights = chosen_on_halves(probabilities, views, split.y_val, calibrated_on_all)
    use_views = view_count > 1
    mean = weighted_average(with_views if use_views else calibrated, weights)
    curve = greedy_selection(with_views if use_views else calibrated, split.y_val)[1] if rule == selection.GREEDY else []
    labels = [candidate.label for candidate in pool]
    scores = [records.CandidateScore(label=label, validation_accuracy=accuracy(p, split.y_val),
                                     validation_log_loss=log_loss(p, split.y_val), temperature=t,
                                     calibrated_log_loss=log_loss(c, split.y_val),
                                     views_log_loss=log_loss(v, split.y_val),
                                     model_run_id=records.model_run_id(candidate.trial))
              for candidate, label, p, c, t, v in zip(pool, labels, probabilities, calibrated, temperatures, with_views)]
    members = [labels[index] for index in weights]
    ensemble = averaged([model_of(pool[index].trial) for index in weights], list(weights.values()),
                        [temperatures[index] for index in weights], SHIFTS if use_views else None)
    described = ", ".join(f"{labels[index]} x{weight:.2f}" for index, weight in weights.items())
    ensemble_accuracy, ensemble_loss = accuracy(mean, split.y_val), log_loss(mean, split.y_val)
    held = {(score.views, score.rule): score.held_out_log_loss for score in rule_scores}
    views_said = (f"{'each member averaged over the digit and its 1-pixel shifts' if use_views else 'no test-time views'}"
                  f", as validation chose: held-out log-loss {held[(len(SHIFTS), rule)]:.4f} over the views, "
                  f"{held[(1, rule)]:.4f} without")
    without_views = next(score.validation_log_loss for score in rule_scores if (score.views, score.rule) == (1, rule))

    # Every choice is made; the test set is read now, once for each registered model. The best
    # single model is this sweep's own, as are its runner-up and the baseline it is held against.
    best = own[0]
    champion = evaluate_and_register(
        best.user_attrs[records.MLFLOW_RUN_ID], model_of(best), dataset, settings.model_name, tracking.CHAMPION_ALIAS,
        {records.SOURCE_STUDY_TAG: settings.exploring_study,
         records.SOURCE_TRIAL_TAG: str(best.user_attrs.get(records.SOURCE_TRIAL, "")),
         records.BUDGET_TAG: settings.budget.name, records.VALIDATION_ACCURACY_TAG: f"{records.accuracy(best):.4f}"},
        model_run_id=records.model_run_id(best))
    small = registered_small(top, settings, dataset, best, champion)
    tags = {**run_logging.run_tags(dataset, split, settings.budget, seed=0, baseline=None),
            records.PARENT_RUN_TAG: settings.parent_run_id, records.STUDY_TAG: settings.rung_study,
            records.FIDELITY: records.ENSEMBLE_FIDELITY, records.ENSEMBLE_MEMBERS_TAG: described,
            records.SOURCE_NAME_TAG: "python -m sweeps.run", records.SOURCE_TYPE_TAG: "LOCAL"}
    rows = "\n".join(f"| {score.label} | {score.validation_accuracy:.4f} | {score.validation_log_loss:.4f} | "
                     f"{score.temperature:.2f} | {score.calibrated_log_loss:.4f} | {score.views_log_loss:.4f} | "
                     f"{weights.get(index, 0):.2f} |"
                     for index, score in enumerate(scores))
    drawn_from = (f"the best {len(pool)} models of its top rung and of the store's other top rungs set up the same "
                  f"({', '.join(f'`{rung}`' for rung in other_rungs)})" if other_rungs else "its top rung's best models")
    kept = f"{int(np.argmin(curve)) + 1} of {len(curve)} rounds kept" if curve else f"{len(weights)} members"
    note = (f"**Ensemble** of study `{settings.exploring_study}`: the weighted mean probabilities of {drawn_from} "
            f"at budget `{settings.budget.name}`, each at its temperature; members and weights by {rule} ({kept}), "
            f"the rule with the lowest held-out validation log-loss: validation accuracy {ensemble_accuracy:.4f}, "
            f"log-loss {ensemble_loss:.4f}; {views_said}.\n\n"
            + "\n".join(answer.rule_table(rule_scores, rule, view_count)) + "\n"
            f"| candidate (best validation accuracy first) | validation accuracy | validation log-loss | temperature "
            f"| log-loss at it | over the views | weight |\n| --- | --- | --- | --- | --- | --- | --- |\n{rows}\n")
    with mlflow.start_run(run_name=f"ensemble of {len(members)} @ {settings.budget.name}",
                          tags={**tags, records.NOTE_TAG: note}) as run:
        mlflow.log_params({"members": described, "candidates": len(pool),
                           "selection": f"{rule} on validation log-loss, each candidate at its validation "
                                        f"temperature; the rule of {len(selection.RULES)} with the lowest held-out "
                                        f"log-loss on {selection.HALVES} random halves of validation",
                           "test_time_views": view_count})
        mlflow.log_metrics({"validation_accuracy": ensemble_accuracy, "validation_log_loss": ensemble_loss,
                            "param_count": ensemble.count_params(),
                            # what training its members cost, for the accuracy-cost fronts
                            "train_seconds": sum(trained_seconds(pool[index].trial) for index in weights),
                            **train_trial.prediction_latency(ensemble, split.x_val)})
        for step, loss in enumerate(curve, 1):
            mlflow.log_metric("selection_validation_log_loss", loss, step=step)
        run_logging.log_training_inputs(dataset, split)
        signature = mlflow.models.infer_signature(x_val[:5], probabilities[0][:5])
        packages = (*run_logging.BACKEND_PACKAGES[keras.backend.backend()], "keras", "numpy")
        mlflow.keras.log_model(ensemble, name="model", signature=signature,
                               pip_requirements=[f"{name}=={tracking.package_version(name)}" for name in packages])
    averaged_model = evaluate_and_register(
        run.info.run_id, ensemble, dataset, settings.model_name, tracking.ENSEMBLE_ALIAS,
        {records.SOURCE_STUDY_TAG: settings.exploring_study, records.MEMBERS_TAG: described,
         records.BUDGET_TAG: settings.budget.name, records.VALIDATION_ACCURACY_TAG: f"{ensemble_accuracy:.4f}"})
    lead = {"runner_up": records.label(own[1]), **paired_lead(probabilities_of(best), probabilities_of(own[1]), split.y_val)} \
        if len(own) > 1 else {}
    baseline = next((t for t in own if records.BASELINE in t.user_attrs), None)

    def versus_baseline(model_probabilities: np.ndarray, is_the_baseline: bool):
        if baseline is None or is_the_baseline:
            return None
        paired = paired_lead(model_probabilities, probabilities_of(baseline), split.y_val)
        return records.PairedLead(against=records.label(baseline),
                                  against_accuracy=accuracy(probabilities_of(baseline), split.y_val),
                                  only_this=paired["only_leader"], only_against=paired["only_runner_up"],
                                  p_value=paired["p_value"])

    only_member = [records.model_run_id(pool[index].trial) for index in weights]
    records.record_ladder_result(exploring, records.LadderResult(
        top_rung=settings.rung_study, candidates=[t.number for t in own[:ENSEMBLE_CANDIDATES]],
        other_top_rungs=other_rungs,
        champion=records.Champion(label=records.label(best), run_id=best.user_attrs[records.MLFLOW_RUN_ID],
                                  validation_accuracy=records.accuracy(best), **champion, **lead,
                                  versus_baseline=versus_baseline(probabilities_of(best), best is baseline)),
        ensemble=records.Ensemble(members=members, weights=list(weights.values()), run_id=run.info.run_id,
                                  validation_accuracy=ensemble_accuracy, validation_log_loss=ensemble_loss,
                                  selection_log_loss=curve, views=view_count, rule=rule, rule_scores=rule_scores,
                                  log_loss_without_views=without_views, **averaged_model,
                                  versus_baseline=versus_baseline(
                                      mean, baseline is not None and only_member == [records.model_run_id(baseline)])),
        scores=scores, small=small, small_params_at_most=settings.small_params))


def trained_seconds(trial) -> float:
    """The training seconds a top-rung trial's run logged (a reused one's are its source's)."""
    import mlflow

    from harness import records

    return mlflow.MlflowClient().get_run(trial.user_attrs[records.MLFLOW_RUN_ID]).data.metrics.get("train_seconds", 0.0)


def registered_small(top, settings: EnsembleSettings, dataset: data.Dataset, champion_trial, champion: dict):
    """@small: the top rung's most accurate model within ``settings.small_params`` parameters,
    chosen on validation, tested once (unless it is the champion, tested already) and
    registered. Returns its records.Small, or None when no model fits."""
    import mlflow
    from optuna.trial import TrialState

    from harness import records
    from sweeps import ladder
    from sweeps.reproduce import evaluate_and_register

    client = mlflow.MlflowClient()
    trials = [t for t in top.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and records.model_run_id(t)]
    counts = {t.number: client.get_run(t.user_attrs[records.MLFLOW_RUN_ID]).data.metrics.get("param_count", float("inf"))
              for t in trials}
    chosen = ladder.most_accurate_within(trials, counts, settings.small_params)
    if chosen is None:
        return None
    label = records.label(chosen)
    if chosen.number == champion_trial.number:
        client.set_registered_model_alias(settings.model_name, tracking.SMALL_ALIAS, champion["version"])
        registered = {**champion, "model": f"models:/{settings.model_name}@{tracking.SMALL_ALIAS}"}
    else:
        model = mlflow.keras.load_model(f"runs:/{records.model_run_id(chosen)}/model")
        registered = evaluate_and_register(
            chosen.user_attrs[records.MLFLOW_RUN_ID], model, dataset, settings.model_name, tracking.SMALL_ALIAS,
            {records.SOURCE_STUDY_TAG: settings.exploring_study,
             records.SOURCE_TRIAL_TAG: str(chosen.user_attrs.get(records.SOURCE_TRIAL, "")),
             records.BUDGET_TAG: settings.budget.name,
             records.VALIDATION_ACCURACY_TAG: f"{records.accuracy(chosen):.4f}"},
            model_run_id=records.model_run_id(chosen))
    return records.Small(label=label, run_id=chosen.user_attrs[records.MLFLOW_RUN_ID],
                         validation_accuracy=records.accuracy(chosen), param_count=int(counts[chosen.number]),
                         params_at_most=settings.small_params, **registered)
