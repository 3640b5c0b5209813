"""Measure a training step with one encoder pass (both heads, both losses) against the seed's
two-pass step (one encoder pass per loss), at the tiny and at a ViSoBERT-sized configuration.

    python visobert_multitask/bench.py                    # tiny + base, CPU or GPU
    python visobert_multitask/bench.py --configs tiny --iters 20

Reports median step time, the one-pass / two-pass ratio (the seed claims ~70 vs ~160 ms, i.e.
<= ~0.45; below 0.6 is the target here: the optimizer step is paid once either way) and tokens/s.
Then, per configuration, the one-pass step compiled / eager (`--compile`, the compile timed apart) and
the optimiser step fused / foreach / plain. Times are measured as common/tools/bench.py measures them
(median wall time, CUDA synchronised, the steps compared timed in turn).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

import argparse

import torch

from common.runtime import autocast, autocast_dtype, pick_device
from common.tools.bench import compile_and_optimiser_ratios, method, time_in_turn
from visobert_multitask import losses as losses_lib
from visobert_multitask.model import AspectSentimentModel, ModelConfig

CONFIGS = {
    "tiny": dict(cfg=ModelConfig(vocab_size=1000, max_positions=130), batch=32),
    # ViSoBERT / XLM-R base: 12 x 768, 12 heads, MLP 3072, ~15k SentencePiece vocabulary.
    "base": dict(cfg=ModelConfig(vocab_size=15004, hidden=768, layers=12, heads=12, intermediate=3072,
                                 max_positions=514), batch=4),
}
LOSS = losses_lib.LossConfig()  # train.py's defaults: both losses, 0.8 x focal (mean over aspects) + 0.2 x SupCon


def make_batch(cfg: ModelConfig, batch_size: int, seq_len: int, device, seed: int = 0) -> dict:
    """Random token ids with ragged lengths (padding in the batch) and random aspect states."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, cfg.vocab_size, (batch_size, seq_len), generator=g)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size,), generator=g)
    mask = torch.arange(seq_len)[None, :] < lengths[:, None]  # (B, T)
    ids[:, 0] = 0
    present = torch.rand(batch_size, cfg.num_aspects, generator=g) < 0.3
    labels = torch.where(present, torch.randint(1, 4, (batch_size, cfg.num_aspects), generator=g), 0)
    return {"input_ids": ids.masked_fill(~mask, cfg.pad_token_id).to(device), "attention_mask": mask.to(device),
            "labels": labels.to(device)}


def one_pass_step(model, optimizer, batch, alpha, dtype) -> None:
    """The training step of train.py: one forward for both heads, one backward, one update."""
    with autocast(batch["input_ids"].device, dtype):
        losses = losses_lib.compute_losses(model, batch, alpha, LOSS)
    losses["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def two_pass_step(model, optimizer, batch, alpha, dtype, loss: losses_lib.LossConfig = LOSS) -> None:
    """The seed's step as its code did it: the encoder runs once for the focal loss, once more for
    the contrastive loss (`loss.contrastive`)."""
    targets = batch["labels"]
    with autocast(batch["input_ids"].device, dtype):
        logits = model(batch["input_ids"], batch["attention_mask"])
        focal = losses_lib.aspect_focal_loss(logits, targets, alpha, loss.gamma)
        _, embeddings = model(batch["input_ids"], batch["attention_mask"], return_embeddings=True)
        contrastive = losses_lib.contrastive_term(embeddings, targets, loss)
    (loss.w_focal * focal + loss.w_con * contrastive).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def compare(cfg: ModelConfig, batch_size: int, seq_len: int, device, dtype, warmup: int, iters: int) -> dict:
    """Median one-pass and two-pass step times for one configuration (same model, same batch)."""
    torch.manual_seed(0)
    model = AspectSentimentModel(cfg).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = make_batch(cfg, batch_size, seq_len, device)
    alpha = losses_lib.focal_alpha(batch["labels"], losses_lib.NUM_STATES).to(device)
    steps = {"one": lambda: one_pass_step(model, optimizer, batch, alpha, dtype),
             "two": lambda: two_pass_step(model, optimizer, batch, alpha, dtype)}
    one, two = time_in_turn(steps, iters, warmup).values()
    tokens = int(batch["attention_mask"].sum())
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "batch": batch_size, "seq": seq_len,
            "one_ms": one * 1e3, "two_ms": two * 1e3, "ratio": one / two,
            "one_tok_s": tokens / one, "two_tok_s": tokens / two}


def compile_and_fused(cfg: ModelConfig, batch_size: int, seq_len: int, device, iters: int, compile_step: bool):
    """The one-pass step compiled / eager and the optimiser fused / plain (common/tools/bench.py)."""
    torch.manual_seed(0)
    model = AspectSentimentModel(cfg).to(device).train()
    batch = make_batch(cfg, batch_size, seq_len, device)
    alpha = losses_lib.focal_alpha(batch["labels"], losses_lib.NUM_STATES).to(device)
    return compile_and_optimiser_ratios(model, lambda m: losses_lib.compute_losses(m, batch, alpha, LOSS)["loss"],
                                        lambda **kw: torch.optim.AdamW(model.parameters(), lr=1e-5, **kw), device,
                                        iters, compile_step)


def format_table(results: dict[str, dict]) -> str:
    lines = [f"{'config':<7}{'params':>9}{'batch x seq':>13}{'one-pass ms':>13}{'two-pass ms':>13}{'ratio':>7}"
             f"{'tok/s one':>11}{'tok/s two':>11}"]
    for name, r in results.items():
        lines.append(f"{name:<7}{r['params_m']:>8.1f}M{r['batch']:>8d} x {r['seq']:<3d}{r['one_ms']:>12.1f}"
                     f"{r['two_ms']:>13.1f}{r['ratio']:>7.2f}{r['one_tok_s']:>11.0f}{r['two_tok_s']:>11.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,base", help="comma-separated: tiny, base")
    p.add_argument("--batch-size", type=int, default=None, help="override the per-config batch (tiny 32, base 4)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per review")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--iters", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--no-amp", action="store_true", help="disable autocast on CUDA")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="time the compiled step too (the compile takes minutes on a CPU)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    dtype = autocast_dtype(device, not args.no_amp)
    results = {}
    for name in args.configs.split(","):
        spec = CONFIGS[name]
        results[name] = compare(spec["cfg"], args.batch_size or spec["batch"], args.seq_len, device, dtype,
                                args.warmup, args.iters)
    print(f"device {device}, {torch.get_num_threads()} threads, autocast {dtype}; "
          f"step times: {method(args.iters, args.warmup)}, one- and two-pass in turn")
    print(format_table(results))
    for name in args.configs.split(","):
        spec = CONFIGS[name]
        print(f"{name}: --compile and the optimiser ({method(args.iters)}, in turn):")
        results[name].update(compile_and_fused(spec["cfg"], args.batch_size or spec["batch"], args.seq_len, device,
                                               args.iters, args.compile))
    return results


if __name__ == "__main__":
    main()
