"""One test (at least) per DCAL fix: the symptom on the baseline behaviour, gone after the fix."""

import contextlib
import csv
import gc
import warnings

import pytest
import torch

from common.runtime import EpochSampler, NonFiniteLossError, check_finite, make_grad_scaler
from dual_cross_attention.data import SyntheticParts
from dual_cross_attention.model import DCAL, derangement, load_pretrained
from dual_cross_attention.train import (
    RunningMeans,
    backward_micro_batch,
    build_optimizer,
    compute_losses,
    evaluate,
    main,
    make_loader,
)
from tests.fixtures_dual_cross_attention import single_thread, tiny_cfg  # noqa: F401


def _zero_grad_step(model, optimizer):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()


def test_dcal_wd_decoupled_and_no_decay_on_norms_tokens_loss_weights():
    """DCAL-WD: with a zero task gradient, coupled-L2 Adam moves every parameter by ~lr (LayerNorm
    gains, pos-embed, loss log-variances); AdamW decays matrices by exactly lr*wd*p and leaves
    the rest alone."""
    lr, wd = 1e-2, 0.05
    no_decay = ["blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "pos_embed", "cls_token", "norm.weight"]

    baseline = DCAL(tiny_cfg())
    with torch.no_grad():
        for p in baseline.loss_weighting.parameters():
            p.fill_(0.5)
    before = {n: p.detach().clone() for n, p in baseline.named_parameters()}
    _zero_grad_step(baseline, torch.optim.Adam(baseline.parameters(), lr=lr, weight_decay=wd))
    after = dict(baseline.named_parameters())
    # the L2 gradient wd*p is normalised by Adam: a first step moves each element by lr * sign(p)
    torch.testing.assert_close(after["blocks.0.norm1.weight"], before["blocks.0.norm1.weight"] - lr)
    for name, p_before in before.items():  # nothing non-zero escapes the decay, loss weights included
        assert p_before.abs().sum() == 0 or not torch.equal(p_before, after[name]), name

    model = DCAL(tiny_cfg())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _zero_grad_step(model, build_optimizer(model, lr, wd))
    after = dict(model.named_parameters())
    for name in no_decay + [n for n, _ in model.named_parameters() if n.startswith("loss_weighting")]:
        assert torch.equal(after[name], before[name]), name
    for name in ("blocks.0.attn.qkv.weight", "head.weight", "patch_embed.weight", "glca_block.mlp.fc1.weight"):
        torch.testing.assert_close(after[name], before[name] * (1 - lr * wd))


TINY_RUN = ["--synthetic-train", "48", "--synthetic-val", "16", "--synthetic-test", "16", "--synthetic-classes", "4",
            "--image-size", "16", "--embed-dim", "32", "--depth", "2", "--heads", "2", "--log-interval", "1"]


def test_dcal_wd_main_trains_with_decoupled_decay_and_no_decay_on_1d_tensors(tmp_path):
    """DCAL-WD through main(): the optimiser it trains with (its state in last.pt) is decoupled
    (AdamW) with two groups, the second (norms, biases, tokens, loss weights) without decay.
    The baseline's Adam(model.parameters(), weight_decay) had one coupled group."""
    main(TINY_RUN + ["--batch-size", "8", "--max-iters", "1", "--out", str(tmp_path / "run")])
    groups = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert all(g["decoupled_weight_decay"] for g in groups)
    model = DCAL(tiny_cfg())
    assert len(groups[1]["params"]) == sum(p.ndim < 2 or "pos" in n or "cls" in n or "token" in n
                                           for n, p in model.named_parameters())


@pytest.mark.slow
def test_dcal_lr_paper_rule_on_effective_batch_with_warmup(tmp_path):
    """DCAL-LR: the baseline's 5e-4*sqrt(batch/16) on the per-device batch gives 22x the paper's
    5e-4/512 x effective batch here; the fix uses batch x accumulation, warms up, and keeps the
    seed's sqrt rule as an option."""
    common = TINY_RUN + ["--batch-size", "8", "--accum-steps", "2", "--base-lr", "5e-4", "--max-iters", "3"]
    baseline_lr = 5e-4 * (8 / 16) ** 0.5
    summary = main(common + ["--out", str(tmp_path / "linear")])
    assert summary["effective_batch"] == 16
    assert summary["peak_lr"] == 5e-4 * 16 / 512 and baseline_lr / summary["peak_lr"] > 20
    rows = [r for r in csv.DictReader(open(tmp_path / "linear" / "log.csv")) if r["lr"]]
    # the default warm-up on the synthetic data: one epoch, 3 steps of 2 micro-batches
    assert summary["warmup_steps"] == 3 and abs(float(rows[0]["lr"]) / (summary["peak_lr"] / 3) - 1) < 1e-5  # warm-up
    sqrt = main(common + ["--lr-rule", "sqrt", "--out", str(tmp_path / "sqrt")])
    assert abs(sqrt["peak_lr"] - 5e-4) < 1e-12  # the seed's rule, now on the effective batch 16


def _explicit_attention(q, k, v):
    return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1) @ v


