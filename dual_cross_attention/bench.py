"""Cost of DCAL, measured in one run.

    python dual_cross_attention/bench.py            # CPU parts (a few minutes on 2 cores); GPU parts if CUDA

1. DCAL training step (SA + GLCA + PWCA + rollout) / plain ViT training step, ViT-S/16 sized, and
   the FLOP ratio it should approach (target <= 2.5; the paper reports ~1.8x training time).
2. Our ViT forward+backward / torchvision's vit_b_16 at the same size (target <= 1.10).
3. Activation memory with and without gradient checkpointing, batch 4 at 448 px (CPU: bytes the
   autograd graph holds at the end of the forward; CUDA: torch.cuda.max_memory_allocated).
4. Memory over 30 consecutive training steps (it must stay flat).
5. The DCAL training step compiled / eager (`--compile`, the compile timed apart; bf16 on CUDA) and the
   AdamW step fused / foreach / plain.
CPU sizes are cut down (batch, image size) so the run stays within a few minutes; each line says
what it ran. Times are measured as common/tools/bench.py measures them (median wall time, CUDA synchronised,
the compared models timed in turn).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

import argparse
import gc
import warnings

import torch

from common.runtime import decay_param_groups
from common.tools.bench import compile_and_optimiser_ratios, method, time_in_turn
from dual_cross_attention.model import DCAL, DCALConfig, compute_losses, derangement

VIT_S16 = dict(embed_dim=384, depth=12, num_heads=6, patch_size=16)
VIT_B16 = dict(embed_dim=768, depth=12, num_heads=12, patch_size=16)


def train_flops(cfg: DCALConfig, batch: int) -> float:
    """Analytic FLOPs of one training step (forward + backward = 3x forward for trained parts;
    the rollout runs under no_grad, forward only). 2 FLOPs per multiply-add."""
    n, d, depth = cfg.grid**2 + 1, cfg.embed_dim, cfg.depth
    linear = 2 * 12 * n * d * d  # qkv (3D^2) + proj (D^2) + MLP (8D^2) per token
    sa = depth * (linear + 2 * 2 * n * n * d)  # + q k^T and attn @ v
    total = 3 * sa
    if cfg.pwca:
        total += 3 * depth * (linear + 2 * 2 * n * (2 * n) * d)  # queries against 2N keys
    if cfg.glca:
        r = cfg.num_local + 1
        # K/V of all N tokens; Q, proj and MLP of the 1 + R selected ones; their attention over N keys
        glca = 2 * 2 * n * d * d + 2 * 10 * r * d * d + 2 * 2 * r * n * d
        rollout = depth * (2 * n * n * d + 2 * n**3)  # head-averaged map + running product
        total += 3 * glca + rollout
    return batch * total


def inference_flops(cfg: DCALConfig) -> dict[str, float]:
    """Forward FLOPs of one image: the SA ViT, the GLCA block alone and the rollout that ranks its queries."""
    n, d, r = cfg.grid**2 + 1, cfg.embed_dim, cfg.num_local + 1
    return {"sa": cfg.depth * (2 * 12 * n * d * d + 2 * 2 * n * n * d),
            "glca": 2 * 2 * n * d * d + 2 * 10 * r * d * d + 2 * 2 * r * n * d,
            "rollout": cfg.depth * (2 * n * n * d + 2 * n**3)}


def adamw(model) -> torch.optim.Optimizer:
    """The optimiser train.py builds (AdamW, no decay on 1-d tensors and tokens), at a fixed lr."""
    return torch.optim.AdamW(decay_param_groups(model, 0.05), lr=1e-4)


def train_step(model, optimizer, images, labels) -> None:
    total, _, _ = compute_losses(model, images, labels, model.cfg.pwca)
    total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def compare_steps(models: dict, images, labels, repeats: int) -> dict[str, float]:
    """Median seconds of a training step per model, the models timed in turn."""
    optimizers = {name: adamw(m) for name, m in models.items()}
    steps = {name: lambda m=m, o=optimizers[name]: train_step(m, o, images, labels) for name, m in models.items()}
    return time_in_turn(steps, repeats)


def forward_backward(model, images) -> None:
    logits = model(images)["sa"] if isinstance(model, DCAL) else model(images)
    logits.float().logsumexp(-1).sum().backward()
    model.zero_grad(set_to_none=True)


def saved_activation_bytes(model, images, partner) -> int:
    """Bytes the autograd graph holds for backward once the forward is done (peak activation
    memory without checkpointing; with it, the block inputs only, plus one block during backward)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # returning `t` itself would tie the tensor and its own graph node in a cycle

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(images, partner=partner)
    del out
    return sum(seen.values())


