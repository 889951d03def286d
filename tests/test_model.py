"""Each baseline builds the network its seed describes, layer by layer and parameter by parameter."""

import numpy as np
import optuna
import pytest

import search_space
import train_trial
from harness.backend import keras
from harness.errors import ParamsError

PREPROCESSING = (keras.layers.Rescaling, keras.layers.RandomRotation, keras.layers.RandomZoom,
                 keras.layers.RandomTranslation)


def describe(layer):
    config = layer.get_config()
    kind = type(layer).__name__
    if kind == "Conv2D":
        return f"Conv2D {config['filters']} {config['kernel_size'][0]}x{config['kernel_size'][1]} {config['padding']} {config['activation']}"
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        return f"{kind} {config['pool_size'][0]}"
    if kind == "Dropout":
        return f"Dropout {config['rate']}"
    if kind == "Dense":
        return f"Dense {config['units']} {config['activation']}"
    return kind


def architecture(name):
    model = train_trial.build_model(search_space.baseline(name))
    return [describe(layer) for layer in model.layers if not isinstance(layer, PREPROCESSING)], model.count_params()


# Parameter counts worked out from the seeds by hand, e.g. kaggle_cnn:
# 5*5*1*32+32 + 5*5*32*32+32 + 3*3*32*64+64 + 3*3*64*64+64 + 7*7*64*256+256 + 256*10+10 = 887,530.
SEED_ARCHITECTURES = {
    "kaggle_cnn": ([
        "Conv2D 32 5x5 same relu", "Conv2D 32 5x5 same relu", "MaxPooling2D 2", "Dropout 0.25",
        "Conv2D 64 3x3 same relu", "Conv2D 64 3x3 same relu", "MaxPooling2D 2", "Dropout 0.25",
        "Flatten", "Dense 256 relu", "Dropout 0.5", "Dense 10 softmax"], 887_530),
    "mlp_3x256": ([  # 784*256+256 + 2*(256*256+256) + 256*10+10
        "Flatten", "Dense 256 relu", "Dense 256 relu", "Dense 256 relu", "Dense 10 softmax"], 335_114),
    "chollet_cnn": ([  # 320 + 18,496 + 36,928 + (3*3*64*64+64) + 650: the book's 93,322
        "Conv2D 32 3x3 valid relu", "MaxPooling2D 2", "Conv2D 64 3x3 valid relu", "MaxPooling2D 2",
        "Conv2D 64 3x3 valid relu", "Flatten", "Dense 64 relu", "Dense 10 softmax"], 93_322),
    "gradio_cnn": ([  # 320 + 18,496 + (5*5*64*64+64) + 650
        "Conv2D 32 3x3 valid relu", "MaxPooling2D 2", "Conv2D 64 3x3 valid relu", "MaxPooling2D 2",
        "Flatten", "Dense 64 relu", "Dense 10 softmax"], 121_930),
    "lenet5": ([  # 156 + 2,416 + 48,120 + 10,164 + 850
        "Conv2D 6 5x5 same tanh", "AveragePooling2D 2", "Conv2D 16 5x5 valid tanh", "AveragePooling2D 2",
        "Conv2D 120 5x5 valid tanh", "Flatten", "Dense 84 tanh", "Dense 10 softmax"], 61_706),
}


@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_baseline_layers_and_parameter_count_match_the_seed(name):
    assert architecture(name) == SEED_ARCHITECTURES[name]


def test_kaggle_augmentation_matches_its_image_data_generator():
    layers = {type(layer).__name__: layer
              for layer in train_trial.build_model(search_space.baseline("kaggle_cnn")).layers}
    assert layers["RandomRotation"].get_config()["factor"] == pytest.approx((-10 / 360, 10 / 360))
    for kind in ("RandomZoom", "RandomTranslation"):  # +-10 %, height and width drawn independently
        layer = layers[kind]
        bounds = (layer.height_lower, layer.height_upper, layer.width_lower, layer.width_upper)
        assert bounds == pytest.approx((-0.1, 0.1, -0.1, 0.1))
    assert {layer.get_config()["fill_mode"] for name, layer in layers.items() if name.startswith("Random")} == {"nearest"}


def test_augmentation_changes_training_inputs_only():
    model = train_trial.build_model(search_space.baseline("kaggle_cnn"))
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    assert np.array_equal(model(images, training=False), model(images, training=False))


def test_lenet_inputs_are_standardized_by_the_training_statistics():
    model = train_trial.build_model(search_space.baseline("lenet5"), pixel_mean=33.0, pixel_std=78.0)
    rescale = model.layers[0]
    out = rescale(np.array([[[[33.0]]], [[[111.0]]]], dtype=np.float32))
    np.testing.assert_allclose(np.ravel(out), [0.0, 1.0], atol=1e-6)


def test_other_baselines_scale_pixels_to_the_unit_interval():
    rescale = train_trial.build_model(search_space.baseline("chollet_cnn")).layers[0]
    np.testing.assert_allclose(np.ravel(rescale(np.array([[[[255.0]]]], dtype=np.float32))), [1.0])


