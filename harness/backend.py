"""Keras, imported with the backend's C++ start-up messages kept off the console.

Importing this module is what loads TensorFlow (about 1 GB resident): only the processes
that train or predict import it; a sweep's parent process does not.

TensorFlow's wheel probes for CUDA on import and on first device use. Most of what it
writes obeys TF_CPP_MIN_LOG_LEVEL, which must be set before the import; but its CUDA stub
writes "Could not find cuda drivers" before its logging starts, at every level (measured
with TensorFlow 2.21), and would bury a command's one-line error. Only that import window
has stderr pointed elsewhere; Python exceptions still propagate.
"""

import os
import sys

# 3: C++ errors too. With op determinism on (sweeps.reproduce) TensorFlow logs a harmless
# "error" for every dataset it rewrites; real failures still raise Python exceptions.
# A user who wants TensorFlow's own logs sets the variable themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_keras_quietly():
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow

            tensorflow.config.list_physical_devices()  # the CUDA probe happens here, quietly
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)
    return keras


keras = _import_keras_quietly()


def limit_threads(threads: int) -> None:
    """Use at most ``threads`` CPU threads for training; call before the first computation.
    (Several workers on few cores train more images together with a thread each than
    sharing threads: RESULTS.md.)"""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow

        tensorflow.config.threading.set_intra_op_parallelism_threads(threads)
        tensorflow.config.threading.set_inter_op_parallelism_threads(threads)
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
    # JAX fixes its thread pool when it starts; XLA_FLAGS in the environment is the way there.


def threads_in_use() -> int:
    """The CPU threads one computation of this process may use (limit_threads, else the
    backend's default: every core)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow

        return tensorflow.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1
    if backend == "torch":
        import torch

        return torch.get_num_threads()
    return os.cpu_count() or 1


def make_deterministic() -> None:
    """Same seed, same numbers: deterministic kernels (with keras.utils.set_random_seed,
    which train_trial.train calls). Process-wide and permanent; it can slow training."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow

        tensorflow.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True)
