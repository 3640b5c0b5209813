"""The aspect-level focal loss and the multi-label contrastive terms of this project.

The generic pieces are in common/losses.py (`focal_loss`, `supcon_loss`); here is what is specific
to aspect x sentiment labels: what the model is trained to predict per aspect, per-aspect alpha
from label frequencies, and which reviews count as positives of each other.
"""

from __future__ import annotations

import torch

from common.losses import focal_loss, supcon_loss
from visobert_multitask.data import ABSENT, NEUTRAL

NUM_STATES = 3  # classes per aspect the model predicts


def training_targets(labels: torch.Tensor) -> torch.Tensor:
    """(N, A) data states -> (N, A) class indices the head is trained on."""
    # The original's encoding: an aspect the review does not mention is labelled Neutral.
    return torch.where(labels == ABSENT, torch.full_like(labels, NEUTRAL), labels) - 1


def predicted_states(logits: torch.Tensor) -> torch.Tensor:
    """(N, A, S) logits -> (N, A) data states (1 positive, 2 negative, 3 neutral)."""
    return logits.argmax(dim=-1) + 1


def focal_alpha(targets: torch.Tensor, num_states: int) -> torch.Tensor:
    """Per-aspect inverse-frequency alpha, (A, S), normalised to mean 1 per aspect.

    A state never seen in the given labels is counted once, so its alpha is large but finite."""
    counts = torch.stack([torch.bincount(targets[:, a], minlength=num_states) for a in range(targets.shape[1])])
    inverse = 1.0 / counts.float().clamp_min(1.0)  # (A, S)
    return inverse / inverse.mean(dim=1, keepdim=True)


def aspect_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: torch.Tensor, gamma: float = 2.0):
    """Mean over aspects of common `focal_loss` on each aspect's (B, S) logits."""
    return torch.stack([focal_loss(logits[:, a], targets[:, a], gamma, alpha[a])
                        for a in range(logits.shape[1])]).mean()


def positive_weights(targets: torch.Tensor) -> torch.Tensor:
    """(N, A) targets -> (N, N) weights: fraction of aspects on which two reviews agree."""
    return (targets[:, None, :] == targets[None, :, :]).float().mean(dim=-1)


def supcon_multilabel(embeddings: torch.Tensor, weights: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SupCon (Khosla et al. 2020, L_out) with weighted positives, over L2-normalised embeddings."""
    # FIX(VSB-SUPCON-NO-POSITIVE): an anchor with no positive in the batch divided 0 by 0, and one
    # such anchor turned the batch loss into NaN. common's supcon_loss leaves those anchors out
    # (mean over the anchors that have a positive; 0 with a gradient path if none has).
    # was: pos = weights.masked_fill(self_mask, 0.0)
    # was: return (-(pos * log_prob).sum(dim=1) / pos.sum(dim=1)).mean()
    return supcon_loss(embeddings, positive_weights=weights, temperature=temperature)
