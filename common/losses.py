"""Losses used by two or more projects: focal and SupCon."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               alpha: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-class focal loss, FL = -alpha_t (1 - p_t)^gamma log p_t (Lin et al. 2017, eq. 5).
    logits (N, C), target (N,) class indices, alpha (C,) per-class weights or None, mask (N,)
    bool: samples to count (False = ignored). With gamma=0 and alpha=None this is exactly
    cross-entropy. Mean over the counted samples (0 when none is counted, with a gradient)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_pt = log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (N,) log-prob of the true class
    pt = log_pt.exp()
    loss = -((1.0 - pt) ** gamma) * log_pt
    if alpha is not None:
        loss = loss * alpha.to(loss)[target]
    if mask is not None:
        mask = mask.to(loss.dtype)
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)
    return loss.mean()


def supcon_loss(features: torch.Tensor, labels: torch.Tensor | None = None,
                positive_weights: torch.Tensor | None = None, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2, the "L_out" form).
    features: (N, D) or (N, V, D) with V views; they are L2-normalised here. Positives come from
    `labels` (N,) (same label = positive) or from `positive_weights` (N, N) >= 0 for multi-label
    data (e.g. overlap of label vectors; weights are normalised per anchor). Self-pairs are
    excluded from numerator and denominator. Anchors with no positive contribute nothing (never
    NaN); if no anchor has a positive the loss is 0 with a gradient path."""
    if features.ndim == 2:
        features = features.unsqueeze(1)
    n, views, _ = features.shape
    z = F.normalize(features.float(), dim=-1).transpose(0, 1).reshape(n * views, -1)  # (V*N, D) view-major
    if positive_weights is None:
        if labels is None:
            raise ValueError("supcon_loss needs labels or positive_weights")
        positive_weights = (labels.view(-1, 1) == labels.view(1, -1)).float()
    pos = positive_weights.float().to(z.device).repeat(views, views)  # (V*N, V*N)
    self_mask = torch.eye(n * views, dtype=torch.bool, device=z.device)
    pos = pos.masked_fill(self_mask, 0.0)

    logits = z @ z.T / temperature
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(self_mask, 0.0)  # -inf * 0 would be NaN

    pos_sum = pos.sum(dim=1)
    has_pos = pos_sum > 0
    per_anchor = -(pos * log_prob).sum(dim=1) / pos_sum.clamp_min(1e-12)
    if not bool(has_pos.any()):
        return (z * 0.0).sum()
    return per_anchor[has_pos].mean()
