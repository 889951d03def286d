"""What is searched: ``suggest(trial)``, the five seed recipes as named points of it, and
``validate(params)``, which accepts exactly the dicts ``suggest`` can return.

A params dict is flat and JSON-serializable. Keys that only apply to one choice appear only
with it (``sgd_learning_rate`` and ``momentum`` only for SGD, ``learning_rate`` and
``epsilon`` only for the adaptive optimizers, ``rotation``/``zoom``/``shift`` only with
``augment``, ``block2_*`` only with two or more conv blocks,
``blockN_padding`` only where a "valid" block N would still leave a feature map).
"""

from __future__ import annotations

import copy
import math

import optuna

from harness.errors import ParamsError

# Bumped whenever suggest() changes what it can return; sweeps record it in their fingerprint.
SEARCH_SPACE_VERSION = 5  # 2: no padding choice where 'valid' leaves no feature map
# 3: per-block filter ranges; SGD's learning rate is its own parameter with its own range
# 4: augmentation is switched on or off first; its ranges apply only when it is on
# 5: no epochs: they are the fidelity, set by the ladder's rung (a baseline keeps its seed's)

# Filters per block: later blocks see smaller maps, so they may be wider for the same cost.
FILTER_RANGES = {1: (4, 64), 2: (8, 128), 3: (8, 128)}

MAX_CONV_BLOCKS = 3
IMAGE_SIDE = 28


def suggest(trial: optuna.trial.BaseTrial) -> dict:
    params = {"family": trial.suggest_categorical("family", ["cnn", "mlp"])}
    params["input_scaling"] = trial.suggest_categorical("input_scaling", ["unit", "standardize"])
    params["activation"] = trial.suggest_categorical("activation", ["relu", "tanh", "gelu"])

    if params["family"] == "cnn":
        blocks = params["conv_blocks"] = trial.suggest_int("conv_blocks", 1, MAX_CONV_BLOCKS)
        params["downsample"] = trial.suggest_categorical("downsample", ["max", "avg", "stride"])
        params["downsample_last_block"] = trial.suggest_categorical("downsample_last_block", [True, False])
        side = IMAGE_SIDE
        for block in range(1, blocks + 1):
            convs = params[f"block{block}_convs"] = trial.suggest_int(f"block{block}_convs", 1, 3)
            params[f"block{block}_filters"] = trial.suggest_int(f"block{block}_filters", *FILTER_RANGES[block], log=True)
            kernel = params[f"block{block}_kernel"] = trial.suggest_categorical(f"block{block}_kernel", [3, 5])
            downsamples = [block_downsample(params, later) for later in range(block, blocks + 1)]
            # "valid" is offered only where it leaves a feature map through the blocks after it
            # (valid 5x5 convolutions would shrink 28x28 to nothing); elsewhere the block pads
            # "same", which only the downsampling shrinks.
            padding = "same"
            after_valid = feature_map_side(side, convs, kernel, "valid", downsamples[0])
            for later in downsamples[1:]:
                after_valid = feature_map_side(after_valid, 1, 1, "same", later)
            if after_valid >= 1:
                padding = params[f"block{block}_padding"] = trial.suggest_categorical(
                    f"block{block}_padding", ["same", "valid"])
            side = feature_map_side(side, convs, kernel, padding, downsamples[0])
        params["batch_norm"] = trial.suggest_categorical("batch_norm", [False, True])
        params["block_dropout"] = trial.suggest_float("block_dropout", 0.0, 0.5, step=0.05)

    params["dense_layers"] = trial.suggest_int("dense_layers", 1, 3)
    params["dense_units"] = trial.suggest_int("dense_units", 16, 512, log=True)
    params["head_dropout"] = trial.suggest_float("head_dropout", 0.0, 0.5, step=0.05)

    params["optimizer"] = trial.suggest_categorical("optimizer", ["sgd", "rmsprop", "adam", "adamw"])
    # Separate parameters, not one shared range: plain SGD wants rates 10-100x those of the
    # adaptive optimizers, and TPE models a parameter's range as one density.
    if params["optimizer"] == "sgd":
        params["sgd_learning_rate"] = trial.suggest_float("sgd_learning_rate", 1e-3, 0.3, log=True)
        params["momentum"] = trial.suggest_float("momentum", 0.0, 0.99)
    else:
        params["learning_rate"] = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        params["epsilon"] = trial.suggest_categorical("epsilon", [1e-8, 1e-7])
    params["weight_decay"] = trial.suggest_categorical("weight_decay", [0.0, 1e-5, 1e-4, 1e-3])
    params["lr_schedule"] = trial.suggest_categorical(
        "lr_schedule", ["constant", "plateau", "step", "cosine", "one_cycle"])

    # On or off first, then the ranges: with three ranges sampled from 0 up, an unaugmented
    # recipe would be a point of measure zero (one sample in 35 had none in the third quick
    # sweep), while augmentation halves a small network's throughput on a CPU.
    params["augment"] = trial.suggest_categorical("augment", [False, True])
    if params["augment"]:
        params["rotation"] = trial.suggest_float("rotation", 0.0, 20.0, step=1.0)  # degrees
        params["zoom"] = trial.suggest_float("zoom", 0.0, 0.2, step=0.01)
        params["shift"] = trial.suggest_float("shift", 0.0, 0.2, step=0.01)  # width and height

    params["batch_size"] = trial.suggest_categorical("batch_size", [32, 64, 86, 128, 256])
    # No epochs: they are a fidelity, which the sweep's ladder raises rung by rung (a budget's
    # max_epochs), and an epoch count sampled at 4-epoch exploration could never act there.
    params["label_smoothing"] = trial.suggest_float("label_smoothing", 0.0, 0.2, step=0.05)
    return params


