"""The benchmarks' own logic: the sweep-efficiency verdict (a ratio when both arms reached a
threshold, an upper bound when the no-pruning arm stopped first, and a target called met only
when the figures show it), the EMA arms, the ensemble selection rules compared, and the
spare-seed sets (models grouped by recipe in seed order, paired one recipe against two) and
that benchmark's tables on a synthetic store."""

import pytest

from benchmarks.sweep_efficiency import verdict

MINUTE = 60.0


@pytest.mark.parametrize(
    ("ours", "plain", "plain_span", "expected"),
    [
        (10 * MINUTE, 40 * MINUTE, 50 * MINUTE, "= **0.25**; target <= 1/3: met."),
        (10 * MINUTE, 20 * MINUTE, 50 * MINUTE, "= **0.50**; target <= 1/3: **not met**."),
        (25 * MINUTE, None, 80 * MINUTE, "< **0.31** (the no-pruning arm did not reach it in 80.0 min); target <= 1/3: met."),
        (25 * MINUTE, None, 45 * MINUTE, "< **0.56** (the no-pruning arm did not reach it in 45.0 min); "
                                         "target <= 1/3: undecided"),
        (None, 30 * MINUTE, 50 * MINUTE, ": no ratio (the default arm did not reach it)."),
    ],
)
def test_verdict_reports_a_ratio_or_a_bound_and_claims_only_what_it_shows(ours, plain, plain_span, expected):
    text = verdict(0.99, ours, plain, plain_span)
    assert text.startswith("To 99.0%: default / no pruning")
    assert expected in text


@pytest.mark.slow
def test_the_ema_benchmark_validates_both_arms_every_epoch(capsys):
    import json

    from benchmarks import recipe_levers

    assert recipe_levers.main(["--baseline", "gradio_cnn", "--budget", "smoke"]) == 0
    arms = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [arm["ema"] for arm in arms] == [False, True]
    for arm in arms:
        assert len(arm["val_accuracy"]) == 2  # smoke's 2 epochs, no early stopping
        assert 0 < arm["validation_log_loss"] < 3 and 0 <= arm["restored_validation_accuracy"] <= 1
    import train_trial

    assert train_trial.make_optimizer.__name__ == "make_optimizer"  # put back after the EMA arm


def test_every_selection_rule_returns_weights_of_real_candidates_that_sum_to_one():
    import numpy as np

    from benchmarks import selection_rules
    from sweeps import selection

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, size=400)
    candidates = []
    for noise in [0.5, 0.6, 0.7, 0.8, 3.0]:  # the last one mostly wrong
        logits = rng.normal(0, noise, size=(400, 10))
        logits[np.arange(400), labels] += 2.0 if noise < 1 else 0.0
        candidates.append(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
    for name, choose in selection_rules.RULES.items():
        weights = choose(candidates, labels)
        assert weights and set(weights) <= set(range(5)), name
        assert sum(weights.values()) == pytest.approx(1), name
    assert 4 not in selection_rules.best_k(candidates, labels)  # the poor model does not lower the mean's loss
    assert selection.average(candidates, labels) == {index: 0.2 for index in range(5)}


def test_best_k_adds_candidates_while_the_plain_average_improves():
    import numpy as np

    from benchmarks import selection_rules

    labels = np.array([0, 1, 0, 1])
    # Each alone is wrong on a different image; two averaged are right on all four.
    first = np.array([[0.4, 0.6], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    second = np.array([[0.9, 0.1], [0.6, 0.4], [0.9, 0.1], [0.1, 0.9]])
    useless = np.array([[0.1, 0.9], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1]])
    assert sorted(selection_rules.best_k_by_log_loss([first, useless, second], labels)) == [0, 2]


def test_spare_seed_sets_group_models_by_recipe_in_seed_order_and_pair_them():
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from benchmarks import spare_seeds
    from harness import records

    def model(filters: int, seed: int | None):
        attrs = {} if seed is None else {records.TRAINING_SEED: seed}
        return create_trial(params={"filters": filters}, distributions={"filters": CategoricalDistribution([16, 32, 64])},
                            value=0.99, user_attrs=attrs)

    trials = {"a2": model(16, 2), "b0": model(32, None), "a0": model(16, None), "a3": model(16, 3), "a1": model(16, 1),
              "b1": model(32, 1), "c0": model(64, None)}
    groups = spare_seeds.models_by_recipe(trials)
    assert groups == [["a0", "a1", "a2", "a3"], ["b0", "b1"], ["c0"]]
    # Only the recipe with four models leads a pair; the one-model recipe cannot give two.
    assert spare_seeds.seed_pairs(groups) == [(groups[0], groups[1])]
    assert spare_seeds.one_and_two_recipes(*spare_seeds.seed_pairs(groups)[0]) == {
        "one recipe": ["a0", "a1", "a2", "a3"], "two recipes": ["a0", "a1", "b0", "b1"]}


def test_the_spare_seed_benchmark_prints_a_row_per_pair_in_both_contexts(monkeypatch, capsys):
    """The whole benchmark past its "nothing to compare" exit, on a store of synthetic models:
    a recipe with four seeds, one with two, and a third model only in the step's pool."""
    import numpy as np
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from benchmarks import spare_seeds, store_pool
    from harness import records

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, size=600)

    def predictions(skill: float) -> np.ndarray:
        logits = rng.normal(0, 1, size=(600, 10))
        logits[np.arange(600), labels] += skill
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    def model(filters: int, rotation: float, seed: int):
        return create_trial(params={"filters": filters, "rotation": rotation},
                            distributions={"filters": CategoricalDistribution([16, 32, 64]),
                                           "rotation": CategoricalDistribution([0.0, 0.1])},
                            value=0.99, user_attrs={records.TRAINING_SEED: seed})

    trials = {f"a{seed}": model(16, 0.0, seed) for seed in range(4)}
    trials |= {f"b{seed}": model(32, 0.1, seed) for seed in range(2)} | {"c0": model(64, 0.0, 0)}
    store = store_pool.StoreModels(
        top_rung="sweep/full", other_rungs=[], model_labels={i: f"recipe {i[0]} seed {i[1]}" for i in trials},
        own_ids=list(trials), pooled_ids=list(trials), predicted={i: predictions(2.5) for i in trials},
        trials=trials, y_val=labels)
    monkeypatch.setattr(store_pool, "store_models", lambda *args: store)

    assert spare_seeds.main(["--study", "sweep"]) == 0
    out = capsys.readouterr().out
    assert "7 distinct models of 3 recipes; 1 pairs of recipes with 4 and 2 models" in out
    rows = [line for line in out.splitlines() if line.startswith("| recipe a | recipe b (augmented) |")]
    assert len(rows) == 2  # one pair, alone and inside the step's pool
    for row in rows:
        one, two = (cell.split(" / ") for cell in row.split(" | ")[2:4])
        assert all(0.5 < float(accuracy) <= 1 and 0 < float(loss) < 2 for accuracy, loss in (one, two))
    assert out.count("Two recipes against one, over the 1 pairs") == 2
