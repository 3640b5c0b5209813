"""Each visobert_multitask fix: its symptom on the baseline behaviour, and its absence after the fix.

The baseline behaviour is reproduced here (the old lines, computed inline or kept as `_baseline_*`)."""

import torch
import torch.nn.functional as F

from visobert_multitask.data import ABSENT, NEGATIVE, NEUTRAL, POSITIVE
from visobert_multitask.losses import (
    NUM_STATES,
    positive_weights,
    predicted_states,
    supcon_multilabel,
    training_targets,
)
from visobert_multitask.model import ModelConfig


def _baseline_supcon_per_anchor(embeddings, weights, temperature=0.07):
    """The baseline's SupCon before the mean: each anchor's loss divided by its positive count."""
    self_mask = torch.eye(embeddings.shape[0], dtype=torch.bool)
    logits = (embeddings @ embeddings.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = (logits - torch.logsumexp(logits, dim=1, keepdim=True)).masked_fill(self_mask, 0.0)
    pos = weights.masked_fill(self_mask, 0.0)
    return -(pos * log_prob).sum(dim=1) / pos.sum(dim=1)


def test_vsb_supcon_no_positive_anchor_is_skipped_not_nan():
    """VSB-SUPCON-NO-POSITIVE: one anchor without a positive made the baseline loss NaN."""
    embeddings = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    weights = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.5, 0.0], [0.0, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    baseline = _baseline_supcon_per_anchor(embeddings, weights)
    assert torch.isnan(baseline.mean())  # anchor 3 shares nothing with the rest of the batch
    fixed = supcon_multilabel(embeddings, weights)
    torch.testing.assert_close(fixed, baseline[:3].mean())  # the anchors that have a positive
    fixed.backward()
    assert torch.isfinite(embeddings.grad).all()
    lonely = supcon_multilabel(embeddings, torch.eye(4))  # no anchor has a positive
    assert lonely.item() == 0.0 and lonely.requires_grad
    full = torch.ones(4, 4)  # every anchor has positives: the fix changes nothing
    torch.testing.assert_close(supcon_multilabel(embeddings, full), _baseline_supcon_per_anchor(embeddings, full).mean())


def test_vsb_absent_state_not_mentioned_is_not_neutral():
    """VSB-ABSENT-STATE: the baseline trained "aspect not mentioned" and "neutral opinion" as one class."""
    labels = torch.tensor([[ABSENT, POSITIVE, ABSENT], [NEUTRAL, POSITIVE, ABSENT], [ABSENT, ABSENT, NEGATIVE]])
    baseline_targets = torch.where(labels == ABSENT, torch.full_like(labels, NEUTRAL), labels) - 1
    assert baseline_targets[0, 0] == baseline_targets[1, 0]  # no battery mention == "battery is so-so"
    targets = training_targets(labels)
    assert NUM_STATES == 4 and ModelConfig().num_states == 4
    assert targets[0, 0] != targets[1, 0]
    assert torch.equal(predicted_states(F.one_hot(targets, NUM_STATES).float()), labels)  # "absent" can be predicted
    # SupCon positives: the baseline rule made reviews 0 and 2 (no aspect in common) positives,
    # because they agree on the slots neither mentions.
    baseline_weights = (baseline_targets[:, None, :] == baseline_targets[None, :, :]).float().mean(dim=-1)
    assert baseline_weights[0, 2] > 0.3
    weights = positive_weights(targets)
    assert weights[0, 2] == 0.0 and weights[0, 1] == 0.5 and weights[1, 1] == 1.0  # Jaccard of present pairs
    assert positive_weights(torch.zeros(2, 3, dtype=torch.long)).sum() == 0  # no aspects: no positive