def describe(params: dict) -> str:
    """A one-line recipe: enough to tell trials apart in a table or a run's name."""
    if params["family"] == "mlp":
        body = f"MLP {params['dense_layers']}x{params['dense_units']}"
    else:
        blocks = "-".join(f"{params[f'block{b}_convs']}x{params[f'block{b}_filters']}"
                          for b in range(1, params["conv_blocks"] + 1))
        body = f"CNN {blocks} {params['downsample']}{' BN' if params['batch_norm'] else ''}"
    augmented = any(params.get(k) for k in ("rotation", "zoom", "shift"))
    return (f"{body}, {params['activation']}, {params['optimizer']} {learning_rate(params):.2g} "
            f"{params['lr_schedule']}, batch {params['batch_size']}{', augmented' if augmented else ''}")


def learning_rate(params: dict) -> float:
    """The initial learning rate, whichever optimizer's parameter holds it (before search
    space 3, SGD's was ``learning_rate`` too)."""
    return params["sgd_learning_rate"] if "sgd_learning_rate" in params else params["learning_rate"]


# --- The architecture's shape rules: train_trial.build_model builds by these, and suggest()
# offers a "valid" block only where they leave it a feature map.

def block_downsample(params: dict, block: int) -> str | None:
    """How conv block ``block`` (from 1) shrinks its map: "max" or "avg" pooling after it,
    "stride" (its last conv strides 2), or None (the last block, when it does not)."""
    return params["downsample"] if block < params["conv_blocks"] or params["downsample_last_block"] else None


def block_padding(params: dict, block: int) -> str:
    """A block's padding: "same" unless "valid" was chosen where the space offers it."""
    return params.get(f"block{block}_padding", "same")


def conv_stride(downsample: str | None, conv: int, convs: int) -> int:
    """The stride of a block's ``conv``-th of ``convs`` convolutions."""
    return 2 if downsample == "stride" and conv == convs else 1


def feature_map_side(side: int, convs: int, kernel: int, padding: str, downsample: str | None) -> int:
    """Side of a conv block's output map as Keras computes it (0: the block does not fit).
    ``downsample`` is block_downsample's."""
    for conv in range(1, convs + 1):
        stride = conv_stride(downsample, conv, convs)
        if padding == "same":
            side = math.ceil(side / stride)
        elif side < kernel:
            return 0
        else:
            side = (side - kernel) // stride + 1
    return side // 2 if downsample in ("max", "avg") else side


