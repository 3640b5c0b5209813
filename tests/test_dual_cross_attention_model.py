"""DCAL model internals: attention rollout, GLCA selection, gradient checkpointing, weight loading."""

import pytest
import torch
import torchvision

from dual_cross_attention.model import (
    DCAL,
    DCALConfig,
    UncertaintyWeighting,
    derangement,
    load_pretrained,
    resample_pos_embed,
)
from dual_cross_attention.train import read_pretrained
from tests.fixtures_dual_cross_attention import tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)


def test_uncertainty_weighting_form():
    """0.5 * sum(exp(-s_i) L_i + s_i), at s = 0 half the sum of the losses (moved from common/losses.py)."""
    uw = UncertaintyWeighting(3)
    losses = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)]
    assert uw(losses).item() == pytest.approx(0.5 * 6.0)


def model_cfg(**kw):
    return tiny_cfg(**{"depth": 3, **kw})


def peaked(model):
    """Random init gives near-uniform attention, where every rollout order agrees; larger q/k
    weights give peaked, input-dependent maps."""
    with torch.no_grad():
        for blk in [*model.blocks, model.glca_block]:
            blk.attn.qkv.weight.mul_(8.0)
    return model


def _materialised_attention_maps(model, images):
    """Every SA layer's (B, H, N, N) attention, computed explicitly (no fused kernel)."""
    maps, x = [], model.embed(images)
    for blk in model.blocks:
        q, k, v = blk.attn.split_qkv(blk.norm1(x))
        attn = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1)
        maps.append(attn)
        x = x + blk.attn.merge(attn @ v)
        x = x + blk.mlp(blk.norm2(x))
    return maps


def _direct_rollout(maps):
    """Abnar & Zuidema 2020: S_hat_L = S_bar_L ... S_bar_1, S_bar = 0.5 mean_h(A) + 0.5 I."""
    n = maps[0].shape[-1]
    result = torch.eye(n).expand(maps[0].shape[0], n, n)
    for attn in maps:
        result = (0.5 * attn.mean(dim=1) + 0.5 * torch.eye(n)) @ result
    return result


def test_dcal_rollout_matches_direct_computation_from_materialised_maps():
    """DCAL-ROLLOUT: the no_grad running-buffer rollout equals the product of explicitly
    materialised maps from the first layer up (the baseline multiplied them in the reverse order),
    carries no graph, and no block keeps its attention map."""
    model = peaked(DCAL(model_cfg()))
    images = torch.randn(3, 3, 16, 16)
    out = model(images, partner=derangement(3), need_rollout=True)  # training mode, grad enabled
    with torch.no_grad():
        maps = _materialised_attention_maps(model, images)
    direct = _direct_rollout(maps)
    torch.testing.assert_close(out["rollout"], direct, atol=1e-5, rtol=1e-5)
    assert not out["rollout"].requires_grad  # no graph kept for the rollout
    torch.testing.assert_close(out["rollout"].sum(-1), torch.ones(3, 17))  # rows stay stochastic
    assert not any(hasattr(blk, "attn_weights") for blk in model.blocks)  # no attention kept on modules


