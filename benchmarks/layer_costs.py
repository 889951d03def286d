"""Benchmark 5: where one training step of the sweep's typical winner goes, layer by layer:
each layer of ``small_bn_cnn`` alone, forward and forward + backward, at its batch size.

    python -m benchmarks.layer_costs                # one thread, a sweep worker's setting
    python -m benchmarks.layer_costs --threads 2
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from benchmarks import results
from benchmarks.throughput import DEFAULT_BATCHES
from harness import backend, cli
from harness.backend import keras

BATCH = DEFAULT_BATCHES["small_bn_cnn"]
# (description, layer, input shape): small_bn_cnn's layers in order (benchmarks.throughput).
LAYERS = [
    ("conv 5x5, 1 -> 12 channels, same, 28x28", lambda: keras.layers.Conv2D(12, 5, padding="same"), (28, 28, 1)),
    ("batch norm, 28x28x12", keras.layers.BatchNormalization, (28, 28, 12)),
    ("ReLU, 28x28x12", lambda: keras.layers.Activation("relu"), (28, 28, 12)),
    ("max-pool, 28x28x12", lambda: keras.layers.MaxPooling2D(2), (28, 28, 12)),
    ("conv 5x5, 12 -> 26 channels, valid, 14x14", lambda: keras.layers.Conv2D(26, 5), (14, 14, 12)),
    ("batch norm, 10x10x26", keras.layers.BatchNormalization, (10, 10, 26)),
    ("max-pool, 10x10x26", lambda: keras.layers.MaxPooling2D(2), (10, 10, 26)),
    ("dense 650 -> 178, ReLU", lambda: keras.layers.Dense(178, activation="relu"), (650,)),
    ("dense 178 -> 10, softmax", lambda: keras.layers.Dense(10, activation="softmax"), (178,)),
]


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.layer_costs", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=cli.positive_int, default=1, help="CPU threads (default: 1)")
    return parser.parse_args(argv)


def milliseconds(layer, shape) -> tuple[float, float]:
    """Best of 5 x 10 calls: the forward pass, and the forward and backward pass."""
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).random((BATCH, *shape), dtype=np.float32))
    layer.build((BATCH, *shape))

    @tf.function
    def forward(x):
        return layer(x, training=True)

    @tf.function
    def forward_and_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True))
        return tape.gradient(loss, [x, *layer.trainable_weights])

    timings = []
    for step in (forward, forward_and_backward):
        step(x)  # traced and warmed up
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(10):
                step(x)
            best = min(best, (time.perf_counter() - started) / 10)
        timings.append(best * 1e3)
    return timings[0], timings[1]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("benchmarks.layer_costs times TensorFlow's kernels: run it with KERAS_BACKEND=tensorflow")
    backend.limit_threads(args.threads)
    rows, total = [], 0.0
    for description, make, shape in LAYERS:
        forward, both = milliseconds(make(), shape)
        total += both
        rows.append([description, f"{forward:.1f}", f"{both:.1f}"])
    body = (f"`small_bn_cnn`'s layers alone at batch {BATCH}, {args.threads} thread(s), best of 5 x 10 calls of "
            "a `tf.function`:\n\n" + results.table(["layer", "forward (ms)", "forward + backward (ms)"], rows)
            + f"\n\nSum of forward + backward: {total:.0f} ms a step of {BATCH} images "
            f"(at most {BATCH / total * 1e3:,.0f} images/s from these layers alone).")
    results.record("Layer costs of the small BN CNN", body)
    return 0


if __name__ == "__main__":
    cli.run(main)