# The five seed recipes, each checkable line by line against its source in shared/seeds/.
# Values a seed leaves to Keras are Keras 3's defaults, written out (RMSprop's and Adam's
# epsilon 1e-7, learning rate 1e-3).
_NO_AUGMENTATION = {"augment": False}
_PLAIN_TRAINING = {"weight_decay": 0.0, "label_smoothing": 0.0}

BASELINES: dict[str, dict] = {
    # 000: In -> [[Conv2D->relu]*2 -> MaxPool2D -> Dropout]*2 -> Flatten -> Dense -> Dropout -> Out
    "kaggle_cnn": {
        "family": "cnn", "input_scaling": "unit", "activation": "relu",
        "conv_blocks": 2,
        "block1_convs": 2, "block1_filters": 32, "block1_kernel": 5, "block1_padding": "same",
        "block2_convs": 2, "block2_filters": 64, "block2_kernel": 3, "block2_padding": "same",
        "downsample": "max", "downsample_last_block": True, "batch_norm": False, "block_dropout": 0.25,
        "dense_layers": 1, "dense_units": 256, "head_dropout": 0.5,
        # RMSprop(lr=0.001, rho=0.9, epsilon=1e-08); rho 0.9 is also Keras' default.
        "optimizer": "rmsprop", "learning_rate": 1e-3, "epsilon": 1e-8,
        "lr_schedule": "plateau",  # ReduceLROnPlateau(val acc, patience 3, factor .5, min_lr 1e-5)
        "augment": True, "rotation": 10.0, "zoom": 0.1, "shift": 0.1,  # ImageDataGenerator, no flips
        "batch_size": 86, "epochs": 30, **_PLAIN_TRAINING,
    },
    # 001: 784 -> Dense(256, relu) x3 -> Dense(10, softmax); SGD(lr=0.05); batch 256; x / 255.
    "mlp_3x256": {
        "family": "mlp", "input_scaling": "unit", "activation": "relu",
        "dense_layers": 3, "dense_units": 256, "head_dropout": 0.0,
        "optimizer": "sgd", "sgd_learning_rate": 0.05, "momentum": 0.0,
        "lr_schedule": "constant", **_NO_AUGMENTATION,
        # The seed's epochs=5000 is a typo-scale number. 30 is the most the full budget allows;
        # measured here, plain SGD is then at 97.5% validation accuracy and still creeping up
        # by about 0.05 points an epoch (RESULTS.md), so more epochs would buy little.
        "batch_size": 256, "epochs": 30, **_PLAIN_TRAINING,
    },
    # 002: Conv(32,3x3) -> MaxPool -> Conv(64,3x3) -> MaxPool -> Conv(64,3x3) -> Flatten
    #      -> Dense(64) -> Dense(10); 'rmsprop'; batch 64; 5 epochs.
    "chollet_cnn": {
        "family": "cnn", "input_scaling": "unit", "activation": "relu",
        "conv_blocks": 3,
        "block1_convs": 1, "block1_filters": 32, "block1_kernel": 3, "block1_padding": "valid",
        "block2_convs": 1, "block2_filters": 64, "block2_kernel": 3, "block2_padding": "valid",
        "block3_convs": 1, "block3_filters": 64, "block3_kernel": 3, "block3_padding": "valid",
        "downsample": "max", "downsample_last_block": False, "batch_norm": False, "block_dropout": 0.0,
        "dense_layers": 1, "dense_units": 64, "head_dropout": 0.0,
        "optimizer": "rmsprop", "learning_rate": 1e-3, "epsilon": 1e-7,
        "lr_schedule": "constant", **_NO_AUGMENTATION,
        "batch_size": 64, "epochs": 5, **_PLAIN_TRAINING,
    },
    # 003: Conv(32,3x3) -> MaxPool -> Conv(64,3x3) -> MaxPool -> Flatten -> Dense(64) -> Dense(10);
    #      'adam'; batch 64; 5 epochs. The listing is cut off after the first conv; the text
    #      describes a second conv + pool pair, and 64 filters is our reading.
    #      Its "optimised" variant adds augmentation and class_weights {"9": 2.0}; train_trial
    #      accepts that key, but it is not searched.
    "gradio_cnn": {
        "family": "cnn", "input_scaling": "unit", "activation": "relu",
        "conv_blocks": 2,
        "block1_convs": 1, "block1_filters": 32, "block1_kernel": 3, "block1_padding": "valid",
        "block2_convs": 1, "block2_filters": 64, "block2_kernel": 3, "block2_padding": "valid",
        "downsample": "max", "downsample_last_block": True, "batch_norm": False, "block_dropout": 0.0,
        "dense_layers": 1, "dense_units": 64, "head_dropout": 0.0,
        "optimizer": "adam", "learning_rate": 1e-3, "epsilon": 1e-7,
        "lr_schedule": "constant", **_NO_AUGMENTATION,
        "batch_size": 64, "epochs": 5, **_PLAIN_TRAINING,
    },
    # 004: (x - mean) / std; C1 Conv(6,5x5,same,tanh) -> S2 AvgPool -> C3 Conv(16,5x5,valid,tanh)
    #      -> S4 AvgPool -> C5 Conv(120,5x5,valid,tanh) -> Flatten -> F6 Dense(84,tanh) -> Dense(10);
    #      Adam with the paper's step schedule 5e-4, 2e-4, 5e-5, 1e-5; batch 32; 20 epochs;
    #      the best validation weights are kept (train_trial always restores them).
    "lenet5": {
        "family": "cnn", "input_scaling": "standardize", "activation": "tanh",
        "conv_blocks": 3,
        "block1_convs": 1, "block1_filters": 6, "block1_kernel": 5, "block1_padding": "same",
        "block2_convs": 1, "block2_filters": 16, "block2_kernel": 5, "block2_padding": "valid",
        "block3_convs": 1, "block3_filters": 120, "block3_kernel": 5, "block3_padding": "valid",
        "downsample": "avg", "downsample_last_block": False, "batch_norm": False, "block_dropout": 0.0,
        "dense_layers": 1, "dense_units": 84, "head_dropout": 0.0,
        "optimizer": "adam", "learning_rate": 5e-4, "epsilon": 1e-7,
        "lr_schedule": "step", **_NO_AUGMENTATION,
        "batch_size": 32, "epochs": 20, **_PLAIN_TRAINING,
    },
}

