"""What one trial may spend: how many training images, at most how many epochs, and how
long validation accuracy may stall before early stopping."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    name: str
    train_size: int | None  # None: every training image left after the validation split
    max_epochs: int  # a recipe's own epoch count is used when it is smaller
    patience: int  # epochs without a better validation accuracy before stopping

    def overridden(self, *, train_size: int | None = None, max_epochs: int | None = None) -> Budget:
        changes = {k: v for k, v in {"train_size": train_size, "max_epochs": max_epochs}.items()
                   if v is not None}
        return dataclasses.replace(self, **changes) if changes else self


BUDGETS = {
    # Tests: seconds per trial.
    "smoke": Budget("smoke", train_size=2000, max_epochs=2, patience=1),
    # The CPU default for sweeps.
    "quick": Budget("quick", train_size=12000, max_epochs=8, patience=3),
    # The seeds' scale: all 54,000 training images, up to 30 epochs. Patience 8 outlasts two
    # of kaggle_cnn's ReduceLROnPlateau periods (3 epochs each), so the annealer gets to act.
    "full": Budget("full", train_size=None, max_epochs=30, patience=8),
}
