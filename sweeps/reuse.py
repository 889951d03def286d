"""A sweep never trains the same thing twice: a trial whose training fingerprint (recipe,
budget, seed, data and split, training code; records.training_fingerprint) matches a
finished run of the same MLflow store takes that run's model and figures instead, and says
so: its run is tagged ``reused_from`` with the source run, and its Description links it."""

from __future__ import annotations

import train_trial
from harness import records
from harness.records import StopCause

# The validation log-loss figures (harness.calibration.scores), which runs older than them lack.
CALIBRATION_METRICS = ("validation_log_loss", "validation_temperature", "calibrated_validation_log_loss")
# The per-epoch curves and final figures a reused trial's run carries over (never a test figure).
CURVES = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate")
FIGURES = ("validation_accuracy", "best_epoch", "epochs_run", "train_seconds", "param_count",
           "forward_mmacs_per_image", "images_per_second", *train_trial.LATENCY_METRICS, *CALIBRATION_METRICS)


def find(client, fingerprint: str):
    """The first finished run of this store that trained ``fingerprint`` to completion (not
    cut by a time share, pruned, failed or itself reused), or None."""
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(experiments, max_results=50, order_by=["attributes.start_time ASC"], filter_string=(
        f"tags.{records.TRAINING_FINGERPRINT_TAG} = '{fingerprint}' and attributes.status = 'FINISHED'"))
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if (records.REUSED_FROM not in tags and records.FAILURE_REASON_TAG not in tags
                and tags.get(records.STOP_CAUSE, StopCause.COMPLETED.value) == StopCause.COMPLETED.value
                and "validation_accuracy" in metrics and "epochs_run" in metrics):
            return run
    return None


def record(trial, source, client, params: dict, fingerprint: str, images, labels,
           report: bool = True) -> dict[str, float]:
    """Log ``source``'s recipe, curves and figures into the active run as this trial's, report
    its epochs to the study (unless ``report`` is False: a multi-objective study takes no
    reports), and return the figures. A source run older than the latency or log-loss metrics
    has its model's measured here, on the validation ``images`` and ``labels``, as a trained
    trial's are."""
    import mlflow

    from harness import backend, calibration

    train_trial.log_recipe(params, fingerprint)
    for name in CURVES:
        for point in sorted(client.get_metric_history(source.info.run_id, name), key=lambda point: point.step):
            mlflow.log_metric(name, point.value, step=point.step)
            if name == "val_accuracy" and report:
                trial.report(point.value, step=point.step + 1)  # as ReportToPruner numbers epochs
    figures = {name: value for name, value in source.data.metrics.items() if name in FIGURES}
    latency_missing = not all(name in figures for name in train_trial.LATENCY_METRICS)
    if latency_missing or not all(name in figures for name in CALIBRATION_METRICS):
        model = mlflow.keras.load_model(f"runs:/{source.info.run_id}/model")
        if latency_missing:
            figures.update(train_trial.prediction_latency(model, images))
            mlflow.set_tag(records.PREDICT_THREADS_TAG, str(backend.threads_in_use()))
        figures.update(calibration.scores(train_trial.predict_probabilities(model, images), labels))
    if not latency_missing and records.PREDICT_THREADS_TAG in source.data.tags:
        mlflow.set_tag(records.PREDICT_THREADS_TAG, source.data.tags[records.PREDICT_THREADS_TAG])
    mlflow.log_metrics(figures)
    mlflow.set_tag(records.REUSED_FROM, source.info.run_id)
    trial.set_user_attr(records.REUSED_FROM, source.info.run_id)
    trial.set_user_attr(records.SECONDS_PER_EPOCH, figures.get("train_seconds", 0.0) / max(figures["epochs_run"], 1))
    return figures
