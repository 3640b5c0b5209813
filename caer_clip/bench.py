"""Speed of caer_clip, measured in one run:

1. our CLIP image and text encoders against open_clip's same configuration (ViT-B-16, QuickGELU,
   same weights): forward-time ratio, target <= 1.10 (skipped when open_clip is not installed);
2. a training-step breakdown (data, forward, loss, backward, optimizer) at the default tiny size
   and at ViT-B/16 size;
3. frames per second of the data pipeline with 0 and 2 DataLoader workers;
4. at the default tiny size: the training step compiled / eager (`--compile`, the compile timed apart;
   bf16 on CUDA) and the optimiser step fused / foreach / plain.

Every figure is timed as common/tools/bench.py times it (median wall time, CUDA synchronised).

    python caer_clip/bench.py [--device cpu] [--b16-batch 1 --b16-frames 2]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

import argparse

import torch

from caer_clip.clip import CLIP, CLIPConfig, WordTokenizer, clip_from_state_dict, tiny_config
from caer_clip.data import CLASS_DESCRIPTORS, DataConfig, SyntheticClips
from caer_clip.losses import LossConfig, total_loss
from caer_clip.model import ModelConfig, build_model, param_groups
from common.runtime import EpochSampler, make_loader, pick_device
from common.tools.bench import StageTimer, compile_and_optimiser_ratios, method, time_in_turn, time_it


@torch.no_grad()
def compare_open_clip(device: torch.device, batch: int, repeats: int) -> None:
    try:
        import open_clip
    except ImportError:
        print("1. open_clip comparison skipped: pip install open_clip_torch")
        return
    reference = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).to(device).eval()
    ours = clip_from_state_dict(reference.state_dict()).to(device).eval()
    images = torch.randn(batch, 3, 224, 224, device=device)
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a student yawning in class"] * (4 * batch)).to(device)
    print(f"1. CLIP ViT-B/16 forward vs open_clip (images {batch}x3x224x224, texts {4 * batch}x77), "
          f"{method(repeats)}, in turn")
    for name, ours_fn, ref_fn in (("image", lambda: ours.encode_image(images), lambda: reference.encode_image(images)),
                                  ("text", lambda: ours.encode_text(tokens), lambda: reference.encode_text(tokens))):
        t_ours, t_ref = time_in_turn({"ours": ours_fn, "open_clip": ref_fn}, repeats).values()
        ratio = t_ours / t_ref
        print(f"   {name:5s} ours {1000 * t_ours:8.1f} ms | open_clip {1000 * t_ref:8.1f} ms | ratio {ratio:.2f} "
              f"({'ok' if ratio <= 1.10 else 'above the 1.10 target'})")


def step_breakdown(name: str, model_cfg: ModelConfig, clip: CLIP, tokenizer, batch: int, device: torch.device,
                   steps: int) -> None:
    descriptors = list(CLASS_DESCRIPTORS["synthetic"].values())
    model = build_model(model_cfg, clip, tokenizer, descriptors).to(device)
    size = clip.cfg.image_resolution
    data = SyntheticClips(batch * (steps + 1), DataConfig(), model_cfg.num_frames, size, True, 0, 1,
                          frame_size=max(48, size + size // 2))
    loader = iter(make_loader(data, EpochSampler(len(data), batch, shuffle=False, drop_last=False), 0, 0))
    groups = param_groups(model, dict.fromkeys(["temporal", "projection", "adapter", "prompt", "image"], 1e-3), 1e-4)
    optimizer = torch.optim.SGD(groups, lr=1e-3, momentum=0.9)
    loss_cfg = LossConfig()
    # FIX(CAER-BENCH-QUEUE): no MoCo queue by default (--moco-queue 0): model.queue raised AttributeError.
    queue = (model.queue, model.queue_labels) if model_cfg.moco_queue > 0 else None
    timer = StageTimer()
    for step in range(steps + 1):  # step 0 warms up
        timer.start(record=step > 0)
        face, context, labels, _ = next(loader)
        face, context, labels = face.to(device), context.to(device), labels.to(device)
        timer.lap("data")
        out = model(face, context)
        timer.lap("forward")
        loss, _, _ = total_loss(out, labels, labels, 1.0, 0, 1.0, loss_cfg, queue)
        timer.lap("loss")
        loss.backward()
        timer.lap("backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if queue is not None:
            model.enqueue(out["key"], labels)
        timer.lap("optimizer")
        timer.stop()
    parts = " | ".join(f"{k} {1000 * v:.1f}" for k, v in timer.medians().items())
    print(f"   {name}: {1000 * timer.total():.1f} ms/step ({parts} ms)")


def compile_and_fused(clip: CLIP, tokenizer, batch: int, device: torch.device, repeats: int, compile_step: bool):
    """The training step compiled / eager and the SGD step fused / plain (common/tools/bench.py)."""
    model_cfg = ModelConfig()
    model = build_model(model_cfg, clip, tokenizer, list(CLASS_DESCRIPTORS["synthetic"].values())).to(device)
    data = SyntheticClips(batch, DataConfig(), model_cfg.num_frames, clip.cfg.image_resolution, True, 0, 1)
    face, context, labels, _ = (t.to(device) for t in next(iter(make_loader(data, EpochSampler(batch, batch), 0, 0))))
    queue = (model.queue, model.queue_labels) if model_cfg.moco_queue > 0 else None
    groups = param_groups(model, dict.fromkeys(["temporal", "projection", "adapter", "prompt", "image"], 1e-3), 1e-4)
    compile_and_optimiser_ratios(
        model, lambda m: total_loss(m(face, context), labels, labels, 1.0, 0, 1.0, LossConfig(), queue)[0],
        lambda **kw: torch.optim.SGD(groups, lr=1e-3, momentum=0.9, **kw), device, repeats, compile_step)


def pipeline_fps(workers: int, batches: int, frames: int, batch: int = 8) -> float:
    """Frames per second from the median time per batch (the first batch, worker start-up, warms up)."""
    data = SyntheticClips(batch * (batches + 1), DataConfig(), frames, 32, True, 0, 1)
    loader = iter(make_loader(data, EpochSampler(len(data), batch, shuffle=False, drop_last=False), workers, 0))
    return batch * frames / time_it(lambda: next(loader), repeats=batches)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per size")
    p.add_argument("--b16-batch", type=int, default=1, help="clips per step at ViT-B/16 size")
    p.add_argument("--b16-frames", type=int, default=2, help="frames per clip at ViT-B/16 size")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="time the compiled step too (the compile takes minutes on a CPU)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    print(f"caer_clip bench on {device} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    compare_open_clip(device, args.b16_batch, args.repeats)

    print(f"2. training step breakdown, {method(args.steps)} (synthetic clips, face + context streams)")
    texts = [s for d in CLASS_DESCRIPTORS["synthetic"].values() for s in d] + ["x", "a photo of ."]
    for name, clip_cfg, model_cfg, batch in (
            ("default  (tiny CLIP, batch 16, T=4)", tiny_config(), ModelConfig(), 16),
            (f"ViT-B/16 (random weights, batch {args.b16_batch}, T={args.b16_frames})", CLIPConfig(),
             ModelConfig(num_frames=args.b16_frames, logit_scale=100.0), args.b16_batch)):
        tokenizer = WordTokenizer(texts, clip_cfg.context_length, clip_cfg.vocab_size)
        step_breakdown(name, model_cfg, CLIP(clip_cfg), tokenizer, batch, device, args.steps)

    print(f"3. data pipeline (synthetic clips, T=4, 32 px, face + context crops), per batch of 8: {method(10)}")
    for workers in (0, 2):
        print(f"   workers {workers}: {pipeline_fps(workers, 10, 4):8.0f} frames/s")

    print(f"4. --compile and the optimiser, default tiny CLIP, batch 16, T=4 ({method(args.steps)}, in turn):")
    tokenizer = WordTokenizer(texts, tiny_config().context_length, tiny_config().vocab_size)
    compile_and_fused(CLIP(tiny_config()), tokenizer, 16, device, args.steps, args.compile)


if __name__ == "__main__":
    main()
