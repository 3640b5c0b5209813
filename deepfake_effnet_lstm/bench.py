"""Throughput and memory of deepfake_effnet_lstm, measured in one run.

    python deepfake_effnet_lstm/bench.py                     # synthetic data, the train.py defaults
    python deepfake_effnet_lstm/bench.py --data-root faces/  # the real loader (PNG/JPG decoding)

1. sequences/s the data pipeline delivers with 0 and 2 DataLoader workers (training split,
   augmentation on), against sequences/s the training step consumes at the same settings: the
   loader must not be the bottleneck;
2. the training step broken into host->device copy, forward, loss, backward and optimizer step;
3. peak memory of one training step at T = 8, 16, 32 frames: on CUDA `max_memory_allocated`; on
   CPU the peak resident set size (ru_maxrss) of a fresh child process per T, so one T's peak does
   not hide the next (it includes the ~0.3-0.5 GB of the Python + torch runtime itself);
4. the training step compiled / eager (`--compile`) and the optimiser step fused / foreach / plain;
5. EfficientNet-B0 forward + backward on the folded frames, channels_last / contiguous memory.

Every time is measured as common/tools/bench.py measures it (median wall time, CUDA synchronised).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project, when run as a script

import argparse
import copy
import json
import resource
import subprocess

import torch

from common.runtime import EpochSampler, autocast, make_loader, pick_device
from common.tools.bench import StageTimer, compile_and_optimiser_ratios, method, time_in_turn, time_it
from deepfake_effnet_lstm.data import DataConfig, make_datasets
from deepfake_effnet_lstm.model import DeepfakeDetector, DetectorConfig, classification_loss


def loader_throughput(dataset, batch_size: int, workers: int, batches: int) -> float:
    """Sequences/s from the median time per batch over `batches` batches, the first (worker start-up) excluded."""
    sampler = EpochSampler(len(dataset), batch_size, shuffle=True, seed=0)
    iterator = iter(make_loader(dataset, sampler, workers, seed=0))
    return batch_size / time_it(lambda: next(iterator), repeats=batches)


def train_step_breakdown(model, optimizer, batch: dict, device: torch.device, steps: int) -> dict:
    """Median seconds per part of a training step (fp32) over `steps` steps, and of the whole step."""
    weights = torch.ones(2, device=device)
    timer = StageTimer()
    for i in range(steps + 1):
        timer.start(record=i > 0)  # the first step allocates and picks kernels
        frames, labels = batch["frames"].to(device), batch["label"].to(device)
        timer.lap("to_device")
        logits = model(frames)
        timer.lap("forward")
        loss = classification_loss(logits, labels, weights)
        timer.lap("loss")
        loss.backward()
        timer.lap("backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.lap("optimizer")
        timer.stop()
    return {**timer.medians(), "step": timer.total()}


def channels_last_ratio(model, frames: torch.Tensor, repeats: int) -> float:
    """EfficientNet-B0 forward + backward of the folded frames [B*T, 3, H, W] (autocast bf16 on CUDA),
    channels_last weights and input over contiguous ones, timed in turn."""
    device = frames.device
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    images = frames.flatten(0, 1)  # (b t) c h w
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    images_last = images.contiguous(memory_format=torch.channels_last)

    def forward_backward(module, x):
        with autocast(device, dtype):
            pooled, _ = module.frame_features(x)
        pooled.float().square().mean().backward()

    t = time_in_turn({"contiguous": lambda: forward_backward(model, images),
                      "channels_last": lambda: forward_backward(last, images_last)}, repeats)
    print(f"   channels_last / contiguous {t['channels_last'] / t['contiguous']:.2f} (contiguous "
          f"{1000 * t['contiguous']:.1f} ms, channels_last {1000 * t['channels_last']:.1f} ms, {images.shape[0]} "
          f"frames of {images.shape[-1]} px)")
    return t["channels_last"] / t["contiguous"]


def peak_memory_mb(frames: int, args, device: torch.device) -> float:
    """Peak memory of one training step with T = frames."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        one_step(frames, args, device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    child = subprocess.run([sys.executable, __file__, "--memory-child", str(frames),
                            "--batch-size", str(args.batch_size),
                            "--image-size", str(args.image_size)], capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def one_step(frames: int, args, device: torch.device) -> None:
    model = DeepfakeDetector(DetectorConfig()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch_size, frames, 3, args.image_size, args.image_size, device=device)
    loss = classification_loss(model(x), torch.arange(args.batch_size, device=device) % 2, torch.ones(2, device=device))
    loss.backward()
    optimizer.step()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", help="real data (index.csv + frame folders); absent -> synthetic")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (train.py default)")
    p.add_argument("--frames", type=int, default=8, help="T for the throughput part (train.py default)")
    p.add_argument("--image-size", type=int, default=32, help="frame side (train.py default)")
    p.add_argument("--batches", type=int, default=10, help="batches timed per loader setting")
    p.add_argument("--steps", type=int, default=3, help="training steps timed")
    p.add_argument("--memory-frames", default="8,16,32", help="T values for the peak-memory part")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="time the compiled training step too (the compile takes minutes on a CPU)")
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.memory_child:
        one_step(args.memory_child, args, device)
        print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return {}

    data_cfg = DataConfig(data_root=args.data_root, frames=args.frames, image_size=args.image_size)
    datasets, _, _ = make_datasets(data_cfg, seed=0)
    print(f"device {device}, batch {args.batch_size}, T {args.frames}, {args.image_size}px, "
          f"{'real data' if args.data_root else 'synthetic data'}, {torch.get_num_threads()} torch threads")
    print(f"times: per batch {method(args.batches)}; per training step {method(args.steps)}")
    results = {}
    for workers in (0, 2):
        results[f"loader_seq_per_s_{workers}w"] = loader_throughput(datasets["train"], args.batch_size, workers,
                                                                    args.batches)
        print(f"data pipeline, {workers} workers: {results[f'loader_seq_per_s_{workers}w']:8.1f} sequences/s")

    torch.manual_seed(0)
    model = DeepfakeDetector(DetectorConfig()).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    in_order = EpochSampler(len(datasets["train"]), args.batch_size, shuffle=False)
    batch = next(iter(make_loader(datasets["train"], in_order, workers=0, seed=0)))
    parts = train_step_breakdown(model, optimizer, batch, device, args.steps)
    step_s = parts.pop("step")
    results["train_seq_per_s"] = args.batch_size / step_s
    print(f"training step consumes:      {results['train_seq_per_s']:8.1f} sequences/s ({step_s * 1000:.0f} ms/step)")
    for name, seconds in parts.items():
        print(f"  {name:10s} {seconds * 1000:8.1f} ms  {100 * seconds / step_s:5.1f} %")
    best_loader = max(results["loader_seq_per_s_0w"], results["loader_seq_per_s_2w"])
    verdict = "not the bottleneck" if best_loader > results["train_seq_per_s"] else "THE BOTTLENECK"
    print(f"loader / step ratio {best_loader / results['train_seq_per_s']:.1f}x: the loader is {verdict}")

    kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS of a child process (ru_maxrss)"
    print(f"peak memory of one training step, batch {args.batch_size}, {args.image_size}px ({kind}):")
    for frames in (int(t) for t in args.memory_frames.split(",")):
        results[f"peak_mb_T{frames}"] = peak_memory_mb(frames, args, device)
        print(f"  T = {frames:3d}: {results[f'peak_mb_T{frames}']:8.0f} MB")

    print(f"--compile and the optimiser (batch {args.batch_size}, T {args.frames}; {method(args.steps)}, in turn):")
    frames, labels = batch["frames"].to(device), batch["label"].to(device)
    results.update(compile_and_optimiser_ratios(
        model, lambda m: classification_loss(m(frames), labels, torch.ones(2, device=device)),
        lambda **kw: torch.optim.Adam(model.parameters(), lr=1e-4, **kw), device, args.steps, args.compile))
    print(f"channels-last memory, EfficientNet-B0 frames forward + backward ({method(args.steps)}, in turn):")
    results["channels_last_over_contiguous"] = channels_last_ratio(model, frames, args.steps)
    return results


if __name__ == "__main__":
    main()
