"""visobert_multitask/losses.py: alpha rule, per-aspect focal mean, SupCon positives."""

import torch

from common.losses import focal_loss
from visobert_multitask.losses import NUM_STATES, aspect_focal_loss, focal_alpha, positive_weights


def test_focal_alpha_is_normalised_inverse_frequency_power():
    targets = torch.tensor([[0], [0], [0], [0], [0], [0], [1], [1], [2], [3]])  # counts 6, 2, 1, 1
    inverse = focal_alpha(targets, NUM_STATES, power=1.0)[0]
    expected = torch.tensor([1 / 6, 1 / 2, 1.0, 1.0])
    torch.testing.assert_close(inverse, expected / expected.mean())
    sqrt = focal_alpha(targets, NUM_STATES, power=0.5)[0]
    torch.testing.assert_close(sqrt, expected.sqrt() / expected.sqrt().mean())
    torch.testing.assert_close(focal_alpha(targets, NUM_STATES, power=0.0), torch.ones(1, 4))
    unseen = focal_alpha(torch.zeros(5, 1, dtype=torch.long), NUM_STATES, power=1.0)
    assert torch.isfinite(unseen).all()  # states absent from the labels are counted once


def test_aspect_focal_loss_averages_common_focal_over_aspects():
    logits, targets = torch.randn(6, 3, NUM_STATES), torch.randint(0, NUM_STATES, (6, 3))
    alpha = torch.rand(3, NUM_STATES)
    expected = sum(focal_loss(logits[:, a], targets[:, a], 2.0, alpha[a]) for a in range(3)) / 3
    torch.testing.assert_close(aspect_focal_loss(logits, targets, alpha), expected)


def test_positive_weights_symmetric_jaccard_in_unit_interval():
    targets = torch.randint(0, NUM_STATES, (12, 5), generator=torch.Generator().manual_seed(0))
    w = positive_weights(targets)
    torch.testing.assert_close(w, w.T)
    assert (w >= 0).all() and (w <= 1).all()
    has_any = (targets > 0).any(dim=1)
    torch.testing.assert_close(w.diagonal(), has_any.float())