def test_batch_norm_and_strided_downsampling_build_as_described():
    params = {**search_space.baseline("chollet_cnn"), "batch_norm": True, "downsample": "stride",
              "activation": "gelu"}
    described = [describe(layer) for layer in train_trial.build_model(params).layers]
    assert described[1:5] == ["Conv2D 32 3x3 valid linear", "BatchNormalization", "Activation", "Conv2D 64 3x3 valid linear"]
    convs = [layer for layer in train_trial.build_model(params).layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.get_config()["strides"] for c in convs] == [(2, 2), (2, 2), (1, 1)]  # the last block keeps its size


def test_an_impossible_shape_is_a_params_error():
    params = {**search_space.baseline("chollet_cnn"), "block1_convs": 3, "block2_convs": 3, "block3_convs": 3,
              "block1_kernel": 5, "block2_kernel": 5, "block3_kernel": 5}
    with pytest.raises(ParamsError, match="block 2: impossible layer shapes"):
        train_trial.build_model(params)


@pytest.mark.slow  # builds 80 networks: about 30 s on two cores
def test_every_sampled_network_builds():
    """suggest() offers "valid" padding only where it fits, so no sampled point is impossible."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    networks = [params for params in (search_space.suggest(study.ask()) for _ in range(400))
                if params["family"] == "cnn"]
    valid_deep = [p for p in networks if p["conv_blocks"] == 3 and p.get("block3_padding") == "valid"]
    assert len(networks) > 150 and valid_deep  # the valid option is still there where it fits
    for params in networks[:80]:
        model = train_trial.build_model(params)  # raises ParamsError on an impossible shape
        # The side the space's shape rules give is the one the builder made.
        side = search_space.IMAGE_SIDE
        for block in range(1, params["conv_blocks"] + 1):
            side = search_space.feature_map_side(
                side, params[f"block{block}_convs"], params[f"block{block}_kernel"],
                search_space.block_padding(params, block), search_space.block_downsample(params, block))
        flatten = next(layer for layer in model.layers if isinstance(layer, keras.layers.Flatten))
        assert flatten.input.shape[1:3] == (side, side), params


@pytest.mark.parametrize("convs,kernel,padding,downsample", [
    (3, 5, "valid", "max"), (2, 3, "valid", "stride"), (2, 5, "same", "stride"), (1, 3, "valid", None),
    (3, 3, "same", "avg")])
def test_feature_map_side_is_what_keras_builds(convs, kernel, padding, downsample):
    for side in (28, 14, 9, 7, 5, 3):
        layers = [keras.layers.Conv2D(1, kernel, padding=padding,
                                      strides=2 if downsample == "stride" and i == convs - 1 else 1)
                  for i in range(convs)]
        if downsample in ("max", "avg"):
            layers.append(keras.layers.MaxPooling2D(2))
        expected = search_space.feature_map_side(side, convs, kernel, padding, downsample)
        try:
            built = keras.Sequential([keras.Input((side, side, 1)), *layers]).output_shape[1]
        except ValueError:
            built = 0
        assert built == expected, side


def test_lenet_step_schedule_is_the_papers():
    _, callbacks = train_trial.make_optimizer(search_space.baseline("lenet5"), epochs=20, steps_per_epoch=10)
    schedule = callbacks[0].schedule
    assert [schedule(e) for e in (0, 2, 3, 5, 6, 9, 10, 19)] == pytest.approx(
        [5e-4, 5e-4, 2e-4, 2e-4, 5e-5, 5e-5, 1e-5, 1e-5])


def test_kaggle_optimizer_and_annealer_are_the_seeds():
    optimizer, (annealer,) = train_trial.make_optimizer(search_space.baseline("kaggle_cnn"), 30, 10)
    assert isinstance(optimizer, keras.optimizers.RMSprop)
    assert (optimizer.rho, optimizer.epsilon) == (0.9, 1e-8)
    assert float(optimizer.learning_rate) == pytest.approx(1e-3)
    assert (annealer.monitor, annealer.patience, annealer.factor, annealer.min_lr) == ("val_accuracy", 3, 0.5, 1e-5)


def test_one_cycle_warms_up_then_anneals():
    params = {**search_space.baseline("chollet_cnn"), "lr_schedule": "one_cycle", "learning_rate": 0.01}
    optimizer, _ = train_trial.make_optimizer(params, epochs=10, steps_per_epoch=100)
    rates = []
    for step in (0, 150, 300, 650, 1000):
        optimizer.iterations.assign(step)
        rates.append(float(optimizer.learning_rate))  # the rate in force at that step
    assert rates[0] == pytest.approx(0.01 / 25)
    assert rates[0] < rates[1] < rates[2] == pytest.approx(0.01)
    assert rates[2] > rates[3] > rates[4]


def test_multiply_adds_are_counted_from_the_built_model():
    # kaggle_cnn: 28*28*(5*5*1*32 + 5*5*32*32) + 14*14*(3*3*32*64 + 3*3*64*64) + 3136*256 + 256*10
    model = train_trial.build_model(search_space.baseline("kaggle_cnn"))
    assert train_trial.forward_multiply_adds(model) == 32_340_992
