"""What one trial may spend: training images, epochs, patience, arithmetic and time."""

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
    trial_seconds: float  # a sweep stops a trial that runs longer than this
    # The first epoch a sweep's pruner judges. Judging earlier compares recipes mid-schedule:
    # a one-cycle recipe at its peak rate reads 0.97 while a constant one reads 0.98, and
    # ends 0.3 points above it (RESULTS.md, fourth quick sweep).
    first_rung: int
    # Wall-clock of one sweep invocation: no trial starts once the time left cannot hold a
    # whole one (its time share and its validation and logging), so the sweep ends within
    # this whatever its trials turn out to cost. None: no limit but --timeout.
    sweep_seconds: float | None = None
    # The next rung of the sweep's fidelity ladder (a budget's name): the sweep carries its
    # best trials there once this budget's trials are done. None: the top rung.
    promotes_to: str | None = None
    # Wall-clock of the whole ladder (explore, promotions, ensemble) when it starts at this
    # budget, unless --hours says otherwise. None: no limit.
    ladder_seconds: float | None = None

    def epochs_for(self, params: dict) -> int:
        """The epochs a recipe trains at this budget: its own (a baseline's seed names them)
        up to the cap; a sampled recipe has none of its own and trains the cap."""
        return min(params.get("epochs", self.max_epochs), self.max_epochs)

    @property
    def plateau_patience(self) -> int:
        """ReduceLROnPlateau's patience: seed 000's 3 epochs, but always short of early
        stopping's, so the annealer can act at every budget before training stops."""
        return max(1, min(3, self.patience - 1))

    @property
    def longest_trial_seconds(self) -> float:
        """What one trial can take at most: its time share, plus the validation pass that
        ends its last epoch and its logging (measured at quick: under 40 s; doubled)."""
        return self.trial_seconds + 80

    def overridden(self, *, train_size: int | None = None, max_epochs: int | None = None) -> Budget:
        changes = {k: v for k, v in {"train_size": train_size, "max_epochs": max_epochs}.items()
                   if v is not None}
        return dataclasses.replace(self, **changes) if changes else self


BUDGETS = {
    # Tests: seconds per trial. Its ladder's upper rungs stay small enough for the test suite.
    "smoke": Budget("smoke", train_size=2000, max_epochs=2, patience=1,
                    max_training_tflop=2.0, trial_seconds=120, first_rung=1, promotes_to="smoke-long"),
    "smoke-long": Budget("smoke-long", train_size=600, max_epochs=3, patience=2,
                         max_training_tflop=2.0, trial_seconds=120, first_rung=2, promotes_to="smoke-full"),
    "smoke-full": Budget("smoke-full", train_size=1000, max_epochs=3, patience=2,
                         max_training_tflop=2.0, trial_seconds=120, first_rung=2),
    # The CPU default for sweeps: 50 trials within 45 minutes on 2 cores (RESULTS.md), with
    # two single-threaded workers. 4 epochs on 45,000 images: with 5 epochs, the sweeps that
    # cleared 99.2 % (0.9922 on 48,000 images, 0.9933 on 45,000) took 45.2 and 52.2 min,
    # depending on how many of TPE's samples completed and how slow they were; their best
    # networks were already at 0.9910-0.9933 after epoch 4. At 4 epochs: 39.7 min, 0.9923.
    # First rung at epoch 2, after one-cycle's warm-up (30 % of the epochs): judging at
    # epoch 2 of 5, mid-warm-up, the fourth quick sweep pruned every one-cycle trial.
    # 6 TFLOP admits the networks 8 TFLOP admitted at 5 epochs on 48,000 images; a
    # single-threaded worker trains about 40 GFLOP/s on mid-sized networks here.
    # Its promise, 50 trials within 45 minutes, is held by sweep_seconds whatever TPE samples.
    "quick": Budget("quick", train_size=45_000, max_epochs=4, patience=2,
                    max_training_tflop=6.0, trial_seconds=240, first_rung=2, sweep_seconds=45 * 60,
                    promotes_to="long", ladder_seconds=2 * 3600),
    # The ladder's middle rung: every training image and 10 epochs, enough for a one-cycle or
    # cosine schedule to run its course and for augmentation to start paying; a small BN CNN
    # takes about 10 minutes of one core here. Where a GPU is visible the sweep explores here,
    # and climbs to full within the same two hours as the CPU's ladder from quick.
    "long": Budget("long", train_size=None, max_epochs=10, patience=3,
                   max_training_tflop=60.0, trial_seconds=1200, first_rung=4, promotes_to="full",
                   ladder_seconds=2 * 3600),
    # The seeds' scale: all 54,000 training images, up to 30 epochs. Patience 8 outlasts two
    # of kaggle_cnn's ReduceLROnPlateau periods (3 epochs each), so the annealer gets to act.
    # kaggle_cnn's full recipe is about 320 TFLOP.
    "full": Budget("full", train_size=None, max_epochs=30, patience=8,
                   max_training_tflop=400.0, trial_seconds=3600, first_rung=10),
}
