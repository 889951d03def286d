"""What one trial is: its training images, epochs, patience, arithmetic cap and time share.

A budget is what a trial is fingerprinted by. How a sweep schedules trials (which rung follows
which, the wall-clock of a whole command) is policy, and lives with the sweep (sweeps/plan.py),
so a change of policy never makes an old study unresumable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    name: str
    train_size: int | None  # None: every training image left after the validation split
    max_epochs: int  # a recipe's own epoch count is used when it is smaller
    patience: int  # epochs without a better validation accuracy before stopping
    # Training arithmetic a sweep allows one trial: 6 x forward multiply-adds x images x epochs
    # (a multiply-add is 2 FLOPs; training costs about 3 forward passes). Priced before
    # training, so an oversized network is pruned without burning the sweep's time.
    max_training_tflop: float
    trial_seconds: float  # a sweep stops a trial that trains longer than this
    # The first epoch a sweep's pruner judges. Judging earlier compares recipes mid-schedule,
    # where a one-cycle recipe at its peak rate reads below a constant one it later passes.
    first_rung: int

    def epochs_for(self, params: dict) -> int:
        """The epochs a recipe trains at this budget: its own (a baseline's seed names them)
        up to the cap; a sampled recipe has none of its own and trains the cap."""
        return min(params.get("epochs", self.max_epochs), self.max_epochs)

    @property
    def plateau_patience(self) -> int:
        """ReduceLROnPlateau's patience: seed 000's 3 epochs, but always short of early
        stopping's, so the annealer can act at every budget before training stops."""
        return max(1, min(3, self.patience - 1))

    def overridden(self, *, train_size: int | None = None, max_epochs: int | None = None) -> Budget:
        changes = {k: v for k, v in {"train_size": train_size, "max_epochs": max_epochs}.items()
                   if v is not None}
        return dataclasses.replace(self, **changes) if changes else self


BUDGETS = {
    # Tests: seconds per trial; the rungs above smoke stay small enough for the test suite.
    "smoke": Budget("smoke", train_size=2000, max_epochs=2, patience=1,
                    max_training_tflop=2.0, trial_seconds=120, first_rung=1),
    "smoke-long": Budget("smoke-long", train_size=600, max_epochs=3, patience=2,
                         max_training_tflop=2.0, trial_seconds=120, first_rung=2),
    "smoke-full": Budget("smoke-full", train_size=1000, max_epochs=3, patience=2,
                         max_training_tflop=2.0, trial_seconds=120, first_rung=2),
    # Exploration on a CPU: 50 trials of two single-threaded workers within 45 minutes on two
    # cores. Four epochs rank recipes as five did, for a fifth less time; the pruner first
    # judges at epoch 2, after one-cycle's warm-up (30 % of the epochs). The cap admits the
    # mid-sized networks a single-threaded worker trains in its time share (RESULTS.md,
    # "Seventh quick sweep").
    "quick": Budget("quick", train_size=45_000, max_epochs=4, patience=2,
                    max_training_tflop=6.0, trial_seconds=240, first_rung=2),
    # The ladder's middle rung: every training image and 10 epochs, enough for a one-cycle or
    # cosine schedule to run its course and for augmentation to start paying. Where a GPU is
    # visible the sweep explores here.
    "long": Budget("long", train_size=None, max_epochs=10, patience=3,
                   max_training_tflop=60.0, trial_seconds=1200, first_rung=4),
    # The seeds' scale: all training images, up to 30 epochs. Patience 8 outlasts two of
    # kaggle_cnn's ReduceLROnPlateau periods (3 epochs each), so the annealer gets to act;
    # the cap admits kaggle_cnn's full recipe (about 320 TFLOP).
    "full": Budget("full", train_size=None, max_epochs=30, patience=8,
                   max_training_tflop=400.0, trial_seconds=3600, first_rung=10),
}
