"""caer_clip fixes: each test shows the symptom on the baseline behaviour (reproduced inline) and its
absence with the fixed code. The test names carry the fix IDs of FIXES.md."""

import math

import torch
import torch.nn.functional as F

from caer_clip import losses as caer_losses


def similar_class_text(num_classes=5, per_class=3, cosine=0.8, dim=64):
    """Mean of `per_class` unit prompt features per class, classes at cosine ~0.8 (as CLIP descriptors)."""
    g = torch.Generator().manual_seed(0)
    shared = F.normalize(torch.randn(dim, generator=g), dim=0)
    own = F.normalize(torch.randn(num_classes, 1, dim, generator=g), dim=-1)
    classes = F.normalize(math.sqrt(cosine) * shared + math.sqrt(1 - cosine) * own, dim=-1)
    noise = F.normalize(torch.randn(num_classes, per_class, dim, generator=g), dim=-1)
    prompts = F.normalize(classes + 0.3 * noise, dim=-1)
    return prompts.mean(dim=1)  # (C, D), norm < 1


def test_caer_ldl_norm_loss_is_not_tiny_at_chance():
    class_text = similar_class_text().requires_grad_(True)
    target = torch.arange(5)
    uniform_logits = torch.zeros(5, 5)
    # Baseline: raw similarity at temperature 1 -> q nearly uniform, KL ~0.01 at chance.
    q_old = F.softmax((class_text @ class_text.T)[target], dim=-1)
    kl_old = F.kl_div(F.log_softmax(uniform_logits, -1), q_old, reduction="batchmean")
    assert q_old.diagonal().max() < 0.3 and kl_old < 0.02
    # Fixed: the target peaks on the true class and chance predictions cost a lot.
    loss = caer_losses.semantic_ldl_loss(uniform_logits.requires_grad_(True), target, class_text, 0.1)
    assert loss > 0.3
    loss.backward()
    assert class_text.grad is None  # targets are detached from the prompts
    # Perfect predictions drive the loss towards zero.
    text = F.normalize(class_text.detach(), dim=-1)
    good_logits = torch.log(F.softmax((text @ text.T) / 0.1, dim=-1))
    assert caer_losses.semantic_ldl_loss(good_logits, target, class_text, 0.1) < 1e-4






