def _reference_sa_pwca_logits(model, images, partner):
    """Both streams block by block with explicitly materialised attention: at every layer the PWCA
    queries attend to [own keys; partner's SA keys] under one softmax over 2N keys."""
    x = model.embed(images)
    xp = x.clone()
    for blk in model.blocks:
        q, k, v = blk.attn.split_qkv(blk.norm1(x))
        qp, kp, vp = blk.attn.split_qkv(blk.norm1(xp))
        sa = _explicit_attention(q, k, v)
        pw = _explicit_attention(qp, torch.cat([kp, k[partner]], 2), torch.cat([vp, v[partner]], 2))
        x = x + blk.attn.merge(sa)
        x = x + blk.mlp(blk.norm2(x))
        xp = xp + blk.attn.merge(pw)
        xp = xp + blk.mlp(blk.norm2(xp))
    return model.head(model.norm(x[:, 0])), model.head(model.norm(xp[:, 0]))


def _baseline_pwca_logits(model, images, partner):
    """The baseline: the SA stream runs alone; only the last block computes a PWCA attention,
    from the SA stream's own queries, and only that reaches the head."""
    x = model.embed(images)
    for blk in model.blocks[:-1]:
        q, k, v = blk.attn.split_qkv(blk.norm1(x))
        x = x + blk.attn.merge(_explicit_attention(q, k, v))
        x = x + blk.mlp(blk.norm2(x))
    blk = model.blocks[-1]
    q, k, v = blk.attn.split_qkv(blk.norm1(x))
    xp = x + blk.attn.merge(_explicit_attention(q, torch.cat([k, k[partner]], 2), torch.cat([v, v[partner]], 2)))
    xp = xp + blk.mlp(blk.norm2(xp))
    return model.head(model.norm(xp[:, 0]))