# What each seed reports, for the comparison report (accuracy as a fraction).
DOCUMENTED_ACCURACY = {
    "kaggle_cnn": "0.99286 validation (code comment); 0.99671 Kaggle leaderboard, 42k training images",
    "mlp_3x256": "not stated",
    "chollet_cnn": "about 0.992 test",
    "gradio_cnn": "0.9827 validation after the first epoch",
    "lenet5": "0.9905 test (0.95% error, LeNet-5 paper)",
}

# Keys train_trial understands that the sweep does not search: class_weights {"9": 2.0} is
# seed 003's "optimised" variant; epochs is a seed's own count (a budget caps it; without it a
# recipe trains the budget's epochs).
OPTIONAL_KEYS = {"class_weights", "epochs"}
MAX_EPOCHS = 1000


def baseline(name: str) -> dict:
    if name not in BASELINES:
        raise ParamsError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return copy.deepcopy(BASELINES[name])


def with_recipe_keys(params: dict, baseline_name: str | None) -> dict:
    """A sampled trial's params, plus the keys its baseline's recipe has beyond what is
    searched (its seed's epochs); unchanged for a sampled recipe."""
    if baseline_name is None:
        return params
    extras = {k: v for k, v in baseline(baseline_name).items() if k in OPTIONAL_KEYS}
    return {**params, **extras}


