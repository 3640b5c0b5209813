"""The three pictures the original write-up promised, drawn from the real model and from measurements.

    python visobert_multitask/visualize.py                                  # tiny model, synthetic batch
    python visobert_multitask/visualize.py --checkpoint runs/visobert_multitask/best.pt   # figures beside it

model_architecture.png      the module tree with the output shape of every module, recorded by
                            forward hooks during a real forward pass
forward_pass_timeline.png   measured per-stage times of a training step: encoder, heads, losses,
                            backward, optimizer step
sequential_vs_parallel.png  measured step time, one encoder pass (train.py) vs one pass per loss

The loss weights and the model come from the checkpoint (train.py's defaults without one). The
figures go to --out, by default the checkpoint's folder (runs/visobert_multitask/figures without one).
Without matplotlib the same numbers are printed as tables.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

import argparse
import dataclasses
import re

import torch
import torch.nn as nn

from common.checkpoint import load_model_state, load_run_checkpoint
from common.tools.bench import StageTimer, timed_call
from common.tools.predict import pyplot_or_none
from visobert_multitask.bench import make_batch, two_pass_step
from visobert_multitask.losses import NUM_STATES, LossConfig, focal_alpha, loss_terms
from visobert_multitask.model import AspectSentimentModel, ModelConfig

DEFAULT_OUT = "runs/visobert_multitask/figures"  # without --checkpoint
TRAIN_BATCH, TRAIN_MAX_LEN = 32, 64  # train.py's --batch-size and --max-len: the step measured without --checkpoint


def module_shapes(model: nn.Module, batch: dict) -> list[tuple[str, str, tuple]]:
    """(qualified name, class name, output shape) of the encoder's parts and the heads, in call order."""
    wanted = [(n, m) for n, m in model.named_modules()
              if n in ("encoder.embeddings", "classifier", "projection") or re.fullmatch(r"encoder\.layers\.\d+", n)]
    records, hooks = [], []
    for name, module in wanted:
        hooks.append(module.register_forward_hook(
            lambda mod, inp, out, name=name: records.append((name, type(mod).__name__, tuple(out.shape)))))
    with torch.no_grad():
        logits, embeddings = model(batch["input_ids"], batch["attention_mask"], return_embeddings=True)
    for h in hooks:
        h.remove()
    return records + [("logits", "per aspect", tuple(logits.shape)),
                      ("embeddings", "L2-normed", tuple(embeddings.shape))]


def loss_config(checkpoint: dict | None) -> LossConfig:
    """The loss settings a run trained with (train.py's defaults without a checkpoint)."""
    if checkpoint is None:
        return LossConfig()
    names = {f.name for f in dataclasses.fields(LossConfig)}
    return LossConfig(**{k: v for k, v in checkpoint["config"].items() if k in names})


def loss_formula(loss: LossConfig) -> str:
    """The training loss as losses.compute_losses forms it for `loss.loss`."""
    contrastive = "SupCon" if loss.contrastive == "supcon" else "soft-match contrastive"
    if loss.loss == "focal":
        return f"focal loss only ({contrastive} off)"
    if loss.loss == "contrastive":
        return f"{loss.w_con:g} x {contrastive} + focal probe on detached vectors"
    return f"{loss.w_focal:g} x focal + {loss.w_con:g} x {contrastive}"


