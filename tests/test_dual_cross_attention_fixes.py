"""One test (at least) per DCAL fix: the symptom on the baseline behaviour, gone after the fix."""

import contextlib
import csv
import gc
import warnings

import pytest
import torch

from common.runtime import EpochSampler, NonFiniteLossError, make_grad_scaler, make_loader
from dual_cross_attention import train as dcal_train
from dual_cross_attention.data import SyntheticFineGrained
from dual_cross_attention.model import DCAL, compute_losses, load_pretrained
from dual_cross_attention.train import backward_micro_batch, build_optimizer, evaluate, main
from tests.fixtures_dual_cross_attention import run_config, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)


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
    groups = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
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


def test_dcal_pwca_is_a_full_stream_through_all_blocks():
    """DCAL-PWCA: the PWCA logits equal a T = L block stream with [own; partner] keys at every
    layer (the baseline computed PWCA from the SA stream and only the last block's reached the head)."""
    torch.manual_seed(0)
    model = DCAL(tiny_cfg(depth=3)).eval()
    images, partner = torch.randn(4, 3, 16, 16), torch.tensor([2, 3, 1, 0])
    with torch.no_grad():
        out = model(images, partner=partner)
        ref_sa, ref_pwca = _reference_sa_pwca_logits(model, images, partner)
    torch.testing.assert_close(out["sa"], ref_sa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pwca"], ref_pwca, atol=1e-5, rtol=1e-5)
    # the partner matters from the first layer on: another partner, other PWCA logits, same SA logits
    with torch.no_grad():
        other = model(images, partner=torch.tensor([1, 2, 3, 0]))
    torch.testing.assert_close(other["sa"], out["sa"])
    assert (other["pwca"] - out["pwca"]).abs().max() > 1e-4


def _fit_loss_weights(weighting, params, losses, steps=300):
    optimizer = torch.optim.Adam(params, lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        weighting(losses).backward()
        optimizer.step()
    optimizer.zero_grad()
    weighting(losses).backward()


def test_dcal_uncertainty_clamped_weight_stops_learning_fixed_one_converges():
    """DCAL-UNCERTAINTY: a log-variance past the seed's clamp bounds [-2, 2] still gets the gradient
    0.5 * (1 - exp(-s) L) through the loss the training loop computes (clamped, it got exactly 0
    there and stayed for good); fitted, the weights converge to exp(-s) = 1/L (similar losses give
    similar weights: that is the optimum, not a bug)."""
    torch.manual_seed(0)
    model = DCAL(tiny_cfg())
    weighting = model.loss_weighting
    with torch.no_grad():
        next(weighting.parameters()).copy_(torch.tensor([3.0, -3.0, 2.5]))  # all three past a bound
    images, labels = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    total, parts, _ = compute_losses(model, images, labels, use_pwca=True)
    total.backward()
    s, branch_losses = weighting.log_vars.detach(), torch.stack([parts[b].detach() for b in ("sa", "glca", "pwca")])
    expected = 0.5 * (1 - torch.exp(-s) * branch_losses)  # d total / d s_i, by hand
    assert expected.abs().min() > 0.1
    torch.testing.assert_close(next(weighting.parameters()).grad, expected)

    losses = [torch.tensor(20.0), torch.tensor(0.02), torch.tensor(1.0)]  # optima s = log L = 3.0, -3.9, 0
    weighting = DCAL(tiny_cfg()).loss_weighting
    _fit_loss_weights(weighting, weighting.parameters(), losses, steps=600)
    torch.testing.assert_close(weighting.log_vars.detach(), torch.tensor([20.0, 0.02, 1.0]).log(), atol=0.05, rtol=0)
    torch.testing.assert_close(weighting.effective_weights(), 0.5 / torch.tensor([20.0, 0.02, 1.0]), rtol=0.06, atol=0)
    # equal branch losses -> equal weights: the seed's "weights too similar" warning was the optimum
    fresh = DCAL(tiny_cfg()).loss_weighting
    _fit_loss_weights(fresh, fresh.parameters(), [torch.tensor(2.3)] * 3, steps=200)
    assert fresh.effective_weights().std() < 1e-6


def _live_tensors() -> tuple[int, int, int]:
    """(count, bytes, count attached to an autograd graph) of the tensors Python can still reach."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on torch's deprecated module aliases warns
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [o for o in gc.get_objects() if torch.is_tensor(o)]
    return (len(tensors), sum(t.numel() * t.element_size() for t in tensors),
            sum(t.grad_fn is not None for t in tensors))


def test_dcal_memory_does_not_grow_over_30_steps(tmp_path, monkeypatch):
    """DCAL-MEMORY: a 30-step main() run; the live tensors are counted with gc as the loop enters
    the last micro-batch of the first and of the fifth epoch (steps 5 and 29, the same place in an
    epoch). The seed kept each step's loss and outputs for its metrics, 4 more tensors with their
    autograd graph per step (+96 here); the detached running means keep count and bytes flat."""
    live = {}
    real_backward = dcal_train.backward_micro_batch

    def counting_backward(model, images, labels, scaler, cfg, sync, step):
        if step in (5, 29):
            live[step] = _live_tensors()
        return real_backward(model, images, labels, scaler, cfg, sync, step)

    monkeypatch.setattr(dcal_train, "backward_micro_batch", counting_backward)
    results = main(TINY_RUN + ["--batch-size", "8", "--epochs", "5", "--max-iters", "30", "--num-overlays", "0",
                               "--out", str(tmp_path / "run")])
    assert results["step"] == 30 and sorted(live) == [5, 29]  # 48 images / 8: 6 steps per epoch
    (count_5, bytes_5, graph_5), (count_29, bytes_29, graph_29) = live[5], live[29]
    assert graph_29 == graph_5, f"{graph_29 - graph_5} more graph-attached tensors after 24 steps"
    assert count_29 == count_5 and bytes_29 == bytes_5
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "run" / "log.csv")) if r["loss"]]
    assert len(losses) == 30 and all(0.0 < loss < 10.0 for loss in losses)  # the means are still logged


def test_dcal_nonfinite_loss_stops_the_run_naming_the_component(tmp_path):
    """DCAL-NONFINITE: the baseline printed a warning and kept training NaN weights; the fixed
    loop raises NonFiniteLossError naming the branch."""
    model = DCAL(tiny_cfg())
    with torch.no_grad():
        model.glca_head.bias[0] = float("nan")  # only the GLCA branch goes bad
    images, labels = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    cfg = run_config()  # PWCA on, no accumulation, CPU
    with pytest.raises(NonFiniteLossError, match="glca=nan"):  # the micro-batch step the training loop runs
        backward_micro_batch(model, images, labels, make_grad_scaler(cfg.device, None), cfg, True, 0)
    assert all(p.grad is None for p in model.parameters())  # stopped before any gradient was written
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
    """DCAL-ACCUM: two micro-batches through the loop's backward_micro_batch add up to the
    full-batch gradient (un-normalised, the baseline gave accum_steps x it), and DDP is asked to
    skip the all-reduce on the non-stepping micro-batch only."""
    model = DCAL(tiny_cfg(pwca=False))  # per-sample model: micro-batches must add up exactly
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    scaler = make_grad_scaler(torch.device("cpu"), None)
    full_batch, two_micro_batches = run_config("--no-pwca"), run_config("--no-pwca", "--accum-steps", "2")

    def grads():
        g = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return g

    backward_micro_batch(model, images, labels, scaler, full_batch, True, 0)
    full = grads()
    spy = _NoSyncSpy(model)
    for j, half in enumerate((slice(0, 4), slice(4, 8))):
        backward_micro_batch(spy, images[half], labels[half], scaler, two_micro_batches, j == 1, 0)
    accumulated = grads()
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], atol=1e-6, rtol=1e-4)
    assert spy.no_sync_calls == 1  # only the first, non-stepping micro-batch skipped the sync


def _val_loader(dataset, batch_size):
    sampler = EpochSampler(len(dataset), batch_size, shuffle=False, drop_last=False)
    return make_loader(dataset, sampler, workers=0, seed=0)


# Per image (image i is the tensor [i]), 4 classes: SA and GLCA logits chosen so that summing
# logits and summing probabilities pick different classes for image 0.
_SA_LOGITS = torch.tensor([[0.0, 5, 0, 0], [0, 0, 4, 0], [6, 0, 0, 0], [0, 0, 3, 0]])
_GLCA_LOGITS = torch.tensor([[20.0, 0, 19, 0], [0, 0, 4, 0], [0, 0, 0, 7], [0, 0, 3, 0]])
_LABELS = torch.tensor([1, 2, 3, 0])


class _FixedLogits(torch.nn.Module):
    """Known SA / GLCA logits per image; with a partner it also returns PWCA logits (the partner's
    SA logits, as a batch-dependent branch would). Records the partner of every call."""

    def __init__(self):
        super().__init__()
        self.partners = []

    def forward(self, images, partner=None):
        index = images[:, 0].long()
        self.partners.append(partner)
        out = {"sa": _SA_LOGITS[index], "glca": _GLCA_LOGITS[index]}
        if partner is not None:
            out["pwca"] = _SA_LOGITS[index[partner]]
        return out


def test_dcal_eval_no_pwca_and_sa_plus_glca_probabilities():
    """DCAL-EVAL: evaluate() calls the model without a PWCA partner and predicts with
    softmax(SA) + softmax(GLCA); the baseline passed in-batch partners and summed raw SA, GLCA and
    PWCA logits, so a prediction depended on its batch and on the heads' logit scales."""
    stub = _FixedLogits()
    batches = [(torch.tensor([[0.0], [1.0]]), _LABELS[:2], None), (torch.tensor([[2.0], [3.0]]), _LABELS[2:], None)]
    cfg = run_config()  # the CPU, fp32
    result = evaluate(stub, batches, cfg)
    assert stub.partners == [None, None]
    # by hand: image 0: SA p(1) ~ 0.98 beats GLCA's 0.73 for class 0 (logit sums would pick 0);
    # images 1, 2 right; image 3 wrong in both heads
    assert result == {"top1": 3 / 4, "top1_sa": 2 / 4, "top1_glca": 2 / 4}
    assert stub.training  # evaluate hands the model back in training mode

    # a real DCAL: the same numbers whatever the batch size (no batch-mate takes part)
    torch.manual_seed(0)
    model = DCAL(tiny_cfg(num_classes=4))
    with torch.no_grad():  # sharper logits, so any batch-mate effect would change predictions
        model.head.weight.mul_(50.0)
        model.glca_head.weight.mul_(50.0)
    data = SyntheticFineGrained(24, num_classes=4, image_size=16, seed=0, split="val")
    assert evaluate(model, _val_loader(data, 8), cfg) == evaluate(model, _val_loader(data, 3), cfg)


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
