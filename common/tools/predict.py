"""What the four predict.py share: the common flags, a checkpoint turned into a model in eval mode,
rows written as CSV or JSON lines, and the optional matplotlib pictures (tiles of at least 256 px).

    parser = predict_parser(__doc__, formats=("csv", "jsonl"))   # --checkpoint, --device, --batch-size, ...
    plt, device, checkpoint = open_run(args, PROJECT, "--picture")  # CheckpointError naming the file
    model = eval_model(Model(Config(**checkpoint["config"]["model"])), checkpoint, args.checkpoint, device)
    write_rows(rows, columns, args.format, args.output)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F

from common.checkpoint import load_model_state, load_run_checkpoint
from common.cli import at_least
from common.runtime import DataError, DeviceError, pick_device

TILE = 256  # smallest side, in pixels, of one frame or image in a picture


def predict_parser(description: str, formats: tuple[str, ...]) -> argparse.ArgumentParser:
    """A parser with the flags every predict.py has; the caller adds its inputs and picture flags."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a best.pt (or any checkpoint) of a training run")
    parser.add_argument("--device", default="auto", help="auto (cuda when available, else cpu) | cpu | cuda | cuda:N "
                        "(default: %(default)s)")
    parser.add_argument("--batch-size", type=at_least(1), default=16, help="inputs per forward pass "
                        "(default: %(default)s)")
    parser.add_argument("--format", choices=formats, default=formats[0], help="output format (default: %(default)s)")
    parser.add_argument("--output", default=None, help="file to write the predictions to (default: stdout)")
    return parser


def device_from(name: str) -> torch.device:
    try:
        return pick_device(name)
    except DeviceError as e:  # --device cuda on a machine without one: one line, not a traceback
        raise DataError(str(e)) from None


def open_run(args: argparse.Namespace, project: str, picture_flag: str | None = None):
    """(pyplot or None, device, checkpoint) for a predict main(): the checkpoint checked as `project`'s
    (CheckpointError naming the file), pyplot only when the picture flag was given."""
    wants_picture = picture_flag is not None and getattr(args, picture_flag.lstrip("-").replace("-", "_"))
    plt = require_matplotlib(picture_flag) if wants_picture else None
    return plt, device_from(args.device), load_run_checkpoint(args.checkpoint, project)


def eval_model(model: torch.nn.Module, checkpoint: dict, path, device: torch.device) -> torch.nn.Module:
    """The checkpoint's weights in `model` (exact key and shape check), on `device`, in eval mode."""
    load_model_state(model, checkpoint["model"], path)
    return model.to(device).eval()


def existing(path: str | Path, what: str) -> Path:
    """`path` as a Path, or FileNotFoundError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ----------------------------------------------------------------------------- writing predictions


def write_rows(rows: list[dict], columns: list[str], fmt: str, output: str | None) -> None:
    """CSV with `columns` (floats as %.6f), or one JSON object per row."""
    stream = open(output, "w", newline="") if output else sys.stdout
    try:
        if fmt == "csv":
            writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()} for row in rows)
        else:
            for row in rows:
                stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if output:
            stream.close()
        else:
            stream.flush()


# ----------------------------------------------------------------------------- pictures


def require_matplotlib(flag: str):
    """pyplot (Agg backend), or exit with one line saying what to install. Called before any work."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(f"{flag} draws with matplotlib, which is not installed: pip install matplotlib "
                         f"(the predictions themselves need no extra package)") from None
    return plt


def pyplot_or_none():
    """pyplot (Agg backend), or None when matplotlib is not installed: a training run skips its
    pictures then, and says so once (`pip install matplotlib`), rather than stopping."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def enlarge(images: torch.Tensor, side: int = TILE) -> tuple[torch.Tensor, float]:
    """(N, C, H, W) scaled so the shorter side is at least `side` (nearest: small inputs stay crisp,
    patches stay squares). Returns the images and the scale factor."""
    scale = max(1.0, side / min(images.shape[-2:]))
    if scale == 1.0:
        return images, scale
    size = (round(images.shape[-2] * scale), round(images.shape[-1] * scale))
    return F.interpolate(images.float(), size=size, mode="nearest"), scale


def to_hwc(image: torch.Tensor):
    """(3, H, W) in [0, 1] -> (H, W, 3) numpy for imshow."""
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


# Layout of a sheet, in pixels (the figure is drawn at DPI dots per inch, so 1 figure pixel = 1 PNG pixel).
DPI, MARGIN, CAPTION, COLORBAR, MIN_WIDTH = 100, 20, 20, 90, 640


def sheet(plt, panels: list[tuple[torch.Tensor, str]], title: str):
    """A figure of `panels` (image (3, H, W) in [0, 1], caption) stacked top to bottom under `title`,
    each drawn 1:1 in pixels, so a 256 px tile is 256 px in the saved PNG. Space for a colour bar is
    kept right of every panel (`colorbar`). Returns the figure and one axes per panel."""
    content = max(MIN_WIDTH, *(p.shape[-1] for p, _ in panels))
    width = content + 2 * MARGIN + COLORBAR
    title = textwrap.fill(title, width // 9)
    title_px = 22 * (title.count("\n") + 1) + MARGIN
    height = title_px + sum(p.shape[-2] + CAPTION * (c.count("\n") + 1) for p, c in panels) + MARGIN
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.text(0.5, 1 - (MARGIN / 2) / height, title, ha="center", va="top", fontsize=13)
    top, axes = height - title_px, []
    for image, caption in panels:
        h, w = image.shape[-2:]
        top -= CAPTION * (caption.count("\n") + 1) + h
        left = MARGIN + (content - w) // 2  # centred
        ax = fig.add_axes((left / width, top / height, w / width, h / height))
        ax.imshow(to_hwc(image), interpolation="nearest")
        ax.set_title(caption, fontsize=10)
        ax.set_axis_off()
        axes.append(ax)
    return fig, axes


def colorbar(fig, ax, mappable, label: str) -> None:
    """A colour bar in the space `sheet` keeps right of `ax` (not taken from the panel itself)."""
    box = ax.get_position()
    cax = fig.add_axes((box.x1 + 12 / fig.bbox.width, box.y0, 16 / fig.bbox.width, box.height))
    fig.colorbar(mappable, cax=cax).set_label(label)


def save_figure(plt, fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