def measure_steps(model, batch: dict, loss: LossConfig, iters: int = 10, warmup: int = 2) -> dict:
    """ONE measurement for both timing pictures: the one-pass training step timed in stages
    (common/tools/bench.py's StageTimer) and the seed's two-pass step, called in turn, `iters` times
    each after `warmup`. The timeline shows the stages of the middle one-pass step (by total time)
    and the bar chart that same step's total, so the two pictures state one number; the two-pass
    figure is the middle of its own steps. The loss is the run's (`loss_terms`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    targets = batch["labels"]
    alpha = focal_alpha(targets, NUM_STATES)
    timer, two_pass = StageTimer(), []
    for i in range(warmup + iters):
        timer.start(record=i >= warmup)
        sentence = model.sentence_vector(batch["input_ids"], batch["attention_mask"])
        timer.lap("encoder")
        logits, embeddings = model.heads(sentence, return_embeddings=True,
                                         detach_classifier_input=loss.loss == "contrastive")
        timer.lap("heads")
        total = loss_terms(logits, embeddings, targets, alpha, loss)["loss"]
        timer.lap("losses")
        total.backward()
        timer.lap("backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.lap("optimizer step")
        timer.stop()
        seconds = timed_call(lambda: two_pass_step(model, optimizer, batch, alpha, None, loss))
        if i >= warmup:
            two_pass.append(seconds)
    middle = sorted(range(iters), key=timer.totals.__getitem__)[iters // 2]  # the middle one-pass step
    stages = {stage: laps[middle] * 1e3 for stage, laps in timer.laps.items()}
    one_ms, two_ms = sum(stages.values()), sorted(two_pass)[iters // 2] * 1e3
    return {"stages": stages, "one_ms": one_ms, "two_ms": two_ms, "ratio": one_ms / two_ms}


def draw_architecture(records, loss: LossConfig, source: str, path: Path, plt) -> None:
    encoder = [r for r in records if r[0].startswith("encoder.")]
    heads = {r[0]: r for r in records if not r[0].startswith("encoder")}
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.9 * (len(encoder) + 4)))
    ax.axis("off")
    y = len(encoder) + 4

    def box(x, y, text, color):
        ax.text(x, y, text, ha="center", va="center", fontsize=10, bbox=dict(boxstyle="round", fc=color, ec="gray"))

    box(0.5, y, "input_ids, attention_mask  " + str(tuple(encoder[0][2][:2])), "#eeeeee")
    for name, cls, shape in encoder:
        y -= 1
        box(0.5, y, f"{name} ({cls})  ->  {shape}", "#cfe2f3")
        ax.annotate("", (0.5, y + 0.3), (0.5, y + 0.7), arrowprops=dict(arrowstyle="->"))
    y -= 1
    box(0.5, y, "sentence vector = first token hidden state", "#d9ead3")
    ax.annotate("", (0.5, y + 0.3), (0.5, y + 0.7), arrowprops=dict(arrowstyle="->"))
    contrastive = "SupCon" if loss.contrastive == "supcon" else "soft-match"
    head_boxes = ((0.25, "classifier", "logits", f"focal loss per aspect (gamma {loss.gamma:g})"),
                  (0.75, "projection", "embeddings", f"{contrastive} loss (temperature {loss.temperature:g})"))
    for x, key, out, name_of_loss in head_boxes:
        name, cls, shape = heads[key]
        box(x, y - 1, f"{name} ({cls})  ->  {shape}\n{out} {heads[out][2]}", "#fce5cd")
        box(x, y - 2, name_of_loss, "#f4cccc")
        ax.annotate("", (x, y - 0.7), (0.5, y - 0.3), arrowprops=dict(arrowstyle="->"))
        ax.annotate("", (x, y - 1.7), (x, y - 1.3), arrowprops=dict(arrowstyle="->"))
        ax.annotate("", (0.5, y - 2.7), (x, y - 2.3), arrowprops=dict(arrowstyle="->"))
    box(0.5, y - 3, f"training loss = {loss_formula(loss)}  ->  one backward", "#d0e0e3")
    ax.set_xlim(0, 1)
    ax.set_ylim(y - 3.6, len(encoder) + 4.6)
    ax.set_title(f"Module tree and output shapes (forward hooks), {source}", fontsize=11)
    fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.2)
    plt.close(fig)


def draw_timeline(times: dict[str, float], loss: LossConfig, source: str, path: Path, plt) -> None:
    """The stages of the measured one-pass step; its total is the bar chart's one-pass bar."""
    fig, ax = plt.subplots(figsize=(9, 3.2))
    start = 0.0
    for i, (stage, ms) in enumerate(times.items()):
        ax.barh(0, ms, left=start, color=f"C{i}", label=f"{stage}: {ms:.1f} ms")
        start += ms
    ax.set_yticks([])
    ax.set_xlim(0, start * 1.02)
    ax.set_xlabel("milliseconds into the step (the middle of the measured steps, stage by stage)")
    ax.set_title(f"One training step, {start:.1f} ms: one encoder pass feeds both heads\n"
                 f"loss {loss_formula(loss)}; {source}", fontsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.2)
    plt.close(fig)


