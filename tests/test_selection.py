"""How the ensemble step chooses its members and weights: the rules, and the random halves of
validation that choose between them. NumPy only: synthetic candidates whose quality is known."""

import numpy as np
import pytest

from harness.calibration import log_loss
from sweeps import selection


def noisy_models(labels: np.ndarray, signals: list[float], seed: int = 0) -> list[np.ndarray]:
    """One model per signal: softmax of the true digit's logit raised by the signal, plus
    independent noise, so each errs on images of its own."""
    rng = np.random.default_rng(seed)
    models = []
    for signal in signals:
        logits = rng.normal(0, 1, size=(len(labels), 10))
        logits[np.arange(len(labels)), labels] += signal
        models.append(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
    return models


def test_the_members_are_chosen_on_log_loss_where_accuracy_ties():
    labels = np.array([0, 1, 0, 1])
    # Each model gets three of the four images right, so all tie on accuracy; the confident
    # one has the lowest log-loss, and the one wrong elsewhere lowers it further, averaged in:
    # choices accuracy could not make.
    hesitant = np.array([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.55, 0.45]])
    confident = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.7, 0.3]])
    diverse = np.array([[0.4, 0.6], [0.2, 0.8], [0.8, 0.2], [0.2, 0.8]])
    probabilities = [hesitant, confident, diverse]
    assert len({selection.accuracy(p, labels) for p in probabilities}) == 1
    chosen, curve = selection.greedy_selection(probabilities, labels, rounds=6)
    assert chosen[0] == 1  # the lowest log-loss alone comes first, not the first listed
    weights = selection.weights_of(chosen)
    assert set(weights) == {1, 2} and sum(weights.values()) == pytest.approx(1)
    assert min(curve) < log_loss(confident, labels)
    assert log_loss(selection.weighted_average(probabilities, weights), labels) == pytest.approx(min(curve))


def test_selection_keeps_the_rounds_up_to_the_lowest_log_loss_and_caps_distinct_members():
    labels = np.array([0, 0])
    best = np.array([[0.9, 0.1], [0.9, 0.1]])
    worse = [np.array([[0.6 - i / 100, 0.4 + i / 100]] * 2) for i in range(4)]
    chosen, curve = selection.greedy_selection([best, *worse], labels, rounds=5)
    assert chosen == [0]  # nothing averaged in helps: the best alone, its weight 1
    assert curve[0] == min(curve) and selection.weights_of(chosen) == {0: 1.0}
    spread = [np.eye(5)[[i, i]] * 0.5 + 0.1 for i in range(5)]  # each sure of another class
    chosen, _ = selection.greedy_selection(spread, np.array([0, 1]), rounds=10, most_members=2)
    assert len(set(chosen)) <= 2


def test_bagged_selection_averages_the_greedy_choices_of_its_bags_the_same_on_every_call():
    labels = np.random.default_rng(3).integers(0, 10, size=600)
    candidates = noisy_models(labels, [2.5] * 10)
    weights = selection.bagged(candidates, labels)
    assert weights == selection.bagged(candidates, labels)
    assert sum(weights.values()) == pytest.approx(1) and set(weights) <= set(range(10))
    assert list(weights.values()) == sorted(weights.values(), reverse=True)
    # Each bag holds half the candidates, so no bag's choice can be everyone's: the weight spreads
    # over more models than greedy selection on all of them keeps.
    assert len(weights) > len(selection.greedy(candidates, labels))


def test_each_rule_is_chosen_on_one_half_and_scored_on_the_other_with_calibration_on_the_first_only():
    labels = np.random.default_rng(4).integers(0, 10, size=200)
    candidates = noisy_models(labels, [2.0, 2.5, 3.0])
    seen_by_calibration, seen_by_rules = [], []

    def calibrated_on(fit):
        seen_by_calibration.append(fit)
        return {"plain": candidates}

    def recording(chosen_on, chosen_labels):
        seen_by_rules.append(len(chosen_labels))
        return {0: 1.0}

    halves = selection.random_halves(len(labels), count=5)
    scored = selection.held_out(calibrated_on, labels, {"first": recording}, halves)
    assert list(scored) == [("plain", "first")] and len(scored["plain", "first"]) == 5
    assert seen_by_rules == [100] * 5
    for (fit, held), seen, (held_accuracy, held_loss, members) in zip(halves, seen_by_calibration, scored["plain", "first"]):
        assert seen is fit and not set(fit) & set(held) and len(fit) + len(held) == len(labels)
        assert held_accuracy == selection.accuracy(candidates[0][held], labels[held])
        assert held_loss == pytest.approx(log_loss(candidates[0][held], labels[held])) and members == 1
    assert [fit.tolist() for fit, _ in halves] == [fit.tolist() for fit, _ in selection.random_halves(len(labels), 5)]


