"""The params dict: baselines are points of suggest(), and validate() accepts exactly those points."""

import json

import optuna
import pytest

import search_space
from harness.errors import ParamsError


@pytest.mark.parametrize("name", search_space.BASELINES)
def test_each_baseline_replays_through_suggest_unchanged(name):
    """What suggest() searches, plus the recipe's own epochs (not searched: they are the
    ladder's fidelity), gives back the seed's recipe."""
    params = search_space.baseline(name)
    replayed = search_space.suggest(optuna.trial.FixedTrial(params))
    assert "epochs" not in replayed
    assert search_space.with_recipe_keys(replayed, name) == params


def test_sampled_recipes_have_no_epochs_of_their_own_so_every_budget_trains_its_own():
    from harness.budgets import BUDGETS

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    params = search_space.suggest(study.ask())
    assert "epochs" not in params
    assert [BUDGETS[name].epochs_for(params) for name in ("quick", "long", "full")] == [4, 10, 30]
    assert BUDGETS["quick"].epochs_for(search_space.baseline("chollet_cnn")) == 4
    assert BUDGETS["full"].epochs_for(search_space.baseline("chollet_cnn")) == 5  # its seed's own


def test_seed_000s_annealer_can_act_before_early_stopping_at_every_budget():
    from harness.budgets import BUDGETS

    assert all(budget.plateau_patience < budget.patience or budget.patience == 1 for budget in BUDGETS.values())
    assert BUDGETS["full"].plateau_patience == 3  # the seed's own


@pytest.mark.parametrize("name", search_space.BASELINES)
def test_each_baseline_survives_a_json_round_trip_through_validate(name):
    params = search_space.baseline(name)
    assert search_space.validate(json.loads(json.dumps(params))) == params


def test_sampled_params_are_flat_json_and_valid():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(100):
        params = search_space.suggest(study.ask())
        assert all(isinstance(v, (str, int, float, bool)) for v in params.values())
        assert search_space.validate(json.loads(json.dumps(params))) == params


def test_conditional_keys_appear_only_where_they_apply():
    mlp, lenet = search_space.baseline("mlp_3x256"), search_space.baseline("lenet5")
    assert "momentum" in mlp and "epsilon" not in mlp and "conv_blocks" not in mlp
    assert "epsilon" in lenet and "momentum" not in lenet and "block3_filters" in lenet
    assert "block3_filters" not in search_space.baseline("kaggle_cnn")
    assert search_space.baseline("kaggle_cnn")["rotation"] == 10.0
    assert not search_space.baseline("chollet_cnn")["augment"] and "rotation" not in search_space.baseline("chollet_cnn")


def test_about_half_of_random_samples_train_without_augmentation():
    # Three ranges sampled from 0 alone would make an unaugmented recipe a point of measure zero.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    samples = [search_space.suggest(study.ask()) for _ in range(200)]
    plain = [p for p in samples if not p["augment"]]
    assert 70 <= len(plain) <= 130
    assert all("rotation" not in p and "zoom" not in p and "shift" not in p for p in plain)


def with_changes(name, **changes):
    return {**search_space.baseline(name), **changes}


BAD_PARAMS = {
    "unknown key": (with_changes("mlp_3x256", colour="red"), "unknown or inapplicable parameter(s) colour"),
    "inapplicable key": (with_changes("chollet_cnn", momentum=0.9), "unknown or inapplicable parameter(s) momentum"),
    "block beyond conv_blocks": (with_changes("gradio_cnn", block3_filters=8), "block3_filters"),
    "missing key": ({k: v for k, v in search_space.baseline("lenet5").items() if k != "activation"}, "missing parameter 'activation'"),
    "epochs not a whole number": (with_changes("lenet5", epochs=2.5), "epochs=2.5 should be a whole number from 1 to 1000"),
    "out of range": (with_changes("mlp_3x256", sgd_learning_rate=3.0), "sgd_learning_rate=3.0 is not in 0.001..0.3"),
    "adaptive rate out of its range": (with_changes("gradio_cnn", learning_rate=0.05), "learning_rate=0.05 is not in 0.0001..0.01"),
    "SGD's rate for Adam": (with_changes("gradio_cnn", sgd_learning_rate=0.05), "inapplicable parameter(s) sgd_learning_rate"),
    "augmentation range with augmentation off": (with_changes("chollet_cnn", rotation=5.0), "inapplicable parameter(s) rotation"),
    "off the grid": (with_changes("kaggle_cnn", zoom=0.105), "zoom=0.105 is not in 0.0..0.2 in steps of 0.01"),
    "not a choice": (with_changes("kaggle_cnn", batch_size=100), "batch_size=100 is not one of [32, 64, 86, 128, 256]"),
    "bool for an int": (with_changes("kaggle_cnn", conv_blocks=True), "conv_blocks=True should be an integer"),
    "string for a number": (with_changes("kaggle_cnn", learning_rate="1e-3"), "learning_rate='1e-3' should be a number"),
    "fraction for an int": (with_changes("kaggle_cnn", block1_filters=3.5), "block1_filters=3.5 should be an integer"),
    "class weight for digit 10": (with_changes("gradio_cnn", class_weights={"10": 2}), "class_weights key '10' is not a digit 0-9"),
    "not an object": ([1, 2, 3], "expected a JSON object"),
    "padding where valid cannot fit": (
        with_changes("chollet_cnn", block1_convs=3, block1_kernel=5, block2_convs=3, block2_kernel=5),
        "block2_padding does not apply"),
}


@pytest.mark.parametrize("case", BAD_PARAMS)
def test_validate_names_the_offending_key(case):
    params, message = BAD_PARAMS[case]
    with pytest.raises(ParamsError) as error:
        search_space.validate(params, "recipe.json")
    assert str(error.value).startswith("recipe.json: ") and message in str(error.value)


def test_validate_normalizes_json_numbers_and_keeps_class_weights():
    params = with_changes("gradio_cnn", weight_decay=0, class_weights={"9": 2})
    validated = search_space.validate(params)
    assert validated["weight_decay"] == 0.0 and isinstance(validated["weight_decay"], float)
    assert validated["class_weights"] == {"9": 2.0}


def test_unknown_baseline_lists_the_known_ones():
    with pytest.raises(ParamsError, match="unknown baseline 'resnet'; choose one of kaggle_cnn, mlp_3x256"):
        search_space.baseline("resnet")
