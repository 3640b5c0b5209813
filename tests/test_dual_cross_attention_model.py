"""DCAL model internals: attention rollout, GLCA selection, gradient checkpointing."""

import torch

from dual_cross_attention.model import DCAL, derangement
from tests.fixtures_dual_cross_attention import single_thread, tiny_cfg  # noqa: F401


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


def _baseline_rollout(maps):
    """The baseline's rollout: (A + I) renormalised, multiplied in the reverse order."""
    n = maps[0].shape[-1]
    eye = torch.eye(n)
    result = eye.expand(maps[0].shape[0], n, n)
    for attn in maps:
        a = attn.mean(dim=1) + eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = result @ a
    return result


def test_dcal_rollout_matches_direct_computation_from_materialised_maps():
    """DCAL-ROLLOUT: the no_grad running-buffer rollout equals the product of explicitly
    materialised maps from the first layer up; the baseline's reversed product does not."""
    model = peaked(DCAL(model_cfg()))
    images = torch.randn(3, 3, 16, 16)
    out = model(images, partner=derangement(3), need_rollout=True)  # training mode, grad enabled
    with torch.no_grad():
        maps = _materialised_attention_maps(model, images)
    direct = _direct_rollout(maps)
    torch.testing.assert_close(out["rollout"], direct, atol=1e-5, rtol=1e-5)
    assert (_baseline_rollout(maps) - direct).abs().max() > 1e-3
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
        expected = model.glca_head(model.glca_norm(y[:, 0]))
    assert model.cfg.num_local == 4
    torch.testing.assert_close(out["glca"], expected, atol=1e-5, rtol=1e-5)


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
