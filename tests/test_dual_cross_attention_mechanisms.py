"""DCAL mechanisms the other tests leave implicit: the rollout reaches the GLCA logits, and PWCA
has no weights of its own (it runs the SA blocks, norm and classifier). README: Mechanisms."""

import pytest
import torch

from dual_cross_attention import model as dcal_model
from dual_cross_attention.model import DCAL, derangement
from tests.test_dual_cross_attention_model import model_cfg, peaked

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)


def test_dcal_mechanism_rollout_reaches_the_glca_logits(monkeypatch):
    """With the rollout made inert (every layer's map uniform, so every patch ranks the same) the
    GLCA logits change and the SA logits do not: the rollout decides GLCA's queries."""
    torch.manual_seed(0)
    model = peaked(DCAL(model_cfg(top_ratio=0.25))).eval()  # 16 patches -> R = 4
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        out = model(images)

        def uniform(rollout, q, k):  # S_bar = 1/N everywhere: no patch attends more than another
            b, _, n, _ = q.shape
            return torch.full((b, n, n), 1.0 / n)

        monkeypatch.setattr(dcal_model, "rollout_step", uniform)
        inert = model(images)
    torch.testing.assert_close(inert["sa"], out["sa"])
    assert (inert["glca"] - out["glca"]).abs().max() > 1e-4


def test_dcal_mechanism_pwca_has_no_weights_of_its_own():
    """PWCA adds only its loss weight: the same parameters as the model without it. Moving an SA
    block's weights, the final norm or the SA classifier moves the PWCA logits as well."""
    with_pwca, without = DCAL(model_cfg()), DCAL(model_cfg(pwca=False))
    assert {n: p.shape for n, p in with_pwca.named_parameters() if not n.startswith("loss_weighting")} == \
        {n: p.shape for n, p in without.named_parameters() if not n.startswith("loss_weighting")}
    torch.manual_seed(0)
    model = DCAL(model_cfg()).eval()
    images, partner = torch.randn(4, 3, 16, 16), derangement(4, generator=torch.Generator().manual_seed(0))
    for shared in (model.blocks[0].attn.qkv.weight, model.blocks[-1].mlp.fc2.weight, model.norm.weight,
                   model.head.weight):
        with torch.no_grad():
            before = model(images, partner=partner)["pwca"]
            shared.add_(0.1 * torch.randn_like(shared))
            after = model(images, partner=partner)["pwca"]
        assert (after - before).abs().max() > 1e-4
