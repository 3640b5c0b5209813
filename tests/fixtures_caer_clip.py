"""Tiny models, batches and on-disk dataset folders for the caer_clip tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from caer_clip.clip import load_clip
from caer_clip.data import CLASS_DESCRIPTORS, DataConfig
from caer_clip.model import ModelConfig, build_model
from tests.run_helpers import TINY

TINY_TRAIN = [*TINY["caer_clip"], "--log-interval", "2"]


def tiny_model(dataset: str = "synthetic", **overrides):
    descriptors = list(CLASS_DESCRIPTORS[dataset].values())
    clip, tokenizer = load_clip("tiny", [s for d in descriptors for s in d] + ["x", "a photo of ."])
    cfg = ModelConfig(num_classes=len(descriptors), moco_queue=16, **overrides)
    return build_model(cfg, clip, tokenizer, descriptors)


def clip_batch(batch: int = 2, frames: int = 4, size: int = 32):
    return torch.randn(batch, frames, 3, size, size), torch.randn(batch, frames, 3, size, size)


def write_frames(folder: Path, count: int, size: tuple[int, int] = (40, 48), colour=(200, 50, 50),
                 box=None, box_colour=(20, 220, 20)) -> None:
    """`count` jpg frames 1.jpg..N.jpg; the region `box` painted in `box_colour`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, count + 1):
        frame = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, *size).clone()
        if box is not None:
            x1, y1, x2, y2 = box
            frame[:, y1:y2, x1:x2] = torch.tensor(box_colour, dtype=torch.uint8).view(3, 1, 1)
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(folder / f"{i}.jpg", quality=95)


def make_raer(root: Path, clips_per_class: int = 2, frames: int = 6, box=(10, 8, 30, 28)) -> DataConfig:
    """RAER layout: lists `frames_dir num_frames label` (1-based), per-frame face boxes JSON."""
    boxes, lines = {}, {"train": [], "test": []}
    for split in lines:
        for label in range(1, 6):
            for k in range(clips_per_class):
                clip = f"{split}/class{label}_{k}"
                write_frames(root / clip, frames, box=box)
                boxes[clip] = {f"{i}.jpg": list(box) for i in range(1, frames + 1)}
                lines[split].append(f"{clip} {frames} {label}")
    for split, rows in lines.items():
        (root / f"{split}.txt").write_text("\n".join(rows) + "\n")
    (root / "face_boxes.json").write_text(json.dumps(boxes))
    return DataConfig(data_root=str(root), dataset="raer", val_fraction=0.5)