def test_dcal_pwca_is_a_full_stream_through_all_blocks():
    """DCAL-PWCA: the PWCA logits equal a T = L block stream with [own; partner] keys at every
    layer; the baseline's single last-layer PWCA does not."""
    torch.manual_seed(0)
    model = DCAL(tiny_cfg(depth=3)).eval()
    images, partner = torch.randn(4, 3, 16, 16), torch.tensor([2, 3, 1, 0])
    with torch.no_grad():
        out = model(images, partner=partner)
        ref_sa, ref_pwca = _reference_sa_pwca_logits(model, images, partner)
        baseline = _baseline_pwca_logits(model, images, partner)
    torch.testing.assert_close(out["sa"], ref_sa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pwca"], ref_pwca, atol=1e-5, rtol=1e-5)
    assert (baseline - ref_pwca).abs().max() > 1e-3
    # the partner matters from the first layer on: another partner, other PWCA logits, same SA logits
    with torch.no_grad():
        other = model(images, partner=torch.tensor([1, 2, 3, 0]))
    torch.testing.assert_close(other["sa"], out["sa"])
    assert (other["pwca"] - out["pwca"]).abs().max() > 1e-4


class _BaselineClampedUncertainty(torch.nn.Module):
    """The baseline's loss weighting: log-variances clamped to [-2, 2]."""

    def __init__(self, num_tasks):
        super().__init__()
        self.log_vars = torch.nn.Parameter(torch.zeros(num_tasks))

    def forward(self, losses):
        s = self.log_vars.clamp(-2.0, 2.0)
        return 0.5 * (torch.exp(-s) * torch.stack(losses) + s).sum()


def _fit_loss_weights(weighting, params, losses, steps=300):
    optimizer = torch.optim.Adam(params, lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        weighting(losses).backward()
        optimizer.step()
    optimizer.zero_grad()
    weighting(losses).backward()


def test_dcal_uncertainty_clamped_weight_stops_learning_fixed_one_converges():
    """DCAL-UNCERTAINTY: a clamped log-variance pushed past its bound gets exactly zero gradient and
    stays there; the unbounded one keeps learning until exp(-s) = 1/L (similar losses give similar
    weights: that is the optimum, not a bug)."""
    losses = [torch.tensor(20.0), torch.tensor(0.02), torch.tensor(1.0)]  # optima s = log L = 3.0, -3.9, 0
    baseline = _BaselineClampedUncertainty(3)
    _fit_loss_weights(baseline, baseline.parameters(), losses)
    assert baseline.log_vars[0] > 2.0 and baseline.log_vars[1] < -2.0  # past the bounds...
    assert baseline.log_vars.grad[0] == 0 and baseline.log_vars.grad[1] == 0  # ...and frozen there

    model = DCAL(tiny_cfg())
    weighting = model.loss_weighting
    assert not any(isinstance(m, _BaselineClampedUncertainty) for m in model.modules())
    _fit_loss_weights(weighting, weighting.parameters(), losses, steps=600)
    torch.testing.assert_close(weighting.log_vars.detach(), torch.tensor([20.0, 0.02, 1.0]).log(), atol=0.05, rtol=0)
    torch.testing.assert_close(weighting.effective_weights(), 0.5 / torch.tensor([20.0, 0.02, 1.0]), rtol=0.06, atol=0)
    # equal branch losses -> equal weights: the seed's "weights too similar" warning was the optimum
    fresh = DCAL(tiny_cfg()).loss_weighting
    _fit_loss_weights(fresh, fresh.parameters(), [torch.tensor(2.3)] * 3, steps=200)
    assert fresh.effective_weights().std() < 1e-6


def _live_tensors() -> tuple[int, int]:
    """(count, bytes) of the tensors Python can still reach."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on torch's deprecated module aliases warns
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [o for o in gc.get_objects() if torch.is_tensor(o)]
    return len(tensors), sum(t.numel() * t.element_size() for t in tensors)


def _train_steps(model, optimizer, keep, steps, images, labels):
    for _ in range(steps):
        total, parts, out = compute_losses(model, images, labels, use_pwca=True)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        keep(total, parts, out)


def test_dcal_memory_does_not_grow_over_30_steps():
    """DCAL-MEMORY: 30 training steps. Keeping the loss/outputs for metrics (baseline) adds live
    tensors every step; the RunningMeans accumulator keeps the count and bytes flat."""
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    model = DCAL(tiny_cfg())
    optimizer = build_optimizer(model, 1e-3, 0.05)

    history = []
    _train_steps(model, optimizer, lambda total, parts, out: history.append({"loss": total, **out}), 5, images, labels)
    count_5, _ = _live_tensors()
    _train_steps(model, optimizer, lambda total, parts, out: history.append({"loss": total, **out}), 25, images, labels)
    count_30, _ = _live_tensors()
    assert count_30 - count_5 >= 25 * 4  # baseline: loss + 3 logits tensors (with graph) per step
    history.clear()

    meter = RunningMeans()

    def keep(total, parts, out):
        meter.update({"loss": total, **{f"loss_{k}": v for k, v in parts.items()}})

    _train_steps(model, optimizer, keep, 5, images, labels)
    count_5, bytes_5 = _live_tensors()
    _train_steps(model, optimizer, keep, 25, images, labels)
    count_30, bytes_30 = _live_tensors()
    assert count_30 == count_5 and bytes_30 == bytes_5
    assert meter.count == 30 and 0.0 < meter.pop_means()["loss_sa"] < 3.0


def test_dcal_nonfinite_loss_stops_the_run_naming_the_component(tmp_path, capsys):
    """DCAL-NONFINITE: the baseline printed a warning and kept training NaN weights; the fixed
    loop raises NonFiniteLossError naming the branch."""
    model = DCAL(tiny_cfg())
    with torch.no_grad():
        model.glca_head.bias[0] = float("nan")  # only the GLCA branch goes bad
    images, labels = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    total, parts, _ = compute_losses(model, images, labels, use_pwca=True)
    if not torch.isfinite(total):  # the baseline's check: a print, and the step goes on
        print("Warning: NaN/Inf in total loss")
    assert "Warning" in capsys.readouterr().out
    with pytest.raises(NonFiniteLossError, match="glca=nan"):
        check_finite({**parts, "total": total})
    # end to end: an absurd lr blows the weights up; train.py stops instead of going on
    with pytest.raises(NonFiniteLossError, match="sa="):
        main(TINY_RUN + ["--batch-size", "8", "--lr", "1e30", "--max-iters", "4", "--out", str(tmp_path / "run")])


class _NoSyncSpy(torch.nn.Module):
    """Stands in for DDP: forwards to the model and counts `no_sync()` entries."""

    def __init__(self, module):
        super().__init__()
        self.module, self.no_sync_calls = module, 0

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        self.no_sync_calls += 1
        yield


def test_dcal_accum_two_micro_batches_equal_one_full_batch_and_skip_sync():
    """DCAL-ACCUM: un-normalised accumulation (baseline) gives accum_steps x the full-batch
    gradient; the fix gives the full-batch gradient and asks DDP to skip the all-reduce on the
    non-stepping micro-batch."""
    model = DCAL(tiny_cfg(pwca=False))  # per-sample model: micro-batches must add up exactly
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    cpu, scaler = torch.device("cpu"), make_grad_scaler(torch.device("cpu"), None)

    def grads():
        g = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return g

    backward_micro_batch(model, images, labels, scaler, 1, True, False, cpu, None, 0)
    full = grads()
    for half in (slice(0, 4), slice(4, 8)):  # the baseline
        compute_losses(model, images[half], labels[half], use_pwca=False)[0].backward()
    baseline = grads()
    torch.testing.assert_close(baseline["head.weight"], 2 * full["head.weight"], atol=1e-6, rtol=1e-4)

    spy = _NoSyncSpy(model)
    for j, half in enumerate((slice(0, 4), slice(4, 8))):
        backward_micro_batch(spy, images[half], labels[half], scaler, 2, j == 1, False, cpu, None, 0)
    accumulated = grads()
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], atol=1e-6, rtol=1e-4)
    assert spy.no_sync_calls == 1  # only the first, non-stepping micro-batch skipped the sync


def _val_loader(dataset, batch_size):
    sampler = EpochSampler(len(dataset), batch_size, shuffle=False, drop_last=False)
    return make_loader(dataset, sampler, workers=0, seed=0)


def _baseline_evaluate(model, loader):
    """The baseline: PWCA on at evaluation (partner from the batch) and logits summed."""
    model.eval()
    preds = []
    with torch.no_grad():
        for images, labels, _ in loader:
            out = model(images, partner=derangement(labels.shape[0], generator=torch.Generator().manual_seed(0)))
            preds.append((out["sa"] + out["glca"] + out["pwca"]).argmax(-1))
    return torch.cat(preds)


def test_dcal_eval_no_pwca_and_sa_plus_glca_probabilities():
    """DCAL-EVAL: with PWCA on at evaluation a prediction depends on which images share its batch;
    the fixed evaluation gives the same top-1 for any batch size and uses softmax(SA)+softmax(GLCA)."""
    torch.manual_seed(0)
    model = DCAL(tiny_cfg(num_classes=4))
    with torch.no_grad():  # sharper logits, so the partner visibly changes the PWCA term
        model.head.weight.mul_(50.0)
        model.glca_head.weight.mul_(50.0)
    data = SyntheticParts(24, num_classes=4, image_size=16, seed=0, split="val")
    baseline_a = _baseline_evaluate(model, _val_loader(data, 8))
    baseline_b = _baseline_evaluate(model, _val_loader(data, 3))
    assert not torch.equal(baseline_a, baseline_b)

    cpu = torch.device("cpu")
    result_a = evaluate(model, _val_loader(data, 8), cpu, None)
    result_b = evaluate(model, _val_loader(data, 3), cpu, None)
    assert result_a == result_b and model.training  # evaluate restores training mode
    model.eval()
    with torch.no_grad():
        out = model(data.images)
    assert "pwca" not in out
    combined = (out["sa"].softmax(-1) + out["glca"].softmax(-1)).argmax(-1)
    assert result_a["top1"] == (combined == data.labels).double().mean().item()
    assert result_a["top1_sa"] == (out["sa"].argmax(-1) == data.labels).double().mean().item()
    assert result_a["top1_glca"] == (out["glca"].argmax(-1) == data.labels).double().mean().item()


def test_dcal_glca_init_copies_pretrained_last_block_and_keeps_loaded_tensors():
    """DCAL-GLCA-INIT: after loading, GLCA equals the pretrained last block and final norm
    (baseline: random), and no loaded tensor is re-initialised."""
    cfg = tiny_cfg(image_size=32, patch_size=16, depth=3)
    source = DCAL(cfg)
    pretrained = {k: v.clone() for k, v in source.state_dict().items() if not k.startswith(("glca", "loss_weighting"))}
    timm_style = {("patch_embed.proj." + k[len("patch_embed."):] if k.startswith("patch_embed") else k): v
                  for k, v in pretrained.items()}
    model = DCAL(cfg)
    baseline_glca = {k: v.clone() for k, v in model.glca_block.state_dict().items()}
    load_pretrained(model, timm_style)
    last = model.blocks[-1].state_dict()
    # the baseline's GLCA (left as constructed) is not the pretrained block
    assert not torch.equal(baseline_glca["attn.qkv.weight"], last["attn.qkv.weight"])
    for name, tensor in model.glca_block.state_dict().items():
        assert torch.equal(tensor, last[name]), name
    assert torch.equal(model.glca_norm.weight, model.norm.weight)
    for name, tensor in model.state_dict().items():
        if name in pretrained:
            assert torch.equal(tensor, pretrained[name]), f"{name} was re-initialised after loading"
