"""Mixup (Zhang et al. 2018) for one or several input tensors that must be mixed together
(face and context streams of one clip, video tensors (B, T, C, H, W))."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


def mixup(inputs: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor, alpha: float,
          generator: torch.Generator | None = None):
    """Returns (mixed_inputs, y_a, y_b, lam). One permutation and one lambda ~ Beta(alpha, alpha) are shared
    by every tensor in `inputs` (dim 0 is the batch). y_b = targets[perm]: the target of the sample mixed in,
    never the permutation itself. alpha <= 0 returns the inputs unchanged with lam = 1 and y_b = y_a."""
    single = isinstance(inputs, torch.Tensor)
    tensors = [inputs] if single else list(inputs)
    if alpha <= 0:
        return (tensors[0] if single else tensors), targets, targets, 1.0
    batch = targets.shape[0]
    for t in tensors:
        if t.shape[0] != batch:
            raise ValueError(f"mixup: input of batch {t.shape[0]} does not match {batch} targets")
    g = generator if generator is not None else torch.Generator().manual_seed(
        int(torch.randint(0, 2**31 - 1, (1,)).item()))
    perm = torch.randperm(batch, generator=g).to(targets.device)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    mixed = [lam * t + (1.0 - lam) * t[perm] for t in tensors]
    return (mixed[0] if single else mixed), targets, targets[perm], lam


def mixup_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], output: torch.Tensor,
               y_a: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * L(output, y_a) + (1 - lam) * L(output, y_b)."""
    if lam == 1.0:
        return loss_fn(output, y_a)
    return lam * loss_fn(output, y_a) + (1.0 - lam) * loss_fn(output, y_b)
