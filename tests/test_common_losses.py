"""common/losses.py against torch built-ins and hand-computed cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from common.losses import focal_loss, supcon_loss


def test_focal_gamma0_equals_cross_entropy():
    logits, y = torch.randn(32, 7), torch.randint(0, 7, (32,))
    torch.testing.assert_close(focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y))


def test_focal_alpha_and_gamma_match_definition():
    logits, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4])
    p_t = F.softmax(logits, -1)[torch.arange(16), y]
    expected = (-alpha[y] * (1 - p_t) ** 2 * p_t.log()).mean()
    torch.testing.assert_close(focal_loss(logits, y, gamma=2.0, alpha=alpha), expected)


def test_focal_mask_ignores_samples_and_empty_mask_is_zero_with_grad():
    logits = torch.randn(6, 3, requires_grad=True)
    y = torch.randint(0, 3, (6,))
    mask = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    torch.testing.assert_close(focal_loss(logits, y, gamma=0.0, mask=mask), F.cross_entropy(logits[mask], y[mask]))
    empty = focal_loss(logits, y, mask=torch.zeros(6, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0 and logits.grad is not None


def test_supcon_hand_computed_three_samples():
    # Three 2-d unit vectors, labels [0, 0, 1], T = 1 for readable numbers.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    # anchor 0: positive 1 (sim 0), other 2 (sim -1): -log(e^0 / (e^0 + e^-1))
    a0 = -math.log(1.0 / (1.0 + math.exp(-1.0)))
    # anchor 1: positive 0 (sim 0), other 2 (sim 0): -log(1/2)
    a1 = math.log(2.0)
    # anchor 2 has no positive: contributes nothing.
    expected = (a0 + a1) / 2
    assert supcon_loss(z, y, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)


def test_supcon_no_positive_anywhere_is_zero_not_nan():
    z = torch.randn(4, 8, requires_grad=True)
    loss = supcon_loss(z, torch.arange(4))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert torch.isfinite(z.grad).all()


def test_supcon_positive_weights_equal_labels_and_two_views():
    z = torch.randn(6, 2, 16)
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    weights = (y[:, None] == y[None, :]).float()
    torch.testing.assert_close(supcon_loss(z, y), supcon_loss(z, positive_weights=weights))