def test_equally_good_independent_candidates_are_all_averaged():
    labels = np.random.default_rng(5).integers(0, 10, size=2000)
    candidates = noisy_models(labels, [2.5] * 16)
    scored = selection.held_out(lambda fit: {1: candidates}, labels, halves=selection.random_halves(len(labels), 10))
    assert selection.lowest_held_out_log_loss(scored) == (1, selection.AVERAGE)


def test_where_most_candidates_are_poor_the_rule_selects_instead_of_averaging_them_in():
    labels = np.random.default_rng(6).integers(0, 10, size=2000)
    candidates = noisy_models(labels, [4.0, 4.0, 4.0] + [0.5] * 13)
    scored = selection.held_out(lambda fit: {1: candidates}, labels, halves=selection.random_halves(len(labels), 10))
    view_count, rule = selection.lowest_held_out_log_loss(scored)
    assert rule in {selection.GREEDY, selection.BAGGED}
    assert set(selection.RULES[rule](candidates, labels)) >= {0, 1, 2}


def test_the_set_and_rule_with_the_lowest_mean_held_out_log_loss_win_and_a_tie_goes_to_the_first():
    scored = {(1, "a"): [(0.99, 0.03, 2), (0.99, 0.05, 2)], (5, "a"): [(0.99, 0.02, 3), (0.99, 0.07, 3)],
              (1, "b"): [(0.98, 0.035, 4), (0.98, 0.035, 4)]}
    assert selection.lowest_held_out_log_loss(scored) == (1, "b")
    assert selection.lowest_held_out_log_loss({(1, "a"): [(1, 0.1, 1)], (5, "a"): [(1, 0.1, 1)]}) == (1, "a")


def test_the_rules_tried_are_recorded_with_the_ladders_result_and_shown_with_the_chosen_one_marked():
    import optuna

    from harness import records
    from sweeps import answer

    scores = [records.RuleScore(rule=rule, views=views, held_out_accuracy=0.995, held_out_log_loss=loss,
                                held_out_members=members, validation_accuracy=0.996, validation_log_loss=loss - 0.002,
                                members=int(members))
              for (rule, views, loss, members) in [(selection.GREEDY, 1, 0.0172, 5.8), (selection.AVERAGE, 1, 0.0150, 16),
                                                   (selection.GREEDY, 5, 0.0170, 6.1), (selection.AVERAGE, 5, 0.0149, 16)]]
    averaged = records.Ensemble(run_id="r", validation_accuracy=0.996, test_accuracy=0.997, model="models:/m@ensemble",
                                version="2", members=["a", "b"], weights=[0.5, 0.5], views=5, rule=selection.AVERAGE,
                                rule_scores=scores)
    champion = records.Champion(run_id="c", validation_accuracy=0.995, test_accuracy=0.996,
                                model="models:/m@champion", version="1", label="a")
    study = optuna.create_study()
    records.record_ladder_result(study, records.LadderResult(top_rung="s@full", candidates=[0, 1],
                                                             champion=champion, ensemble=averaged))
    recorded = records.ladder_result(study).ensemble
    assert recorded == averaged
    table = answer.rule_table(recorded.rule_scores, recorded.rule, recorded.views)
    marked = [line for line in table if "(chosen)" in line]
    assert marked == [f"| {selection.AVERAGE} (chosen) | 5 | 0.9950 | 0.0149 | 16.0 | 0.9960 | 0.0129 | 16 |"]
    assert "the rule whose ensembles held up best on held-out halves" in answer.answer_lines(records.ladder_result(study))[0]
    assert answer.rule_table([], selection.GREEDY, 1) == []