def validate(params: dict, source: str = "params") -> dict:
    """Return a normalized copy of ``params`` if ``suggest`` could have produced it (plus
    optional keys), else raise ParamsError naming the first offending key."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a JSON object of parameters, got {type(params).__name__}")
    searched = {k: v for k, v in params.items() if k not in OPTIONAL_KEYS}
    replayed = suggest(_StrictReplay(searched, source))
    unknown = sorted(set(searched) - set(replayed))
    padding = [k for k in unknown if k.endswith("_padding") and k.replace("_padding", "_convs") in replayed]
    if padding:
        raise ParamsError(f"{source}: {padding[0]} does not apply: a 'valid' block there would "
                          "leave no feature map, so that block always pads 'same'")
    if unknown:
        raise ParamsError(f"{source}: unknown or inapplicable parameter(s) {', '.join(unknown)}")
    if "class_weights" in params:
        replayed["class_weights"] = _validated_class_weights(params["class_weights"], source)
    if "epochs" in params:
        epochs = params["epochs"]
        if not _is_number(epochs) or epochs != int(epochs) or not 1 <= epochs <= MAX_EPOCHS:
            raise ParamsError(f"{source}: epochs={epochs!r} should be a whole number from 1 to {MAX_EPOCHS}")
        replayed["epochs"] = int(epochs)
    return replayed


class _StrictReplay(optuna.trial.FixedTrial):
    """A FixedTrial that refuses missing, mistyped and out-of-range values (FixedTrial itself
    only warns) and returns them in the distribution's own type (JSON's 0 becomes 0.0).
    Range and step are checked by Optuna itself: ``create_trial`` refuses a value its
    distribution does not contain."""

    def __init__(self, params: dict, source: str):
        super().__init__(params)
        self._replayed_params = params
        self._replay_source = source

    def suggest_float(self, name, low, high, *, step=None, log=False):
        value = self._replayed_number(name, is_int=False)
        self._refuse_uncontained(name, value, optuna.distributions.FloatDistribution(low, high, step=step, log=log))
        return value

    def suggest_int(self, name, low, high, *, step=1, log=False):
        value = self._replayed_number(name, is_int=True)
        self._refuse_uncontained(name, value, optuna.distributions.IntDistribution(low, high, step=step, log=log))
        return value

    def suggest_categorical(self, name, choices):
        value = self._replayed_value(name)
        matches = [c for c in choices if _same_value(value, c)]
        if not matches:
            raise ParamsError(f"{self._replay_source}: {name}={value!r} is not one of {list(choices)}")
        return matches[0]

    def _replayed_value(self, name):
        if name not in self._replayed_params:
            raise ParamsError(f"{self._replay_source}: missing parameter {name!r}")
        return self._replayed_params[name]

    def _replayed_number(self, name, is_int: bool):
        value = self._replayed_value(name)
        if not _is_number(value) or (is_int and value != int(value)):
            raise ParamsError(f"{self._replay_source}: {name}={value!r} should be {'an integer' if is_int else 'a number'}")
        return int(value) if is_int else float(value)

    def _refuse_uncontained(self, name, value, distribution) -> None:
        try:
            optuna.trial.create_trial(params={name: value}, distributions={name: distribution}, value=0.0)
        except ValueError:
            step = f" in steps of {distribution.step}" if distribution.step not in (None, 1) else ""
            raise ParamsError(f"{self._replay_source}: {name}={value!r} is not in "
                              f"{distribution.low}..{distribution.high}{step}") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _same_value(value, choice) -> bool:
    # Categorical matching by == alone would take True for 1 and 1 for True.
    if isinstance(choice, bool) or isinstance(value, bool):
        return value is choice
    if isinstance(choice, (int, float)):
        return _is_number(value) and value == choice
    return value == choice


def _validated_class_weights(weights, source: str) -> dict:
    if not isinstance(weights, dict) or not weights:
        raise ParamsError(f"{source}: class_weights should be an object like {{\"9\": 2.0}}")
    for digit, weight in weights.items():
        if digit not in [str(d) for d in range(10)]:
            raise ParamsError(f"{source}: class_weights key {digit!r} is not a digit 0-9")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 100:
            raise ParamsError(f"{source}: class_weights[{digit!r}]={weight!r} should be a number in (0, 100]")
    return {digit: float(weight) for digit, weight in weights.items()}
