"""The ladder's last step, in a worker process of its own: the top rung's models averaged.

The top rung's models (the sweep's finalists and the baselines, all at one full budget) are
ranked by validation accuracy; the ensemble averages the probabilities of the best k, with k
chosen on the validation set alone (the smallest k that reaches the best accuracy). After
every choice is made, the test set is read once for the ensemble and once for the best single
model. Both are registered: the single model under the ``champion`` alias, the ensemble under
``ensemble``, so ``digits.predict`` and ``digits.serve`` load either like any model.
"""

from __future__ import annotations

import logging
import numpy as np

from harness import backend, data, run_logging, tracking
from harness.backend import keras
from sweeps.settings import ENSEMBLE_MEMBERS, EnsembleSettings

def accuracies_by_size(probabilities: list[np.ndarray], labels: np.ndarray) -> list[float]:
    """Validation accuracy of the average of the first k members' probabilities, for each k."""
    total = np.zeros_like(probabilities[0], dtype=np.float64)
    accuracies = []
    for k, member in enumerate(probabilities, 1):
        total += member
        accuracies.append(float(((total / k).argmax(axis=1) == labels).mean()))
    return accuracies


def chosen_size(accuracies: list[float]) -> int:
    """The smallest k with the best validation accuracy: a larger ensemble that reads the
    same on validation only costs more at prediction time."""
    return accuracies.index(max(accuracies)) + 1


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


def averaged(members: list[keras.Model]) -> keras.Model:
    """One model that takes uint8 digits and returns the members' mean probabilities."""
    inputs = keras.Input(shape=(28, 28, 1), dtype="uint8", name="digits")
    for index, member in enumerate(members):
        member.name = f"member_{index + 1}"  # a functional model needs its layers' names unique
    outputs = [member(inputs) for member in members]
    mean = keras.layers.Average(name="mean_probabilities")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs, mean, name="ensemble")


def main(settings: EnsembleSettings) -> None:
    """Rank the top rung, choose k, test once, log and register; the outcome goes to the
    exploring study's ``records.LadderResult``, which the parent reports."""
    import mlflow
    import optuna
    from optuna.trial import TrialState

    from harness import records
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
    finished = sorted((t for t in top.get_trials(deepcopy=False)
                       if t.state == TrialState.COMPLETE and records.MLFLOW_RUN_ID in t.user_attrs),
                      key=lambda t: t.value, reverse=True)[:ENSEMBLE_MEMBERS]
    if not finished:
        return
    members = [mlflow.keras.load_model(f"runs:/{t.user_attrs[records.MLFLOW_RUN_ID]}/model") for t in finished]
    x_val = split.x_val[..., None]
    probabilities = [member.predict(x_val, batch_size=1000, verbose=0) for member in members]
    accuracies = accuracies_by_size(probabilities, split.y_val)
    k = chosen_size(accuracies)
    ensemble = averaged(members[:k])
    labels = [records.label(t) for t in finished]

    # Every choice is made; the test set is read now, once for each registered model.
    best = finished[0]
    champion = evaluate_and_register(
        best.user_attrs[records.MLFLOW_RUN_ID], members[0], dataset, settings.model_name, tracking.CHAMPION_ALIAS,
        {records.SOURCE_STUDY_TAG: settings.exploring_study,
         records.SOURCE_TRIAL_TAG: str(best.user_attrs.get(records.SOURCE_TRIAL, "")),
         records.BUDGET_TAG: settings.budget.name, records.VALIDATION_ACCURACY_TAG: f"{best.value:.4f}"})
    tags = {**run_logging.run_tags(dataset, split, settings.budget, seed=0, baseline=None),
            records.PARENT_RUN_TAG: settings.parent_run_id, records.STUDY_TAG: settings.rung_study,
            records.FIDELITY: records.ENSEMBLE_FIDELITY, records.ENSEMBLE_MEMBERS_TAG: ", ".join(labels[:k]),
            records.SOURCE_NAME_TAG: "python -m sweeps.run", records.SOURCE_TYPE_TAG: "LOCAL"}
    rows = "\n".join(f"| {size} | {', '.join(labels[:size])} | {accuracy:.4f} |"
                     for size, accuracy in enumerate(accuracies, 1))
    note = (f"**Ensemble** of study `{settings.exploring_study}`: the mean probabilities of the top rung's best "
            f"{k} model(s) at budget `{settings.budget.name}`, k chosen on validation.\n\n"
            f"| k | members (best validation first) | validation accuracy |\n| --- | --- | --- |\n{rows}\n")
    with mlflow.start_run(run_name=f"ensemble of {k} @ {settings.budget.name}", tags={**tags, records.NOTE_TAG: note}) as run:
        mlflow.log_params({"k": k, "members": ", ".join(labels[:k]), "candidates": len(finished)})
        mlflow.log_metrics({"validation_accuracy": accuracies[k - 1],
                            **{f"validation_accuracy_k{size}": value for size, value in enumerate(accuracies, 1)}})
        run_logging.log_training_inputs(dataset, split)
        signature = mlflow.models.infer_signature(x_val[:5], probabilities[0][:5])
        packages = (*run_logging.BACKEND_PACKAGES[keras.backend.backend()], "keras", "numpy")
        mlflow.keras.log_model(ensemble, name="model", signature=signature,
                               pip_requirements=[f"{name}=={tracking.package_version(name)}" for name in packages])
    averaged_model = evaluate_and_register(
        run.info.run_id, ensemble, dataset, settings.model_name, tracking.ENSEMBLE_ALIAS,
        {records.SOURCE_STUDY_TAG: settings.exploring_study, records.MEMBERS_TAG: ", ".join(labels[:k]),
         records.BUDGET_TAG: settings.budget.name, records.VALIDATION_ACCURACY_TAG: f"{accuracies[k - 1]:.4f}"})
    lead = {"runner_up": labels[1], **paired_lead(probabilities[0], probabilities[1], split.y_val)} if len(finished) > 1 else {}
    records.record_ladder_result(exploring, records.LadderResult(
        top_rung=settings.rung_study, candidates=[t.number for t in finished],
        champion=records.Champion(label=labels[0], run_id=best.user_attrs[records.MLFLOW_RUN_ID],
                                  validation_accuracy=best.value, **champion, **lead),
        ensemble=records.Ensemble(members=labels[:k], run_id=run.info.run_id, validation_accuracy=accuracies[k - 1],
                                  validation_by_size=accuracies, **averaged_model)))