def test_glca_queries_are_cls_and_top_r_patches_keys_all_tokens():
    model = peaked(DCAL(model_cfg(top_ratio=0.25))).eval()  # 16 patches -> R = 4
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model(images)
        rollout = _direct_rollout(_materialised_attention_maps(model, images))
        x = model.embed(images)
        for blk in model.blocks[:-1]:
            x = blk(x)[0]
        top = rollout[:, 0, 1:].topk(4, dim=-1).indices + 1
        idx = torch.cat([torch.zeros(2, 1, dtype=torch.long), top], 1)
        g = model.glca_block
        q, k, v = g.attn.split_qkv(g.norm1(x))
        q_sel = torch.stack([q[i][:, idx[i]] for i in range(2)])  # (B, H, 1+R, d)
        attn = ((q_sel @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1)  # over ALL N keys
        y = torch.stack([x[i, idx[i]] for i in range(2)]) + g.attn.merge(attn @ v)
        y = y + g.mlp(g.norm2(y))
        expected = model.glca_head(model.glca_norm(y.mean(dim=1)))  # the mean of CLS + R query outputs
        model.cfg.glca_mode = "cls-query"  # the Cross-ViT-like baseline: the CLS query alone, read alone
        cls_query = model(images)["glca"]
    assert model.cfg.num_local == 4
    torch.testing.assert_close(out["glca"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls_query, model.glca_head(model.glca_norm(y[:, 0])), atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_logits_and_gradients():
    images, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    partner = derangement(4)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = DCAL(model_cfg(grad_checkpoint=ckpt))
        out = model(images, partner=partner)
        model.loss_weighting([torch.nn.functional.cross_entropy(out[k], y) for k in ("sa", "glca", "pwca")]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_pos_embed_resample_keeps_cls_and_is_identity_at_same_size():
    pos = torch.randn(1, 1 + 14 * 14, 8)
    assert resample_pos_embed(pos, 14) is pos
    out = resample_pos_embed(pos, 28)
    assert out.shape == (1, 1 + 28 * 28, 8)
    assert torch.equal(out[:, 0], pos[:, 0])  # CLS untouched, not interpolated with the grid
    flat = torch.cat([torch.randn(1, 1, 8), torch.full((1, 196, 8), 0.7)], 1)
    torch.testing.assert_close(resample_pos_embed(flat, 28)[:, 1:], torch.full((1, 784, 8), 0.7))


def _vit_b16_cfg(**kw):
    return DCALConfig(**{**dict(image_size=224, num_classes=1000, drop_path=0.0, pwca=False), **kw})


@pytest.mark.slow
def test_torchvision_vit_b_16_random_init_loads_to_same_logits():
    tv = torchvision.models.vit_b_16(weights=None).eval()
    with torch.no_grad():
        tv.heads.head.weight.normal_(0, 0.02)  # torchvision zero-inits the head: logits would all be 0
    model = DCAL(_vit_b16_cfg()).eval()
    info = load_pretrained(model, tv.state_dict())
    assert info["source"] == "torchvision" and info["head_loaded"]
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected, ours = tv(images), model(images)["sa"]
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_timm_vit_random_init_loads_to_same_logits_and_resamples_to_448():
    timm = pytest.importorskip("timm", reason="timm is optional: pip install timm")
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    cfg = dict(embed_dim=192, num_heads=3)
    model = DCAL(_vit_b16_cfg(**cfg)).eval()
    load_pretrained(model, ref.state_dict())
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(images)["sa"], ref(images), atol=1e-5, rtol=1e-5)
    # 448 px, 200 classes: position embeddings resampled 14x14 -> 28x28, a fresh head
    big = DCAL(_vit_b16_cfg(image_size=448, num_classes=200, **cfg))
    info = load_pretrained(big, ref.state_dict())
    assert not info["head_loaded"] and info["pos_embed"] == "197 -> 785 tokens"
    torch.testing.assert_close(big.pos_embed[:, 0], ref.pos_embed[:, 0])


def test_load_rejects_wrong_depth_and_foreign_keys():
    small = DCAL(tiny_cfg(image_size=32, patch_size=16, depth=2))
    source = DCAL(tiny_cfg(image_size=32, patch_size=16, depth=2))
    timm_style = {("patch_embed.proj." + k[len("patch_embed."):] if k.startswith("patch_embed") else k): v
                  for k, v in source.state_dict().items() if not k.startswith(("glca", "loss_weighting"))}
    load_pretrained(small, timm_style)
    with pytest.raises(KeyError, match="missing"):
        load_pretrained(DCAL(tiny_cfg(image_size=32, patch_size=16, depth=3)), timm_style)
    with pytest.raises(KeyError, match="dist_token"):
        load_pretrained(small, {**timm_style, "dist_token": torch.zeros(1, 1, 32)})  # a distilled DeiT
    with pytest.raises(ValueError, match="shape"):
        load_pretrained(DCAL(tiny_cfg(image_size=32, patch_size=16, depth=2, embed_dim=64)), timm_style)


def test_pretrained_torchvision_fails_with_a_clear_message_offline(monkeypatch):
    from torchvision.models import ViT_B_16_Weights

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(type(ViT_B_16_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="could not download.*--pretrained PATH"):
        read_pretrained("torchvision")
