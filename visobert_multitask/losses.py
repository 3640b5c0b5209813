"""The aspect-level focal loss and the multi-label contrastive terms of this project, and the
training loss of one batch built from them (`compute_losses`, what train.py and bench.py step on).

The generic pieces are in common/losses.py (`focal_loss`, `supcon_loss`); here is what is specific
to aspect x sentiment labels: the states the model predicts per aspect, per-aspect alpha from
label frequencies, and which reviews count as positives of each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.cli import above, arg, at_least
from common.losses import focal_loss, supcon_loss


@dataclass
class LossConfig:
    loss: str = arg("both", "ablation: focal only, contrastive only (classifier trained as a probe), or both",
                    choices=["both", "focal", "contrastive"])
    w_focal: float = arg(0.8, "weight of the focal loss", check=at_least(0.0, float))
    w_con: float = arg(0.2, "weight of the supervised contrastive loss", check=at_least(0.0, float))
    gamma: float = arg(2.0, "focal loss gamma", check=at_least(0.0, float))
    alpha_power: float = arg(0.5, "focal alpha = (1/train frequency)^power per aspect; 1 = the original's "
                             "inverse frequency, 0 = none", check=at_least(0.0, float))
    temperature: float = arg(0.07, "SupCon temperature", check=above(0.0))

# NOTE(design): one 4-way softmax per aspect rather than a presence head + a masked 3-way sentiment
# head: one focal loss per aspect as in the original, no threshold, no sentiment for an absent aspect.
# FIX(VSB-ABSENT-STATE): "not mentioned" is its own state; it was trained as Neutral.
# was: NUM_STATES = 3
NUM_STATES = 4  # classes per aspect the model predicts: the data states themselves


def predicted_states(logits: torch.Tensor) -> torch.Tensor:
    """(N, A, S) logits -> (N, A) data states (0 absent, 1 positive, 2 negative, 3 neutral)."""
    # FIX(VSB-ABSENT-STATE): the head's classes are the data states.
    # was: return logits.argmax(dim=-1) + 1
    return logits.argmax(dim=-1)


def focal_alpha(targets: torch.Tensor, num_states: int, power: float = 0.5) -> torch.Tensor:
    """Per-aspect alpha (A, S) = (1 / frequency) ** power, normalised to mean 1 per aspect.

    power 1 is plain inverse frequency (the original's rule, over its 3 sentiments); 0 is no alpha.
    A state never seen in the given labels is counted once, so its alpha is large but finite."""
    # NOTE(deviation): default power 0.5. With "absent" as a state (~80% of slots) plain inverse
    # frequency gives absent ~0.1 and neutral ~2: the model then calls aspects present that are not
    # (synthetic demo: detection F1 0.48 with power 1, 1.00 with power 0.5, same budget).
    counts = torch.stack([torch.bincount(targets[:, a], minlength=num_states) for a in range(targets.shape[1])])
    weights = counts.float().clamp_min(1.0).reciprocal() ** power  # (A, S)
    return weights / weights.mean(dim=1, keepdim=True)


def aspect_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: torch.Tensor, gamma: float = 2.0):
    """Sum over aspects of common `focal_loss` on each aspect's (B, S) logits (batch mean inside).

    Summed, not averaged: each aspect is a classification task of its own, and the mean made the
    focal term ~A times smaller than SupCon, whose gradient then dominated the shared encoder."""
    return torch.stack([focal_loss(logits[:, a], targets[:, a], gamma, alpha[a])
                        for a in range(logits.shape[1])]).sum()


def positive_weights(targets: torch.Tensor) -> torch.Tensor:
    """(N, A) targets -> (N, N) positive weights for SupCon.

    Rule: Jaccard overlap of the sets of PRESENT (aspect, polarity) pairs,
    |L_i & L_j| / |L_i | L_j|; 1 for identical label sets, 0 when they share nothing (and for two
    reviews that mention no aspect at all: nothing says they are alike)."""
    # FIX(VSB-ABSENT-STATE): shared silence is not similarity; positives share present (aspect, polarity).
    # was: return (targets[:, None, :] == targets[None, :, :]).float().mean(dim=-1)
    present = F.one_hot(targets, NUM_STATES)[..., 1:].flatten(1).float()  # (N, A*3) present (aspect, polarity) pairs
    shared = present @ present.T  # (N, N) |L_i & L_j|
    union = present.sum(1)[:, None] + present.sum(1)[None, :] - shared
    return torch.where(union > 0, shared / union.clamp_min(1.0), torch.zeros_like(shared))


def supcon_multilabel(embeddings: torch.Tensor, weights: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SupCon (Khosla et al. 2020, L_out) with weighted positives, over L2-normalised embeddings."""
    # FIX(VSB-SUPCON-NO-POSITIVE): anchors without a positive are left out; 0 / 0 made the loss NaN.
    return supcon_loss(embeddings, positive_weights=weights, temperature=temperature)


def compute_losses(model, batch: dict, alpha: torch.Tensor, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Weighted focal + SupCon for one batch; the dict holds the total and each component."""
    # FIX(VSB-ABSENT-STATE): the head learns the data states; the original trained "not mentioned" as Neutral.
    targets = batch["labels"]  # (B, A): 0 absent, 1 positive, 2 negative, 3 neutral
    ids, mask = batch["input_ids"], batch["attention_mask"]
    # NOTE(deviation): with --loss contrastive the classifier learns on detached sentence vectors
    # (an online linear probe), so the encoder receives the contrastive gradient only.
    # FIX(VSB-ONE-PASS): one encoder pass feeds both losses; two passes saw different dropout masks.
    logits, embeddings = model(ids, mask, return_embeddings=True, detach_classifier_input=cfg.loss == "contrastive")
    out = {}
    if cfg.loss in ("both", "focal"):
        out["focal"] = aspect_focal_loss(logits, targets, alpha, cfg.gamma)
    if cfg.loss in ("both", "contrastive"):
        out["supcon"] = supcon_multilabel(embeddings, positive_weights(targets), cfg.temperature)
    if cfg.loss == "contrastive":
        out["probe"] = aspect_focal_loss(logits, targets, alpha, cfg.gamma)
    if cfg.loss == "both":
        out["loss"] = cfg.w_focal * out["focal"] + cfg.w_con * out["supcon"]
    elif cfg.loss == "focal":
        out["loss"] = out["focal"]
    else:
        out["loss"] = cfg.w_con * out["supcon"] + out["probe"]
    return out
