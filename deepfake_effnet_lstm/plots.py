"""Pictures of deepfake_effnet_lstm: attention overlays (PNG with matplotlib) and TensorBoard.

Both are optional: without matplotlib a run says so once and writes no overlays/ folder; without
tensorboard it says so once and writes no tb/ folder. train.py calls these on rank 0; predict.py
draws its overlays with `draw_overlay`.
"""

from pathlib import Path

import torch
from torchvision.utils import make_grid

from common.runtime import is_main
from common.tools.predict import colorbar, enlarge, pyplot_or_none, save_figure, sheet
from deepfake_effnet_lstm.data import CLASS_NAMES, denormalize, upsample_map
from deepfake_effnet_lstm.model import fake_probability


def open_tensorboard(enabled: bool, run_dir: Path):
    """A SummaryWriter in <run_dir>/tb on rank 0 with --tensorboard, else None."""
    if not enabled or not is_main():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("TensorBoard logging off: `pip install tensorboard` to enable it (or pass --no-tensorboard)")
        return None
    return SummaryWriter(str(run_dir / "tb"))


def say_if_no_matplotlib(enabled: bool, run) -> None:
    """Once, at the start of a run with --overlays: the PNGs are skipped when matplotlib is missing."""
    if enabled and is_main() and pyplot_or_none() is None:
        run.print("attention overlay PNGs skipped: pip install matplotlib")


def log_scalars(tb, split: str, metrics: dict, step: int) -> None:
    if tb is not None:
        for k, v in metrics.items():
            tb.add_scalar(f"{split}/{k}", v, step)


def log_pr_curve(tb, labels: torch.Tensor, probs: torch.Tensor, step: int) -> None:
    if tb is not None:
        tb.add_pr_curve("val/pr_curve", labels, probs, step)


def draw_overlay(plt, frames: torch.Tensor, attention_map: torch.Tensor, caption: str, title: str,
                 path: Path) -> Path:
    """Top: the T frames [T, 3, S, S] (normalised) of one sequence. Bottom: the same frames under the
    attention map [T, 1, h, w] of the backbone, upsampled to the frame, with a colour bar."""
    rgb, _ = enlarge(denormalize(frames))  # each frame at least TILE px
    heat = upsample_map(attention_map, rgb.shape[-1])  # [T, 1, S', S']
    grid = make_grid(rgb, nrow=len(rgb), padding=8, pad_value=1.0)
    heat_grid = make_grid(heat, nrow=len(rgb), padding=8, pad_value=float("nan"))[0]  # NaN: gaps not drawn
    fig, (_, bottom) = sheet(plt, [(grid, caption), (grid, "attention map of the backbone on each frame")], title)
    shown = bottom.imshow(heat_grid.numpy(), cmap="inferno", alpha=0.6, vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar(fig, bottom, shown, "attention (0-1)")
    return save_figure(plt, fig, path)


@torch.no_grad()
def save_overlays(model, dataset, run_dir: Path, step: int, epoch: int, tb) -> None:
    """The first real and the first fake validation video (its first sequence): overlays/stepN_<class>.png
    with matplotlib, the plain frame / heat grid to TensorBoard (`tb`); true and predicted class in the
    caption. `model` is the bare module (not DDP); it is handed back in training mode."""
    plt = pyplot_or_none()
    if plt is None and tb is None:
        return
    model.eval()
    for label, name in enumerate(CLASS_NAMES):
        video = next(i for i, r in enumerate(dataset.records) if r.label == label)
        frames = dataset[video * dataset.clips]["frames"]  # [T, 3, S, S]
        logits, attention_map = model(frames.unsqueeze(0).to(next(model.parameters()).device), return_attention=True)
        p_fake = float(fake_probability(logits)[0])
        if tb is not None:
            heat, rgb = upsample_map(attention_map[0], frames.shape[-1]), denormalize(frames)  # [T, 1 | 3, S, S]
            red = torch.cat([heat, torch.zeros_like(heat), torch.zeros_like(heat)], dim=1)
            grid = make_grid(torch.cat([rgb, 0.4 * rgb + 0.6 * red]), nrow=len(rgb), padding=1)
            tb.add_image(f"attention/{name}", grid, step)
        if plt is None:
            continue
        predicted = CLASS_NAMES[int(p_fake >= 0.5)]
        caption = (f"video {dataset.records[video].video}: true {name}, predicted {predicted} (P(fake) {p_fake:.2f}, "
                   f"{'right' if predicted == name else 'wrong'}); frames 1-{len(frames)} of its first sequence")
        title = (f"deepfake_effnet_lstm attention, validation split, step {step} (epoch {epoch}): "
                 f"the first {name} video")
        draw_overlay(plt, frames, attention_map[0], caption, title, run_dir / "overlays" / f"step{step:06d}_{name}.png")
    model.train()
