"""The learning-rate schedule as a pure function of the global step, and the lr scaling rule.
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
