"""What only this project measures and schedules: UAR and WAR (the CAER / RAER / DAiSEE scores), the
loss-balance monitor, and the originals' multi-step lr (CLIP-CAER main.py:274 MultiStepLR at the
train.sh:23 milestones)."""

from __future__ import annotations

import warnings

from common.metrics import accuracy, precision_recall_f1


def uar(y_true, y_pred, num_classes: int, zero_division: float = 0.0) -> float:
    """Unweighted average recall: mean per-class recall over ALL `num_classes` classes (a class
    absent from y_true scores `zero_division`; nan leaves it out, as scikit-learn does)."""
    return precision_recall_f1(y_true, y_pred, num_classes, "macro", zero_division)[1]


def war(y_true, y_pred) -> float:
    """Weighted average recall = plain accuracy."""
    return accuracy(y_true, y_pred)


def multistep_lr(step: int, base_lr: float, milestones: list[int] | tuple[int, ...], gamma: float = 0.1,
                 warmup_steps: int = 0) -> float:
    """base_lr * gamma^(number of milestones <= step), after an optional linear warm-up."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr * gamma ** sum(step >= m for m in milestones)


class LossBalanceMonitor:
    """Share of each weighted loss component in the total, with a warning when an auxiliary term
    stays larger than the main term for `patience` consecutive updates (CAER-LOSS-WEIGHTS in
    FIXES.md: a loss weighted 5 swamped cross-entropy unseen, because only the total was logged)."""

    def __init__(self, main: str, patience: int = 20):
        self.main, self.patience = main, patience
        self.streak: dict[str, int] = {}
        self.warned: set[str] = set()

    def update(self, weighted: dict[str, float]) -> dict[str, float]:
        """`weighted`: component name -> weighted value (floats, at log cadence). Returns shares."""
        total = sum(abs(v) for v in weighted.values()) or 1.0
        shares = {f"share_{k}": abs(v) / total for k, v in weighted.items()}
        main_value = abs(weighted[self.main])
        for name, value in weighted.items():
            if name == self.main:
                continue
            self.streak[name] = self.streak.get(name, 0) + 1 if abs(value) > main_value else 0
            if self.streak[name] >= self.patience and name not in self.warned:
                self.warned.add(name)
                warnings.warn(f"loss balance: '{name}' ({abs(value):.4g}) has exceeded the main loss "
                              f"'{self.main}' ({main_value:.4g}) for {self.streak[name]} consecutive logs; "
                              f"its weight may be swamping the main objective", stacklevel=2)
        return shares