def draw_comparison(result: dict, source: str, path: Path, plt) -> None:
    fig, ax = plt.subplots(figsize=(7.2, 4))
    bars = ax.bar(["one encoder pass\n(train.py)", "one pass per loss\n(seed's code)"],
                  [result["one_ms"], result["two_ms"]], color=["C2", "C3"], width=0.55)
    ax.bar_label(bars, fmt="%.1f ms", padding=4, fontsize=10)
    ax.set_ylim(0, 1.2 * max(result["one_ms"], result["two_ms"]))  # room for the labels above the bars
    ax.set_ylabel("step time, ms (middle of the measured steps)")
    ax.set_title(f"Training step time ratio, one encoder pass / one pass per loss:\n"
                 f"{result['ratio']:.2f} (lower: the single pass saves more); {source}", fontsize=11)
    fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.2)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a train.py checkpoint (its model config, weights and "
                   "loss weights)")
    p.add_argument("--out", default=None, help="folder for the PNG files (default: the checkpoint's folder, "
                   "else runs/visobert_multitask/figures)")
    p.add_argument("--batch-size", type=int, default=None, help="batch of the measured steps (default: the "
                   "run's --batch-size, train.py's 32 without --checkpoint)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per review in the measured steps (default: the "
                   "run's --max-len, train.py's 64 without --checkpoint)")
    p.add_argument("--iters", type=int, default=10, help="measured steps per number")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    checkpoint = None
    if args.checkpoint:
        checkpoint = load_run_checkpoint(args.checkpoint, "visobert_multitask")  # a train.py run checkpoint
        cfg = ModelConfig(**checkpoint["config"]["model"])
        model = AspectSentimentModel(cfg)
        load_model_state(model, checkpoint["model"], args.checkpoint)
        source = f"{Path(args.checkpoint).name} at step {checkpoint['progress']['step']}"
    else:
        cfg = ModelConfig()
        model = AspectSentimentModel(cfg)
        source = "untrained tiny model, train.py's default loss"
    loss = loss_config(checkpoint)
    run = checkpoint["config"] if checkpoint else {}
    batch_size = args.batch_size or run.get("batch_size", TRAIN_BATCH)
    seq_len = args.seq_len or run.get("max_len", TRAIN_MAX_LEN)
    source += f", batch {batch_size} x {seq_len} tokens, CPU"
    batch = make_batch(cfg, batch_size, seq_len, torch.device("cpu"))
    records = module_shapes(model.eval(), batch)
    comparison = measure_steps(model.train(), batch, loss, args.iters)
    times = comparison.pop("stages")

    print(f"measured on: {source}")
    print(f"{'module':<22}{'class':<12}output shape")
    print("\n".join(f"{n:<22}{c:<12}{s}" for n, c, s in records))
    print(f"\ntraining loss: {loss_formula(loss)}")
    print(f"\n{'stage':<16}ms per step")
    print("\n".join(f"{s:<16}{ms:.2f}" for s, ms in times.items()))
    print(f"\none-pass step {comparison['one_ms']:.1f} ms (the stages above), two-pass step "
          f"{comparison['two_ms']:.1f} ms, ratio one / two {comparison['ratio']:.2f}")
    result = {"records": records, "times": times, "comparison": comparison, "loss": dataclasses.asdict(loss),
              "source": source, "files": []}
    plt = pyplot_or_none()
    if plt is None:
        print("matplotlib is not installed (pip install matplotlib): printed the numbers instead of the pictures")
        return result
    out = Path(args.out) if args.out else Path(args.checkpoint).parent if args.checkpoint else Path(DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "model_architecture.png", out / "forward_pass_timeline.png", out / "sequential_vs_parallel.png"]
    draw_architecture(records, loss, source, files[0], plt)
    draw_timeline(times, loss, source, files[1], plt)
    draw_comparison(comparison, source, files[2], plt)
    print("wrote " + ", ".join(str(f) for f in files))
    return {**result, "files": files}


if __name__ == "__main__":
    main()