def live_tensor_bytes() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on torch's deprecated module aliases warns
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per measurement (the median counts)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="time the compiled step too (the compile takes minutes on a CPU)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"times: {method(args.repeats)}, compared models in turn")

    # 1. DCAL / plain ViT step time
    size, batch = (448, 8) if cuda else (224, 2)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 200, (batch,), device=device)
    base = dict(image_size=size, num_classes=200, drop_path=0.1, **(VIT_B16 if cuda else VIT_S16))
    configs = {name: DCALConfig(**base, **branches)
               for name, branches in (("plain", dict(glca=False, pwca=False)), ("dcal", dict(glca=True, pwca=True)))}
    timings = compare_steps({name: DCAL(cfg).to(device) for name, cfg in configs.items()}, images, labels, args.repeats)
    flops = {name: train_flops(cfg, batch) for name, cfg in configs.items()}
    arch = "ViT-B/16" if cuda else "ViT-S/16"
    print(f"[1] {arch} {size}px batch {batch}: plain step {timings['plain']:.3f} s, DCAL step "
          f"{timings['dcal']:.3f} s, "
          f"ratio {timings['dcal'] / timings['plain']:.2f} (target <= 2.5; FLOP ratio "
          f"{flops['dcal'] / flops['plain']:.2f}, {flops['dcal'] / 1e9:.0f} vs {flops['plain'] / 1e9:.0f} GFLOP)")

    deit = inference_flops(DCALConfig(preset="deit-tiny", image_size=224))
    print(f"[1b] inference FLOPs, DeiT-Tiny 224px, R = 10%: GLCA block {100 * deit['glca'] / deit['sa']:.1f}% of the "
          f"ViT's (the paper: ~2%), the rollout that ranks its queries {100 * deit['rollout'] / deit['sa']:.1f}% more")

    # 2. our ViT vs torchvision vit_b_16, forward + backward
    import torchvision

    size, batch = (224, 32) if cuda else (224, 1)
    images = torch.randn(batch, 3, size, size, device=device)
    plain_vit = DCALConfig(image_size=size, num_classes=1000, drop_path=0.0, glca=False, pwca=False, **VIT_B16)
    ours = DCAL(plain_vit).to(device)
    theirs = torchvision.models.vit_b_16(weights=None).to(device)
    result = time_in_turn({name: lambda m=m: forward_backward(m, images)
                           for name, m in (("ours", ours), ("torchvision", theirs))}, args.repeats)
    print(f"[2] ViT-B/16 {size}px batch {batch} fwd+bwd: ours {result['ours']:.3f} s, torchvision "
          f"{result['torchvision']:.3f} s, ratio {result['ours'] / result['torchvision']:.2f} (target <= 1.10)")
    del ours, theirs

    # 3. memory with / without gradient checkpointing, batch 4 at 448 px
    images = torch.randn(4, 3, 448, 448, device=device)
    partner = derangement(4, device)
    memory = {}
    for ckpt in (False, True):
        cfg = DCALConfig(image_size=448, num_classes=200, grad_checkpoint=ckpt, **(VIT_B16 if cuda else VIT_S16))
        model = DCAL(cfg).to(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            out = model(images, partner=partner)
            sum(v.float().sum() for v in out.values()).backward()
            memory[ckpt] = torch.cuda.max_memory_allocated()
        else:
            memory[ckpt] = saved_activation_bytes(model, images, partner)
        del model
    what = "peak allocated (fwd+bwd)" if cuda else "activations held for backward"
    print(f"[3] DCAL {arch} 448px batch 4, {what}: {memory[False] / 2**20:.0f} MiB without, "
          f"{memory[True] / 2**20:.0f} MiB with gradient checkpointing"
          + ("" if cuda else f" (+ one block's activations, ~{memory[False] / cfg.depth / 2**20:.0f} MiB, while "
                             f"it is recomputed)"))

    # 4. memory over 30 consecutive steps
    size, batch = (448, 4) if cuda else (64, 4)
    cfg = DCALConfig(image_size=size, num_classes=200, drop_path=0.1, **(VIT_B16 if cuda else VIT_S16))
    model = DCAL(cfg).to(device)
    optimizer = adamw(model)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 200, (batch,), device=device)
    readings = []
    for _ in range(30):
        total, _, _ = compute_losses(model, images, labels, use_pwca=True)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del total
        readings.append(torch.cuda.memory_allocated() if cuda else live_tensor_bytes())
    print(f"[4] 30 DCAL steps ({arch} {size}px batch {batch}), "
          f"{'allocated' if cuda else 'live tensor'} MiB after steps 1/10/30: "
          + " / ".join(f"{readings[i] / 2**20:.1f}" for i in (0, 9, 29))
          + f" (growth from step 2 to 30: {(readings[29] - readings[1]) / 2**20:+.2f} MiB)")

    # 5. --compile and the fused optimiser
    size, batch = (448, 8) if cuda else (224, 2)
    model = DCAL(DCALConfig(**{**base, "image_size": size})).to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 200, (batch,), device=device)
    print(f"[5] DCAL {arch} {size}px batch {batch}, --compile and the optimiser ({method(args.repeats)}, in turn):")
    compile_and_optimiser_ratios(model, lambda m: compute_losses(m, images, labels, use_pwca=True)[0],
                                 lambda **kw: torch.optim.AdamW(decay_param_groups(model, 0.05), lr=1e-4, **kw),
                                 device, args.repeats, args.compile)


if __name__ == "__main__":
    main()
