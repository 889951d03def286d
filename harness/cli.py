"""The edge every command shares: the common flags, and one line instead of a traceback for
a user's mistake (exit code 2) or a store that cannot be written (exit code 1)."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence

from harness.budgets import BUDGETS
from harness.errors import StoreUnwritable, UserError, store_failure


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse would print the whole usage block first; the problem alone is clearer.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``minimum`` (and no larger than ``maximum``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text} is more than {maximum}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


# A study's name becomes an MLflow filter value, a run name, a folder of mlruns/studies/ and
# part of its rungs' names (STUDY@BUDGET): letters, digits and a few marks that mean nothing
# in any of those.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,99}")


def study_name(text: str) -> str:
    """An argparse type: a study name every store and file name takes as it is."""
    if not STUDY_NAME.fullmatch(text) or text.endswith(" "):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a usable study name: start with a letter or digit and use letters, digits, "
            "spaces and . _ + - only (at most 100 characters)")
    return text


def positive_float(text: str) -> float:
    """An argparse type: a finite number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a number above 0")
    return value


def add_training_arguments(parser: argparse.ArgumentParser, default_budget: str | None,
                           chosen_budget: str = "long where a GPU is visible, else quick") -> None:
    """Flags that mean the same on every command that trains (no default budget: the
    command chooses, as ``chosen_budget`` says)."""
    parser.add_argument("--budget", choices=BUDGETS, default=default_budget,
                        help=f"how much each trial may train (default: {default_budget or chosen_budget})")
    parser.add_argument("--max-epochs", type=positive_int, help="override the budget's epoch cap")
    parser.add_argument("--train-size", type=positive_int,
                        help="override the budget's number of training images")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed for weights, shuffling and augmentation (default: 0)")
    add_store_arguments(parser)


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str) -> None:
    """The model to use, for the commands that predict with a trained one."""
    parser.add_argument("--model", default=default_model,
                        help=f"models:/NAME@ALIAS, an MLflow run id, an MLflow model folder or a .keras "
                             f"file (default: {default_model})")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow store holding the model (default: $MLFLOW_TRACKING_URI, "
                             "else sqlite:///mlruns/mlflow.db)")


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="PATH",
                        help="MNIST as .npz, Kaggle train.csv, or a folder of IDX files "
                             "(default: the shipped data/mnist.npz)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                             "else sqlite:///mlruns/mlflow.db)")


STORE_ADVICE = ("free some space (or raise the limit), then run the same command again: what was "
                "recorded before is kept")


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None):
    """Run a command's main; a UserError becomes one line on stderr and exit code 2, a store
    that cannot be written (full disk, size limit, I/O error) one line and exit code 1."""
    try:
        status = main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except StoreUnwritable as error:
        print(f"error: {error}; {STORE_ADVICE}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if (failure := store_failure(error)) is None:
            raise
        print(f"error: cannot write {failure}; {STORE_ADVICE}", file=sys.stderr)
        sys.exit(1)
    sys.exit(status or 0)
