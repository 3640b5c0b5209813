"""common/schedulers.py, common/mixup.py and the schedules one project keeps (caer_clip/train.py,
deepfake_effnet_lstm/metrics.py) against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from caer_clip.train import multistep_lr
from common.mixup import mixup, mixup_loss
from common.schedulers import scaled_lr, warmup_cosine_lr
from deepfake_effnet_lstm.metrics import PlateauController


def test_warmup_cosine_hand_computed():
    # base 1.0, warm-up 4 steps, cosine to 0.1 at step 14.
    assert warmup_cosine_lr(0, 1.0, 4, 14, 0.1) == pytest.approx(0.25)
    assert warmup_cosine_lr(3, 1.0, 4, 14, 0.1) == pytest.approx(1.0)
    assert warmup_cosine_lr(4, 1.0, 4, 14, 0.1) == pytest.approx(1.0)
    assert warmup_cosine_lr(9, 1.0, 4, 14, 0.1) == pytest.approx(0.55)  # half-way: (1 + 0.1) / 2
    assert warmup_cosine_lr(14, 1.0, 4, 14, 0.1) == pytest.approx(0.1)
    assert warmup_cosine_lr(99, 1.0, 4, 14, 0.1) == pytest.approx(0.1)
    quarter = 0.1 + 0.45 * (1 + math.cos(math.pi * 0.25))
    assert warmup_cosine_lr(6.5, 1.0, 4, 14, 0.1) == pytest.approx(quarter)


def test_multistep_official_caer_recipe():
    # 20 epochs, MultiStepLR [10, 15] x 0.1 (the official CLIP-CAER recipe, per epoch).
    assert [multistep_lr(e, 1e-2, [10, 15]) for e in (0, 9, 10, 14, 15, 19)] == pytest.approx(
        [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4])
    assert multistep_lr(0, 1.0, [5], warmup_steps=2) == pytest.approx(0.5)


def test_scaled_lr_rules():
    # DCAL: 5e-4 / 512 x 16 = 1.5625e-5; the seed's sqrt rule gives 5e-4 at batch 16 (32x more).
    assert scaled_lr(5e-4, 16, 512, "linear") == pytest.approx(1.5625e-5)
    assert scaled_lr(5e-4, 16, 16, "sqrt") == pytest.approx(5e-4)
    assert scaled_lr(5e-4, 64, 16, "sqrt") == pytest.approx(1e-3)
    assert scaled_lr(1e-3, 8, 20, "none") == 1e-3
    with pytest.raises(ValueError, match="unknown lr rule"):
        scaled_lr(1.0, 1, 1, "cubic")


def _torch_plateau(lr, min_lr, factor, patience, evals):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=factor, patience=patience, min_lr=min_lr)
    hits = 0
    for value in evals:
        sched.step(value)
        hits += opt.param_groups[0]["lr"] == min_lr
    return opt.param_groups[0]["lr"], hits


def test_plateau_controller_stops_at_min_lr_where_torch_never_reports_it():
    """DFD-MINLR-STOP background: min_lr = lr * 1e-5 with lr 1e-4 is 1e-9. torch reduces
    1e-4 -> ... -> 1e-8 and then stops: the next change (9e-9) is below eps=1e-8, so the lr stays
    at 1e-8 and `lr == min_lr` is never true. Our controller lands on min_lr and stops."""
    lr, min_lr = 1e-4, 1e-4 * 1e-5
    flat = [1.0] * 200
    torch_lr, torch_hits = _torch_plateau(lr, min_lr, 0.1, 2, flat)
    assert torch_lr > min_lr and torch_hits == 0

    ctl = PlateauController(lr, factor=0.1, patience=2, min_lr=min_lr)
    seen = []
    for value in flat:
        seen.append(ctl.step(value))
        if ctl.should_stop():
            break
    assert ctl.lr == min_lr and ctl.should_stop()
    assert len(seen) < 50
    assert seen[:3] == [lr, lr, lr] and seen[3] == pytest.approx(1e-5)  # reduce after patience+1 bad evals
    # The cut that reaches the floor lands on it exactly (1e-8 * 0.1 is 1.0000000000000005e-09 in
    # floats), so the stop comes one plateau round after it, not two.
    assert next(v for v in seen if v < 1.5e-9) == min_lr
    assert len(seen) - seen.index(min_lr) == 4  # the step that lands on it, then patience + 1 evaluations


def test_plateau_controller_cooldown_improvement_and_state_roundtrip():
    ctl = PlateauController(1.0, factor=0.5, patience=1, cooldown=2)
    for v in [1.0, 1.0, 1.0]:  # first is an improvement over inf; two bad evals > patience 1
        ctl.step(v)
    assert ctl.lr == 0.5
    ctl.step(1.0)
    ctl.step(1.0)  # cooldown: bad evals do not count
    assert ctl.lr == 0.5
    ctl.step(0.1)  # improvement resets the count
    state = ctl.state_dict()
    clone = PlateauController(9.0)
    clone.load_state_dict(state)
    assert clone.state_dict() == state
    with pytest.raises(ValueError, match="NaN"):
        ctl.step(float("nan"))


def test_mixup_returns_targets_of_permuted_samples_not_the_permutation():
    """CAER-MIXUP-TARGET background: y_b must be y[perm]."""
    x = torch.arange(8, dtype=torch.float32).view(8, 1)
    y = torch.tensor([3, 3, 4, 4, 0, 0, 1, 1])  # labels differ from any index pattern
    g = torch.Generator().manual_seed(1)
    mixed, y_a, y_b, lam = mixup(x, y, alpha=0.4, generator=g)
    # recover the permutation from the mixed values: mixed = lam*x + (1-lam)*x[perm]
    perm = torch.round((mixed.squeeze(1) - lam * x.squeeze(1)) / (1 - lam)).long()
    assert torch.equal(y_a, y)
    assert torch.equal(y_b, y[perm])
    assert not torch.equal(y_b, perm)


def test_mixup_shares_permutation_and_lambda_across_streams_and_video_shapes():
    face = torch.randn(4, 3, 2, 5, 5)  # (B, T, C, H, W)
    context = face * 2.0
    (mf, mc), _, _, lam = mixup([face, context], torch.arange(4), alpha=1.0,
                                generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mc, 2.0 * mf)
    assert 0.0 < lam < 1.0


def test_mixup_alpha_zero_is_identity_and_mixed_loss():
    x, y = torch.randn(5, 3), torch.randint(0, 3, (5,))
    out, y_a, y_b, lam = mixup(x, y, alpha=0.0)
    assert out is x and lam == 1.0 and torch.equal(y_a, y_b)
    logits = torch.randn(5, 3)
    yb = torch.roll(y, 1)
    expected = 0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, yb)
    torch.testing.assert_close(mixup_loss(F.cross_entropy, logits, y, yb, 0.3), expected)
