"""The sweep's fidelity ladder: which trials each rung carries up, and in what order.

Exploration (the budget a sweep starts at, e.g. quick: 45,000 images, 4 epochs) ranks many
recipes cheaply, with Hyperband pruning inside it. Each upper rung (``plan.upper_rungs``:
long, then full) retrains the best of the rung below at a higher fidelity, more images and
more epochs, successive-halving style: plan.PROMOTION_FACTOR times fewer each rung, down to
``--finalists`` at the top. The five baselines skip the middle rungs and train at the top,
so the top rung compares the sweep's finalists and every baseline at one budget.

Each upper rung is an Optuna study of its own (``records.rung_study_name``) holding one trial
per promoted recipe, enqueued with its params: the sweep's workers, storage, recovery and
retries serve it as they serve exploration. Nothing here loads TensorFlow.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness import records
from harness.budgets import Budget
from sweeps import plan


def source_number(trial: FrozenTrial) -> int:
    """The number of the exploring trial a trial carries up (its own, in the exploring study)."""
    return trial.user_attrs.get(records.SOURCE_TRIAL, trial.number)


def ranked(trials: list[FrozenTrial], front: frozenset[int] = frozenset()) -> list[FrozenTrial]:
    """Completed sampled recipes, best validation accuracy first, each recipe once (a retry
    repeats its trial's params). ``front``: the trial numbers of a multi-objective study's
    Pareto front, which rank before the rest (each part by accuracy): such a sweep promotes
    from its front."""
    seen, best = set(), []
    for trial in sorted((t for t in trials if t.state == TrialState.COMPLETE and records.BASELINE not in t.user_attrs),
                        key=lambda t: (t.number in front, records.accuracy(t)), reverse=True):
        key = json.dumps(trial.params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            best.append(trial)
    return best


# Architecture choices two recipes must share to count as the same kind of network at
# promotion (widths and rates vary within a kind).
ARCHITECTURE_KEYS = ("family", "conv_blocks", "downsample", "downsample_last_block", "batch_norm", "dense_layers",
                     *(f"block{block}_{key}" for block in range(1, 4) for key in ("convs", "kernel", "padding")))


def architecture(params: dict) -> tuple:
    return tuple(params.get(key) for key in ARCHITECTURE_KEYS)


def augmented(trial: FrozenTrial) -> bool:
    return any(trial.params.get(key) for key in ("rotation", "zoom", "shift"))


def best_augmented(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The augmented sampled recipe that reached the best validation accuracy in any epoch,
    completed or pruned: the pruner judges at the first epochs, before augmentation pays, and
    at `quick` it pruned every augmented recipe of the 2026-12-03 sweep. None when no
    augmented recipe trained an epoch."""
    def reached(trial: FrozenTrial) -> float:
        return max(trial.intermediate_values.values(), default=records.accuracy(trial) or 0.0)

    tried = [t for t in trials if augmented(t) and records.BASELINE not in t.user_attrs
             and t.state in (TrialState.COMPLETE, TrialState.PRUNED) and (t.intermediate_values or records.accuracy(t))]
    return max(tried, key=reached, default=None)


def finalists(ranked_trials: list[FrozenTrial], count: int,
              augmented_reserve: FrozenTrial | None = None) -> list[FrozenTrial]:
    """The ``count`` recipes a rung carries up, best first, from a ranking where a few epochs
    decide: distinct architectures first among the best ``2 * count`` (a near-copy of a
    better recipe adds little to the rung or its ensemble), then the rest by rank; and, when
    none of those is augmented, the best augmented recipe in the last place (the ranking's,
    else ``augmented_reserve``: one the pruner stopped), since augmentation pays only over
    the epochs the upper rungs have."""
    window = ranked_trials[:2 * count]
    seen, distinct = set(), []
    for trial in window:
        if architecture(trial.params) not in seen:
            seen.add(architecture(trial.params))
            distinct.append(trial)
    chosen = (distinct + [t for t in window if t not in distinct])[:count]
    if count >= 2 and not any(augmented(t) for t in chosen):
        reserve = next((t for t in ranked_trials if augmented(t)), augmented_reserve)
        if reserve is not None and len(chosen) == count:
            chosen[-1] = reserve
        elif reserve is not None:  # fewer recipes than places: one more
            chosen.append(reserve)
    return sorted(chosen, key=lambda t: ranked_trials.index(t) if t in ranked_trials else len(ranked_trials))


def promote(lower: optuna.Study, exploring: optuna.Study, rung: optuna.Study, rung_budget: Budget,
            count: int, top: bool, worker_seconds: float | None = None) -> list[str]:
    """Enqueue in ``rung`` the ``count`` finalists of ``lower`` (and, at the top rung, the
    baselines of ``exploring``, best explored first) that it does not hold yet; returns their
    labels in the order they will train. Rank decides what trains when the rung's time
    (``worker_seconds``: its wall-clock times its workers) cannot hold them all: the recipes
    it can hold, taken best first by their forecast price, go first, longest first so the
    workers end close together; the others follow in rank order, for whatever time is left.
    A rerun adds only what is missing."""
    held = {source_number(t) for t in rung.get_trials(deepcopy=False)}
    lower_trials = lower.get_trials(deepcopy=False)
    chosen = finalists(ranked(lower_trials, pareto_front(lower)), count, best_augmented(lower_trials))
    if top:
        baselines = [t for t in exploring.get_trials(deepcopy=False)
                     if records.BASELINE in t.user_attrs and records.RETRY_OF not in t.user_attrs]
        chosen += sorted(baselines, key=lambda t: records.accuracy(t) if records.accuracy(t) is not None else -1.0, reverse=True)
    chosen = [t for t in chosen if source_number(t) not in held]
    prices = [plan.price(t, rung_budget) for t in chosen]
    first, spent = [], 0.0
    for index, cost in enumerate(prices):
        if worker_seconds is None or spent + cost <= worker_seconds:
            first.append(index)
            spent += cost
    first.sort(key=lambda index: prices[index], reverse=True)
    order = [chosen[index] for index in first + [i for i in range(len(chosen)) if i not in first]]
    forecasts = dict(zip(map(source_number, chosen), prices))
    for trial in order:
        enqueue(rung, trial, rung_budget, forecasts[source_number(trial)])
    return [records.label(t) for t in order]


def enqueue(rung: optuna.Study, trial: FrozenTrial, rung_budget: Budget, forecast_seconds: float,
            seed: int | None = None) -> None:
    """Queue ``trial``'s recipe in ``rung``, tied to the exploring trial it carries up (with
    ``seed``: trained again with that seed)."""
    attributes = {records.SOURCE_TRIAL: source_number(trial), records.FIDELITY: rung_budget.name,
                  records.FORECAST_SECONDS: forecast_seconds}
    if records.BASELINE in trial.user_attrs:
        attributes[records.BASELINE] = trial.user_attrs[records.BASELINE]
    if seed is not None:
        attributes[records.TRAINING_SEED] = seed
    rung.enqueue_trial(trial.params, user_attrs=attributes)


# The top rung's spare time trains its best recipes again with other seeds, spread over this
# many of them (the best by calibrated validation log-loss): averaging seeds of a strong
# recipe is the cheapest accuracy left once the rung below is used up (Deotte's ensemble of
# 15 seeds of one augmented CNN tests 99.75 % against 99.65 % for one), and two recipes keep
# the ensemble from resting on one architecture. The next recipes' seeds only fill time in
# which none of the leaders' fits (sweep I idled both workers 21-25 minutes for want of it).
SEEDED_RECIPES = 2


def top_up(lower: optuna.Study, rung: optuna.Study, rung_budget: Budget, deadline: float | None,
           now: float, seed: int = 0, seeds: bool = True,
           store_trials: Callable[[], list[FrozenTrial]] = list) -> str | None:
    """When a worker of the top rung would idle with time left (its queue trained, some of it
    fast: a reused baseline, an early stop), queue what ``spare_choice`` takes for it, with the
    seed ``next_seed`` gives it (``store_trials``: the trials of the store's other top rungs set
    up as this one). Returns its label, or None when nothing fits, and always without a
    deadline: a rung without one loses no time. ``seeds`` False: no seeds (a multi-objective
    sweep, whose answer is a front, where another seed of a recipe adds no point)."""
    if deadline is None:
        return None
    trials = rung.get_trials(deepcopy=False)
    choice = spare_choice(ranked(lower.get_trials(deepcopy=False), pareto_front(lower)),
                          by_log_loss(trials) if seeds else [], trainings_of(trials), rung_budget, deadline, now)
    if choice is None:
        return None
    trial, forecast, again = choice
    new_seed = next_seed(trial, seed, trials, store_trials()) if again else None
    enqueue(rung, trial, rung_budget, forecast, seed=new_seed)
    return records.seeded(records.label(trial), new_seed)


def next_seed(recipe: FrozenTrial, first_seed: int, rung_trials: list[FrozenTrial],
              store_trials: list[FrozenTrial]) -> int:
    """The seed of ``recipe``'s next training in the top rung: the lowest above the sweep's
    ``first_seed`` that the rung has not asked for, skipping those another top rung of the
    store (``store_trials``) trained the recipe with until the time share cut it. Seeds count
    up so that a later sweep of the store asks for the same ones first and reuses their runs;
    but a cut run is not reused, and training its seed again under a time share buys a
    near-copy of a model the ensemble step already weighs, where the next seed buys a new one."""
    taken = {t.user_attrs[records.TRAINING_SEED] for t in rung_trials
             if source_number(t) == source_number(recipe) and records.TRAINING_SEED in t.user_attrs}
    taken |= {t.user_attrs[records.TRAINING_SEED] for t in store_trials
              if t.state == TrialState.COMPLETE and t.params == recipe.params and records.TRAINING_SEED in t.user_attrs
              and t.user_attrs.get(records.STOP_CAUSE) == records.StopCause.TIME_SHARE.value}
    seed = first_seed + 1
    while seed in taken:
        seed += 1
    return seed


def trainings_of(trials: list[FrozenTrial]) -> Counter:
    """How many times a rung has been asked to train each recipe (by source trial), retries not
    counted."""
    return Counter(source_number(t) for t in trials if records.RETRY_OF not in t.user_attrs)


def spare_choice(ranked_below: list[FrozenTrial], recipes: list[FrozenTrial], trainings: Counter,
                 rung_budget: Budget, deadline: float, now: float) -> tuple[FrozenTrial, float, bool] | None:
    """What a top-rung worker free at ``now`` takes: the best-ranked recipe of the rung below
    that the rung has not trained (``trainings``: the rung's trainings by source trial) whose
    forecast price fits before ``deadline``, one more finalist; once none is left that fits,
    another seed of one of the rung's ``recipes`` (``by_log_loss``' order; ``seed_recipes``
    picks the leaders among them, its augmented one among those whose seed fits) whose
    forecast, its first training's wall-clock there, fits: a leader's, the leader trained the
    fewest times first (the better on a tie), else the next sampled recipe's in that order, so
    a worker does not idle while a seed fits that the leaders' longer trainings do not (a
    baseline's seeds past the leaders only add copies of a comparison point).
    Returns the trial, its forecast and whether it trains again with another seed; or None.
    It starts once a fresh worker has (``plan.WORKER_START_SECONDS``), so it must fit from then."""
    now += plan.WORKER_START_SECONDS
    for trial in ranked_below:
        if trainings[source_number(trial)] == 0:
            forecast = plan.price(trial, rung_budget)
            if forecast > 0 and plan.fits(rung_budget, deadline, forecast, now):
                return trial, forecast, False

    def seed_price(recipe: FrozenTrial) -> float | None:
        """The forecast of another seed of ``recipe``, or None when it does not fit."""
        forecast = plan.retrain_price(recipe)
        return forecast if forecast > 0 and plan.fits(rung_budget, deadline, forecast, now) else None
    recipes = seed_recipes(recipes, lambda recipe: seed_price(recipe) is not None)
    leaders = sorted(recipes[:SEEDED_RECIPES], key=lambda t: trainings[source_number(t)])
    sampled = [t for t in recipes[SEEDED_RECIPES:] if records.BASELINE not in t.user_attrs]
    for recipe in leaders + sampled:
        if (forecast := seed_price(recipe)) is not None:
            return recipe, forecast, True
    return None


def spare_time(ranked_below: list[FrozenTrial], rung_trials: list[FrozenTrial], rung_budget: Budget,
               deadline: float | None, seeds: bool = True) -> Callable[[float], float | None] | None:
    """The top rung's spare time as its forecast sees it: for a worker free at a given time, the
    forecast price of what ``top_up`` would queue for it then (each call as though the ones
    before were queued), or None when it would queue nothing. ``ranked_below``: the rung
    below's ranking. Until its leaders have trained, the rung's first recipes in queue order
    stand in for them, at their forecasts: the rung will fill its time all the same. None
    without a deadline; ``seeds`` as top_up's."""
    if deadline is None:
        return None
    ranked_below = list(ranked_below)
    recipes = []
    if seeds:
        untrained = [t for t in sorted(rung_trials, key=lambda t: t.number) if records.TRAINING_SEED not in t.user_attrs
                     and t.state in (TrialState.WAITING, TrialState.RUNNING)]
        recipes = by_log_loss(rung_trials) + untrained
    trainings = trainings_of(rung_trials)

    def take(free_at: float) -> float | None:
        choice = spare_choice(ranked_below, recipes, trainings, rung_budget, deadline, free_at)
        if choice is None:
            return None
        trainings[source_number(choice[0])] += 1
        return choice[1]
    return take


def seed_recipes(recipes: list[FrozenTrial],
                 can_seed: Callable[[FrozenTrial], bool] = lambda recipe: True) -> list[FrozenTrial]:
    """The rung's ``recipes`` (``by_log_loss``' order) in the order their spare seeds go, the
    first SEEDED_RECIPES leading: that order, but when none of the leaders is augmented, the
    best augmented recipe that ``can_seed`` (whose seed fits the time left) moved up to the
    leaders' last place: validation comes from the training set's writers, where unaugmented
    recipes rank first, and on the test set's writers the augmented `kaggle_cnn` scores
    0.2-0.3 points above its validation figure, the sampled unaugmented leaders at or below
    theirs (RESULTS.md, sweeps A to D). A leader whose seed cannot fit would give the place
    to the other leader's seeds alone: in sweep J `kaggle_cnn` (40 minutes a training) held
    it, and all seven spare seeds went to one unaugmented recipe."""
    recipes = list(recipes)
    last_leader = SEEDED_RECIPES - 1
    if len(recipes) > last_leader >= 1 and not any(augmented(t) for t in recipes[:SEEDED_RECIPES]):
        if (best := next((t for t in recipes if augmented(t) and can_seed(t)), None)) is not None:
            recipes.remove(best)
            recipes.insert(last_leader, best)
    return recipes


def by_log_loss(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """A rung's recipes, each as first trained there (not its spare seeds): lowest validation
    log-loss at the model's own temperature first (accuracy on 6,000 images moves in steps of
    a few images; log-loss also weighs how sure a model is where it is right, which is what
    an average of seeds gains from), those without one after, by accuracy."""
    firsts = [t for t in trials if t.state == TrialState.COMPLETE and records.TRAINING_SEED not in t.user_attrs]
    firsts.sort(key=lambda t: (t.user_attrs.get(records.CALIBRATED_LOG_LOSS, float("inf")), -(records.accuracy(t) or 0.0)))
    seen, recipes = set(), []
    for trial in firsts:  # a recipe once, though a retry of it completed too
        if source_number(trial) not in seen:
            seen.add(source_number(trial))
            recipes.append(trial)
    return recipes


def pareto_front(study: optuna.Study) -> frozenset[int]:
    """The numbers of a multi-objective study's Pareto-optimal trials (Optuna's best_trials);
    empty for a single-objective study, whose ranking is by accuracy alone."""
    if len(study.directions) == 1:
        return frozenset()
    return frozenset(t.number for t in study.best_trials)


def requested_trials(rung: optuna.Study) -> int:
    """The trials a rung was asked to train: its enqueued recipes, retries not counted."""
    return sum(records.RETRY_OF not in t.user_attrs for t in rung.get_trials(deepcopy=False))


def finished_models(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """A rung's completed trials that hold a model, best validation accuracy first."""
    return sorted((t for t in trials if t.state == TrialState.COMPLETE and records.model_run_id(t)),
                  key=records.accuracy, reverse=True)


@dataclass(frozen=True)
class Candidate:
    """A model the ensemble step weighs: its label in tables and member lists, and its trial
    (of this sweep's top rung, or of another sweep's top rung set up the same)."""
    label: str
    trial: FrozenTrial


def ensemble_candidates(own: list[FrozenTrial], others: dict[str, list[FrozenTrial]],
                        at_most: int) -> list[Candidate]:
    """The best ``at_most`` distinct models, by validation accuracy, of this sweep's top rung
    (``own``) and the store's other top rungs set up the same (``others``, by study name):
    every one was trained on the same training images and scored on the same validation
    images, so what another sweep trained is a candidate at no cost. A model two top rungs
    share (a reused run) counts once, as this sweep's; on a tie, this sweep's model first."""
    seen, pool = set(), []
    for rung, trials in [(None, own), *others.items()]:
        for trial in finished_models(trials):
            if (model := records.model_run_id(trial)) not in seen:
                seen.add(model)
                label = records.label(trial) if rung is None else f"{records.exploring_study_name(rung)}: {records.label(trial)}"
                pool.append(Candidate(label, trial))
    return sorted(pool, key=lambda candidate: records.accuracy(candidate.trial), reverse=True)[:at_most]


def needs_ensemble(exploring: optuna.Study, top: optuna.Study, candidates_at_most: int) -> bool:
    """Whether the top rung holds finished models that the recorded ensemble did not weigh.
    (Models another sweep's top rung gains later do not reopen a finished ladder.)"""
    candidates = finished_models(top.get_trials(deepcopy=False))[:candidates_at_most]
    recorded = records.ladder_result(exploring)
    return bool(candidates) and (recorded is None or recorded.candidates != [t.number for t in candidates])


def most_accurate_within(trials: list[FrozenTrial], param_counts: dict[int, float],
                         params_at_most: int) -> FrozenTrial | None:
    """The completed trial with the best validation accuracy among those whose network has at
    most ``params_at_most`` parameters (``param_counts`` by trial number; a trial without one
    is not a candidate); the earliest on a tie; None when none fits."""
    fitting = [t for t in trials if t.state == TrialState.COMPLETE and records.accuracy(t) is not None
               and param_counts.get(t.number, float("inf")) <= params_at_most]
    return max(fitting, key=records.accuracy, default=None)
