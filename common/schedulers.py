"""Learning-rate schedules as pure functions of the global step, the lr scaling rule, and a
plateau controller whose stop at the minimum lr really fires.

Write the result into the optimizer yourself:
    for group in optimizer.param_groups:
        group["lr"] = warmup_cosine_lr(step, group["base_lr"], warmup_steps, total_steps, min_lr)
so a test can check the schedule with no optimizer at all."""

from __future__ import annotations

import math


def warmup_cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int,
                     min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to base_lr over `warmup_steps` (step 0 gets base_lr/warmup_steps,
    never 0), then half a cosine from base_lr down to `min_lr` at `total_steps`; min_lr after."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def multistep_lr(step: int, base_lr: float, milestones: list[int] | tuple[int, ...], gamma: float = 0.1,
                 warmup_steps: int = 0) -> float:
    """base_lr * gamma^(number of milestones <= step), after an optional linear warm-up."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr * gamma ** sum(step >= m for m in milestones)


def scaled_lr(base_lr: float, effective_batch: int, reference_batch: int, rule: str = "linear") -> float:
    """Scale a learning rate quoted for `reference_batch` to the effective batch
    (per-device batch x accumulation steps x world size).

    linear: base * eff/ref (Goyal et al. 2017; DCAL's 5e-4/512 x batch); sqrt: base * sqrt(eff/ref);
    none: base unchanged."""
    if rule == "linear":
        return base_lr * effective_batch / reference_batch
    if rule == "sqrt":
        return base_lr * math.sqrt(effective_batch / reference_batch)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown lr rule {rule!r}: use 'linear', 'sqrt' or 'none'")


class PlateauController:
    """Reduce the lr by `factor` after more than `patience` evaluations without improvement of
    a metric ('min' mode: a loss), then wait `cooldown` evaluations; never below `min_lr`.

    Unlike torch's ReduceLROnPlateau, the lr is set to exactly `min_lr` when the next
    reduction would pass it, so `should_stop()` (lr at the floor and still no improvement for
    `patience` more evaluations) really becomes true. torch's scheduler skips any change
    smaller than eps=1e-8, so its lr can stall just above min_lr and `lr == min_lr` never holds."""

    def __init__(self, lr: float, factor: float = 0.1, patience: int = 10, cooldown: int = 0,
                 min_lr: float = 0.0, threshold: float = 1e-4, mode: str = "min"):
        if not 0.0 < factor < 1.0:
            raise ValueError("factor must be in (0, 1)")
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.lr, self.factor, self.patience, self.cooldown = lr, factor, patience, cooldown
        self.min_lr, self.threshold, self.mode = min_lr, threshold, mode
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_evals = 0
        self.cooldown_left = 0
        self.stopped = False

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best * (1.0 - self.threshold) if self.best > 0 else value < self.best - self.threshold
        return value > self.best * (1.0 + self.threshold) if self.best > 0 else value > self.best + self.threshold

    def step(self, value: float) -> float:
        """Feed one evaluation's metric; returns the lr to use from now on."""
        if math.isnan(value):
            raise ValueError("PlateauController.step got NaN: the validation metric is not finite")
        if self._improved(value):
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_evals = 0
        if self.bad_evals > self.patience:
            if self.lr <= self.min_lr:
                self.stopped = True
            else:
                # Snap to the floor within rounding: 1e-8 * 0.1 is 1.0000000000000005e-09 in floats,
                # which would cost one more plateau round before lr == min_lr could hold.
                cut = self.lr * self.factor
                self.lr = self.min_lr if cut <= self.min_lr * (1 + 1e-9) else cut
                self.cooldown_left = self.cooldown
            self.bad_evals = 0
        return self.lr

    def should_stop(self) -> bool:
        return self.stopped

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)
