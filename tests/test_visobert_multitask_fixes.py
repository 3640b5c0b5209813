"""Each visobert_multitask fix: its symptom on the baseline behaviour, and its absence after the fix.

The baseline behaviour is reproduced here (the old lines, computed inline or kept as `_baseline_*`)."""

import torch
import torch.nn.functional as F

from visobert_multitask.losses import supcon_multilabel


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
