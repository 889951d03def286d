"""Benchmark 2: training throughput of the baselines' networks as a fraction of this machine's
peak, the peak being a float32 matrix product timed in the same run; and the levers that might
raise it (input pipeline, XLA, bfloat16, evaluation batch), each measured beside the default.

    python -m benchmarks.throughput
    python -m benchmarks.throughput --models chollet_cnn --batch-sizes 64 256 --variants default xla

Models train without augmentation except in the "augmented" variant, which adds seed 000's
ranges (rotation 10 degrees, zoom 0.1, shifts 0.1) as the model's preprocessing layers. Besides
the baselines, ``small_bn_cnn`` is the sweep's typical winner (a small batch-norm CNN, about
6.8 MFLOP per training image; kaggle_cnn at batch 86 is about 194).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np

import search_space
import train_trial
from benchmarks import results
from harness import backend, cli, data
from harness.backend import keras

VARIANTS = ("default", "augmented", "tf.data", "xla", "bfloat16")
# The sweep's typical winner on this CPU (quick sweeps' best trials): conv 12@5x5 same -> BN ->
# ReLU -> max-pool -> conv 26@5x5 valid -> BN -> ReLU -> max-pool -> dense 178 -> 10, AdamW.
SMALL_BN_CNN = {
    "family": "cnn", "input_scaling": "unit", "activation": "relu", "conv_blocks": 2,
    "block1_convs": 1, "block1_filters": 12, "block1_kernel": 5, "block1_padding": "same",
    "block2_convs": 1, "block2_filters": 26, "block2_kernel": 5, "block2_padding": "valid",
    "downsample": "max", "downsample_last_block": True, "batch_norm": True, "block_dropout": 0.0,
    "dense_layers": 1, "dense_units": 178, "head_dropout": 0.0,
    "optimizer": "adamw", "learning_rate": 3e-3, "epsilon": 1e-7, "weight_decay": 1e-4,
    "lr_schedule": "one_cycle", "augment": False, "batch_size": 128, "epochs": 20, "label_smoothing": 0.0,
}
NETWORKS = {**search_space.BASELINES, "small_bn_cnn": SMALL_BN_CNN}
SEED_000_AUGMENTATION = {"augment": True, "rotation": 10.0, "zoom": 0.1, "shift": 0.1}
DEFAULT_BATCHES = {"kaggle_cnn": 86, "chollet_cnn": 64, "small_bn_cnn": 128}
CHOLLET_TARGET = 0.5  # of the float32 peak
AUGMENTATION_COST_TARGET = 0.2  # of a network's unaugmented images/s
MATMUL_SIDE = 2048


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=NETWORKS, default=list(DEFAULT_BATCHES))
    parser.add_argument("--batch-sizes", nargs="+", type=cli.positive_int,
                        help="batch sizes to try (default: each recipe's own)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="about how long one float32 measurement trains (default: 8)")
    parser.add_argument("--rounds", type=cli.positive_int, default=2,
                        help="times each measurement is repeated, interleaved (default: 2; medians reported)")
    parser.add_argument("--threads", type=cli.positive_int, help="CPU threads (default: the backend's)")
    return parser.parse_args(argv)


def matmul_gflops(dtype: str, repeats: int = 10) -> float:
    """Best of ``repeats`` products of two random 2048x2048 matrices, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.standard_normal((MATMUL_SIDE, MATMUL_SIDE)), dtype=dtype)
    b = keras.ops.convert_to_tensor(rng.standard_normal((MATMUL_SIDE, MATMUL_SIDE)), dtype=dtype)

    def checksum():  # a float32 number back on the host: the product has finished
        return keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.sum(keras.ops.matmul(a, b)), "float32"))

    checksum()  # first use: kernels chosen, memory allocated
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        checksum()
        best = min(best, time.perf_counter() - started)
    return 2 * MATMUL_SIDE**3 / best / 1e9


