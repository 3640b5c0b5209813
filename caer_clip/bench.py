"""Speed of caer_clip, measured in one run:

1. our CLIP image and text encoders against open_clip's same configuration (ViT-B-16, QuickGELU,
   same weights): forward-time ratio, target <= 1.10 (skipped when open_clip is not installed);
2. a training-step breakdown (data, forward, loss, backward, optimizer) at the default tiny size
   and at ViT-B/16 size;
3. frames per second of the data pipeline with 0 and 2 DataLoader workers.

    python caer_clip/bench.py [--device cpu] [--b16-batch 1 --b16-frames 2]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make `common` and the project importable when run as a script

import argparse
import time

import torch

from caer_clip.clip import CLIP, CLIPConfig, WordTokenizer, clip_from_state_dict, load_clip
from caer_clip.data import CLASS_DESCRIPTORS, DataConfig, SyntheticClips
from caer_clip.losses import LossConfig, total_loss
from caer_clip.model import ModelConfig, build_model
from caer_clip.train import TrainConfig, param_groups
from common.runtime import pick_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_times(fns, device, repeats: int) -> list[float]:
    """Fastest of `repeats` calls of each function (seconds), the functions timed in turn so that a
    burst of load from other processes hits all of them alike; one warm-up call each."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


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
    print(f"1. CLIP ViT-B/16 forward vs open_clip (images {batch}x3x224x224, texts {4 * batch}x77), best of {repeats}")
    for name, ours_fn, ref_fn in (("image", lambda: ours.encode_image(images), lambda: reference.encode_image(images)),
                                  ("text", lambda: ours.encode_text(tokens), lambda: reference.encode_text(tokens))):
        t_ours, t_ref = best_times([ours_fn, ref_fn], device, repeats)
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
    loader = iter(torch.utils.data.DataLoader(data, batch_size=batch))
    optimizer = torch.optim.SGD(param_groups(model, TrainConfig(batch_size=batch), 1), lr=1e-3, momentum=0.9)
    loss_cfg = LossConfig()
    totals = dict.fromkeys(["data", "forward", "loss", "backward", "optimizer"], 0.0)
    for step in range(steps + 1):  # step 0 warms up
        marks = [time.perf_counter()]
        face, context, labels, _ = next(loader)
        face, context, labels = face.to(device), context.to(device), labels.to(device)
        sync(device)
        marks.append(time.perf_counter())
        out = model(face, context)
        sync(device)
        marks.append(time.perf_counter())
        loss, _, _ = total_loss(out, labels, labels, 1.0, 0, 1.0, loss_cfg, (model.queue, model.queue_labels))
        sync(device)
        marks.append(time.perf_counter())
        loss.backward()
        sync(device)
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.enqueue(out["key"], labels)
        sync(device)
        marks.append(time.perf_counter())
        if step:
            for key, a, b in zip(totals, marks, marks[1:]):
                totals[key] += b - a
    total = sum(totals.values())
    parts = " | ".join(f"{k} {1000 * v / steps:.1f}" for k, v in totals.items())
    print(f"   {name}: {1000 * total / steps:.1f} ms/step ({parts} ms)")


def pipeline_fps(workers: int, clips: int, frames: int) -> float:
    data = SyntheticClips(clips, DataConfig(), frames, 32, True, 0, 1)
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=workers)
    start = time.perf_counter()
    seen = sum(face.shape[0] * face.shape[1] for face, _, _, _ in loader)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per size")
    p.add_argument("--b16-batch", type=int, default=1, help="clips per step at ViT-B/16 size")
    p.add_argument("--b16-frames", type=int, default=2, help="frames per clip at ViT-B/16 size")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    print(f"caer_clip bench on {device} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    compare_open_clip(device, args.b16_batch, args.repeats)

    print(f"2. training step breakdown, mean of {args.steps} steps (synthetic clips, face + context streams)")
    texts = [s for d in CLASS_DESCRIPTORS["synthetic"].values() for s in d] + ["x", "a photo of ."]
    clip, tokenizer = load_clip("tiny", texts)
    step_breakdown("default  (tiny CLIP, batch 16, T=4)", ModelConfig(), clip, tokenizer, 16, device, args.steps)
    b16 = CLIPConfig()
    step_breakdown(f"ViT-B/16 (random weights, batch {args.b16_batch}, T={args.b16_frames})",
                   ModelConfig(num_frames=args.b16_frames, logit_scale=100.0), CLIP(b16),
                   WordTokenizer(texts, b16.context_length, b16.vocab_size), args.b16_batch, device, args.steps)

    print("3. data pipeline (synthetic clips, T=4, 32 px, face + context crops)")
    for workers in (0, 2):
        print(f"   workers {workers}: {pipeline_fps(workers, 96, 4):8.0f} frames/s")


if __name__ == "__main__":
    main()