def training_images_per_second(params: dict, split: data.Split, batch: int, variant: str, images: int) -> float:
    """Images per second of one epoch of ``model.fit`` over ``images`` training images, after
    a warm-up epoch on a few batches (graph tracing and kernel choice are not counted)."""
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if variant == "bfloat16" else "float32")
    try:
        keras.utils.set_random_seed(0)
        model = train_trial.build_model(params, split.pixel_mean, split.pixel_std)
        model.compile(optimizer=keras.optimizers.RMSprop(1e-3), loss="categorical_crossentropy",
                      jit_compile=variant == "xla")
        x = split.x_train[:images, ..., None]
        y = keras.utils.to_categorical(split.y_train[:images], 10)
        fit_input = dict(x=x, y=y, batch_size=batch)
        if variant == "tf.data":
            import tensorflow as tf

            fit_input = dict(x=tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).prefetch(tf.data.AUTOTUNE))
        model.fit(x[:batch * 5], y[:batch * 5], batch_size=batch, epochs=1, verbose=0)
        started = time.perf_counter()
        model.fit(**fit_input, epochs=1, verbose=0)
        return images / (time.perf_counter() - started)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def evaluation_images_per_second(params: dict, split: data.Split, batch: int) -> float:
    keras.backend.clear_session()
    model = train_trial.build_model(params, split.pixel_mean, split.pixel_std)
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    y = keras.utils.to_categorical(split.y_val, 10)
    model.evaluate(split.x_val[:batch, ..., None], y[:batch], batch_size=batch, verbose=0)
    started = time.perf_counter()
    model.evaluate(split.x_val[..., None], y, batch_size=batch, verbose=0)
    return len(split.y_val) / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        backend.limit_threads(args.threads)
    variants = [v for v in args.variants if v != "tf.data" or keras.backend.backend() == "tensorflow"]
    split = data.split(data.load(None), data.DEFAULT_SPLIT_SEED, None)
    peaks = {"float32": [], "bfloat16": []}
    speeds: dict[tuple, list[float]] = {}
    evaluation: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):  # interleaved, so drift on a noisy machine hits every figure alike
        for dtype in peaks:
            peaks[dtype].append(matmul_gflops(dtype))
        for name in args.models:
            params = {**search_space.validate(NETWORKS[name]), "augment": False}
            params = {k: v for k, v in params.items() if k not in ("rotation", "zoom", "shift")}
            for batch in args.batch_sizes or [DEFAULT_BATCHES.get(name, params["batch_size"])]:
                gflop = 6 * train_trial.forward_multiply_adds(train_trial.build_model(params)) / 1e9
                # About args.seconds at 40 % of the peak; bfloat16 gets a quarter (it can be far slower).
                images = int(min(len(split.y_train), max(batch * 20, 0.4 * statistics.median(peaks["float32"])
                                                        * args.seconds / gflop)))
                for variant in variants:
                    count = images // 4 if variant == "bfloat16" else images
                    count -= count % batch
                    recipe = {**params, **SEED_000_AUGMENTATION} if variant == "augmented" else params
                    speeds.setdefault((name, batch, variant, gflop), []).append(
                        training_images_per_second(recipe, split, batch, variant, count))
                for eval_batch in sorted({batch, 1000}):
                    evaluation.setdefault((name, eval_batch), []).append(
                        evaluation_images_per_second(params, split, eval_batch))
    peak = statistics.median(peaks["float32"])
    rows = []
    for (name, batch, variant, gflop), values in speeds.items():
        rate = statistics.median(values)
        rows.append([f"`{name}`", batch, variant, f"{gflop * 1e3:.1f}", f"{rate:,.0f}",
                     f"{rate * gflop:,.1f}", f"{rate * gflop / peak:.0%}"])
    body = (f"Peak: a {MATMUL_SIDE}x{MATMUL_SIDE} matrix product, {peak:,.0f} GFLOP/s in float32 and "
            f"{statistics.median(peaks['bfloat16']):,.0f} GFLOP/s in bfloat16 (best of 10, median of "
            f"{args.rounds} rounds). Training: one epoch of `model.fit` (augmented only in that variant), after a warm-up; "
            f"medians of {args.rounds} interleaved rounds.\n\n"
            + results.table(["model", "batch", "variant", "MFLOP / training image", "images/s", "GFLOP/s",
                             "of float32 peak"], rows)
            + "\n\nEvaluation (the validation pass after each epoch), images/s: "
            + ", ".join(f"`{name}` batch {batch}: {statistics.median(v):,.0f}" for (name, batch), v in evaluation.items()))
    chollet = [statistics.median(v) * key[3] / peak for key, v in speeds.items()
               if key[0] == "chollet_cnn" and key[2] == "default"]
    if chollet:
        verdict = "met" if max(chollet) >= CHOLLET_TARGET else "**not met**"
        body += f".\n\n`chollet_cnn` reaches {max(chollet):.0%} of the float32 peak; target >= {CHOLLET_TARGET:.0%}: {verdict}."
    for name in args.models:
        plain = [statistics.median(v) for key, v in speeds.items() if key[0] == name and key[2] == "default"]
        augmented = [statistics.median(v) for key, v in speeds.items() if key[0] == name and key[2] == "augmented"]
        if plain and augmented:
            body += (f"\n\n`{name}`: augmentation costs {1 - augmented[0] / plain[0]:.0%} of its unaugmented "
                     f"throughput (target <= {AUGMENTATION_COST_TARGET:.0%}).")
    results.record("Training throughput", body)
    return 0


if __name__ == "__main__":
    cli.run(main)
