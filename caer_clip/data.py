"""Clips for CLIP-CAER: RAER / DAiSEE / CAER readers, TSN frame sampling, face and context crops,
clip-level augmentation, CLIP normalisation, a class-balanced sampler and the synthetic default.

A sample is (face (T, 3, S, S), context (T, 3, S, S), label, fallbacks): T frames sampled over the
whole clip, the face crop (face box + margin) and the context (body box, or the whole frame) of each,
and how many box look-ups fell back (face to the centre square, context to the whole frame).
"""

import contextlib
import csv
import io
import json
import math
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from caer_clip.clip import load_clip
from caer_clip.model import CAERModel, ModelConfig, build_model
from common.cli import arg, at_least, between
from common.images import DECODE_ERRORS, check_one_file_per_frame, natural_key, open_image
from common.runtime import DataError, EpochSampler, read_text, sample_generator, seed_everything

# OpenAI CLIP's preprocessing statistics (openai/CLIP clip/clip.py, _transform).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Class names and descriptor sentences per dataset: "short" this repository's (several per class, averaged
# as in the RAPT-CLIP prompt ensemble); "clip-caer" RAER's, quoted from zgsfer/CLIP-CAER models/Text_last.py:69-79
# (`class_descriptor_5`, which train.sh:27 selects), the final '.' left to the prompt (PromptLearner adds it).
# RAER labels are 1-based in its lists, CAER 0-based, DAiSEE from the Engagement column (0-3).
CLASS_TEXT = json.loads(read_text(Path(__file__).with_name("class_text.json")))
CLASS_DESCRIPTORS = CLASS_TEXT["short"]
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".webm")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass
class DataConfig:
    data_root: str | None = arg(None, "dataset folder (default: built-in synthetic clips)")
    dataset: str = arg("raer", "format of --data-root (lists, labels, boxes)", choices=["raer", "daisee", "caer"])
    train_list: str = arg("train.txt", "annotation list (RAER/CAER) or label CSV (DAiSEE) under --data-root")
    val_list: str = arg("", "validation list (default: a stratified --val-fraction of the training list)")
    test_list: str = arg("test.txt", "test list, scored once at the end with the best-on-validation weights")
    val_fraction: float = arg(0.1, "share of each class held out to validate (no --val-list)", check=between(0.0, 1.0))
    face_boxes: str = arg("face_boxes.json", "per-frame face boxes {clip: {frame: [x1, y1, x2, y2]}}")
    body_boxes: str = arg("", "per-clip body boxes {clip: [x1, y1, x2, y2]} (default: whole frame as context)")
    class_text: str = arg("short", "class sentences: 'short' (ours, 2 per class) or 'clip-caer' (RAER only: CLIP-CAER "
                          "models/Text_last.py:69-79)", choices=["short", "clip-caer"])
    frames_subdir: str = arg("frames", "DAiSEE: folder holding one frame folder per ClipID")
    allow_missing_boxes: bool = arg(False, "RAER/CAER: centre-crop a clip with no face box instead of failing")
    face_margin: float = arg(0.1, "face box grown by this share of its size on each side", check=at_least(0.0, float))
    flip: bool = arg(True, "random horizontal flip, one draw per clip")
    rotate_degrees: float = arg(10.0, "random rotation in [-d, d], one draw per clip", check=between(0.0, 180.0))
    balanced_sampler: bool = arg(False, "class-balanced training epochs")
    balance_power: float = arg(0.0, "class share ~ count^power (0 balanced, 1 natural)", check=at_least(0.0, float))
    synthetic_train: int = arg(600, "synthetic training clips", check=at_least(1))
    synthetic_val: int = arg(200, "synthetic validation clips", check=at_least(1))
    synthetic_test: int = arg(200, "synthetic test clips", check=at_least(1))


def dataset_name(cfg: DataConfig) -> str:
    return "synthetic" if cfg.data_root is None else cfg.dataset


def class_descriptors(cfg: DataConfig) -> dict[str, list[str]]:
    """Class name -> descriptor sentences of the dataset (the names are the same for every --class-text)."""
    if cfg.class_text == "clip-caer" and dataset_name(cfg) != "raer":
        raise DataError(f"--class-text clip-caer: CLIP-CAER's sentences describe RAER, not {dataset_name(cfg)}")
    return CLASS_TEXT[cfg.class_text][dataset_name(cfg)]


def build_seeded_model(model_cfg: ModelConfig, data_cfg: DataConfig, seed: int) -> CAERModel:
    """The model for the dataset's class descriptors, seeded first: the tiny CLIP, its tokenizer and the
    prompt learner's token buffers are not in a checkpoint, so train.py and predict.py rebuild them alike."""
    seed_everything(seed)
    descriptors = list(class_descriptors(data_cfg).values())
    # the tiny CLIP's words: the descriptors, the prompt learner's placeholder and the hand-crafted prompt
    try:
        clip, tokenizer = load_clip(model_cfg.clip, [s for d in descriptors for s in d] + ["x", "a photo of ."])
    except (KeyError, ValueError, RuntimeError) as e:  # weights of another network: one line naming the file
        raise DataError(f"--clip {model_cfg.clip}: {str(e).strip().splitlines()[0]}") from None
    return build_model(model_cfg, clip, tokenizer, descriptors)


@dataclass
class ClipRecord:
    frames_dir: Path  # folder of the clip's frame images
    key: str  # the clip's key in the box files: its folder relative to the data root (clip_key)
    num_frames: int  # frames the list promises
    label: int  # 0-based class index
    source: str  # "file:line" for error messages


def clip_key(path: str) -> str:
    """Posix separators, no './' or '/' at either end, no video extension (CAER keys have none)."""
    key = str(path).replace("\\", "/").strip().strip("/")
    while key.startswith("./"):
        key = key[2:]
    stem, ext = os.path.splitext(key)
    return stem if ext.lower() in VIDEO_EXTENSIONS else key


def under_root(path: str, root: Path) -> str | None:
    """The clip key of `path` below the root written absolute, resolved, as given or relative to the working
    directory (RAPT-CLIP's `--root-dir ./RAER`); None when it is not below it."""
    forms = {Path(os.path.abspath(root)).as_posix(), Path(os.path.realpath(root)).as_posix(),
             posixpath.normpath(Path(root).as_posix())}
    with contextlib.suppress(ValueError):  # Windows: the root on another drive than the working directory
        forms.add(Path(os.path.relpath(os.path.abspath(root))).as_posix())
    path = posixpath.normpath(path)
    for base in sorted({f.rstrip("/") for f in forms} - {"", "."}, key=len, reverse=True):
        if path.startswith(base + "/"):
            return clip_key(path[len(base) + 1:])
    return None


def key_candidates(key: str, root: Path) -> list[str]:
    """The clip folders (relative to the data root) a box file's key may name, most literal first:
    the key as written (this repository's lists, CAER's 'train/x.avi'); the part under the data root
    (CLIP-CAER's absolute paths, RAPT-CLIP's os.path.join(root_dir, rel)); the part after a folder
    named like the data root (RAPT-CLIP keys written from another working directory or machine)."""
    text = str(key).replace("\\", "/").strip()
    parts, name = posixpath.normpath(text).split("/"), Path(os.path.abspath(root)).name
    found = [clip_key(text), under_root(text, root)]
    found += [clip_key("/".join(parts[i + 1:])) for i in range(len(parts) - 1) if parts[i] == name]
    return [k for k in found if k]


def listing(items: list[str], limit: int = 10) -> str:
    """The first `limit` items for an error message, and how many more."""
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def shown(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def read_boxes(path: Path, kind: str, root: Path, records: list[ClipRecord], allow_missing: bool):
    """A face or body box file, checked whole at load (a bad entry fails here, not in a DataLoader worker).
    Face files are {clip: {frame: box}}; body files {clip: box} (CLIP-CAER, RAPT-CLIP) or {clip: {frame: box}}
    (RAPT-CLIP's later loaders); a box is 4 finite numbers, null "no box". Malformed entries, and listed clips
    and frames without a box unless `allow_missing` (then counted fallbacks), are one DataError.
    Returns ({clip key: {frame stem: box} or box}, the summary "face boxes: 15 of 15 clips")."""
    if not path.is_file():
        raise DataError(f"box file {path} does not exist")
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    layout = "{clip: {frame: [x1, y1, x2, y2]}}" + ("" if kind == "face" else " or {clip: [x1, y1, x2, y2]}")
    if not isinstance(raw, dict):
        raise DataError(f"{path}: the top level must be an object {layout}, got {type(raw).__name__} {shown(raw)}")

    def malformed(box) -> bool:  # JSON's NaN, Infinity, true and false are no numbers of a box
        try:
            return box is not None and not (isinstance(box, list) and len(box) == 4 and all(
                type(v) in (int, float) and math.isfinite(v) for v in box))
        except OverflowError:  # an int too large for a float
            return True

    bad = []
    for clip, value in raw.items():
        if isinstance(value, dict):
            bad += [f"clip {clip!r} frame {name!r}: {shown(box)}" for name, box in value.items() if malformed(box)]
        elif kind == "face":
            bad.append(f"clip {clip!r}: {shown(value)} is not an object {{frame: box}}")
        elif malformed(value):
            bad.append(f"clip {clip!r}: {shown(value)}")
    if bad:
        raise DataError(f"{path}: {len(bad)} malformed {kind} box entries (layout {layout}, a box is 4 finite "
                        f"numbers): {listing(bad)}")
    # Each key to the first of its candidates that is a listed clip, else the key as written.
    clip_keys, boxes, owner, unmatched = {r.key for r in records}, {}, {}, []
    for key, value in raw.items():
        clip = next((k for k in key_candidates(key, root) if k in clip_keys), clip_key(key))
        if clip in owner:
            raise DataError(f"{path}: keys {owner[clip]!r} and {key!r} both name clip {clip!r}")
        owner[clip] = key
        unmatched += [] if clip in clip_keys else [key]
        if isinstance(value, dict):  # frames by stem: '12.jpg', '12.png' and '12' are frame 12
            boxes[clip] = {Path(name).stem: box for name, box in value.items() if box is not None}
        elif value is not None:
            boxes[clip] = value
    missing = {}  # clip key -> " (list:line)", and the frames without a box when only some lack one
    for rec in {r.key: r for r in records}.values():
        entry = boxes.get(rec.key)
        frames = list_frames(rec.frames_dir, rec.source, rec.num_frames) if isinstance(entry, dict) else []
        names = frames[:rec.num_frames]
        gaps = [n for n in names if Path(n).stem not in entry]
        if entry is None or gaps:
            missing[rec.key] = f" ({rec.source})" + (f" frames {', '.join(gaps)}" if len(gaps) < len(names) else "")
    summary = f"{kind} boxes: {len(clip_keys) - len(missing)} of {len(clip_keys)} clips"
    outside = [repr(k) for k in unmatched if re.match(r"/|\.\./|[A-Za-z]:/", k.replace("\\", "/").strip())]
    if outside:
        summary += (f" ({len(outside)} keys of {path.name} lie outside --data-root {root} and match no clip: "
                    f"{listing(outside, 3)})")
    if missing and allow_missing:
        summary += f" ({len(missing)} fall back: {listing([repr(k) for k in missing], 5)})"
    elif missing:
        hint = "" if outside or not unmatched else ("; a key names the clip folder relative to --data-root, keys "
                                                    f"matching no clip: {listing([repr(k) for k in unmatched], 3)}")
        instead = "centre crop" if kind == "face" else "whole frame"
        raise DataError(f"{path}: no {kind} box for clip {listing([repr(k) + m for k, m in missing.items()])} "
                        f"[{summary}]{hint} (pass --allow-missing-boxes to fall back to the {instead} instead)")
    return boxes, summary


def read_annotation_list(path: Path, root: Path, label_base: int, num_classes: int,
                         unlabelled: bool = False) -> list[ClipRecord]:
    """RAER / CAER list, one clip per line: `frames_dir num_frames label`, frames_dir relative to
    `root` or absolute (CLIP-CAER's lists: the key is then the folder below `root`); with `unlabelled`
    (predict.py) a line may hold the folder alone (label -1, every frame). '#' and blank lines are skipped."""
    if not path.is_file():
        raise DataError(f"annotation list {path} does not exist")
    records = []
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        fields, where = line.split(), f"{path}:{line_no}"
        if not fields or fields[0].startswith("#"):
            continue
        folder = fields[0].replace("\\", "/")
        key = (folder.startswith("/") and under_root(folder, root)) or clip_key(folder)
        if len(fields) == 1 and unlabelled:  # every frame of the folder, at least one
            count = len(list_frames(root / fields[0], where, promised=1))
            records.append(ClipRecord(root / fields[0], key, count, -1, where))
            continue
        if len(fields) != 3:
            raise DataError(f"{where}: expected 'frames_dir num_frames label', got {line!r}")
        try:
            num_frames, label = int(fields[1]), int(fields[2]) - label_base
        except ValueError as e:
            raise DataError(f"{where}: num_frames and label must be integers: {line!r}") from e
        if not 0 <= label < num_classes:
            raise DataError(f"{where}: label {fields[2]} outside [{label_base}, {num_classes - 1 + label_base}]")
        if num_frames < 1:
            raise DataError(f"{where}: num_frames must be >= 1")
        records.append(ClipRecord(root / fields[0], key, num_frames, label, where))
    if not records:
        raise DataError(f"annotation list {path} is empty")
    return records


def read_daisee_csv(path: Path, root: Path, frames_subdir: str) -> list[ClipRecord]:
    """DAiSEE label CSV `ClipID,Boredom,Engagement,Confusion,Frustration`; frames in
    `<root>/<frames_subdir>/<ClipID without extension>/`; label = Engagement (0-3)."""
    if not path.is_file():
        raise DataError(f"label CSV {path} does not exist")
    records, reader = [], csv.DictReader(io.StringIO(read_text(path), newline=""))
    fields = [name.strip() for name in reader.fieldnames or []]
    if "ClipID" not in fields or "Engagement" not in fields:
        raise DataError(f"{path}:1: header needs ClipID and Engagement columns, got {fields}")
    for line_no, row in enumerate(reader, start=2):
        row, where = {k.strip(): (v or "").strip() for k, v in row.items() if k}, f"{path}:{line_no}"
        try:
            label = int(row["Engagement"])
        except ValueError as e:
            raise DataError(f"{where}: Engagement must be an integer, got {row['Engagement']!r}") from e
        if not 0 <= label <= 3:
            raise DataError(f"{where}: Engagement {label} outside [0, 3]")
        key = clip_key(row["ClipID"])
        frames_dir = root / frames_subdir / key
        records.append(ClipRecord(frames_dir, key, len(list_frames(frames_dir, where, promised=1)), label, where))
    if not records:
        raise DataError(f"label CSV {path} is empty")
    return records


def list_frames(frames_dir: Path, source: str, promised: int = 0) -> list[str]:
    """The frame files of a clip folder in time order; fewer than `promised` (the list's count; 1: at least
    one) is an error."""
    if not frames_dir.is_dir():
        raise DataError(f"{source}: frame folder {frames_dir} does not exist")
    names = [n for n in os.listdir(frames_dir) if n.lower().endswith(FRAME_EXTENSIONS)]
    check_one_file_per_frame(names, frames_dir, source)  # '12.jpg' and '12.png', or '1.jpg' and '01.jpg'
    if promised and not names:
        raise DataError(f"{source}: frame folder {frames_dir} holds no frames")
    if len(names) < promised:
        raise DataError(f"{source}: the list says {promised} frames, {frames_dir} holds {len(names)}")
    # FIX(CAER-FRAME-SORT): a text sort puts 10.jpg before 2.jpg; compare the digits as numbers.
    # was: return sorted(names)
    return sorted(names, key=natural_key)


def sample_indices(num_frames: int, num_segments: int, train: bool, generator: torch.Generator) -> list[int]:
    """TSN sampling (Wang et al. 2016): the clip is cut into `num_segments` equal segments and one
    frame is taken from each, at a random offset in training and at the centre in evaluation."""
    edges = torch.linspace(0, num_frames, num_segments + 1)
    # FIX(CAER-SAMPLING): training saw frames 0..T-1 only; now a random frame in each of T segments.
    offset = torch.rand(num_segments, generator=generator) if train else torch.full((num_segments,), 0.5)
    index = (edges[:-1] + offset * (edges[1:] - edges[:-1])).floor().long()
    return index.clamp(0, num_frames - 1).tolist()


def grown_box(box, margin: float, height: int, width: int) -> tuple[int, int, int, int] | str:
    """`box` grown by `margin` of its size per side, clamped to a height x width frame (CLIP-CAER
    dataloader/video_dataloader.py:89-104: +- 20 px, clamped), or why it cannot be cropped: reaching past the
    frame is fine, nothing of the frame inside it (before the margin) is not."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 == x1 or y2 == y1:
        return "of zero area"
    if x2 < x1 or y2 < y1:
        return "inverted (x2 < x1 or y2 < y1)"
    if min(x2, width) <= max(x1, 0) or min(y2, height) <= max(y1, 0):
        return f"outside the {width}x{height} frame"
    dw, dh = margin * (x2 - x1), margin * (y2 - y1)  # margin >= 0: the grown box keeps what was inside
    return (max(0, math.floor(x1 - dw)), max(0, math.floor(y1 - dh)),
            min(width, math.ceil(x2 + dw)), min(height, math.ceil(y2 + dh)))


def centre_square(height: int, width: int) -> tuple[int, int, int, int]:
    side = min(height, width)
    y1, x1 = (height - side) // 2, (width - side) // 2
    return x1, y1, x1 + side, y1 + side


def crop_resize(frame: torch.Tensor, box: tuple[int, int, int, int], size: int, letterbox: bool) -> torch.Tensor:
    """uint8 (3, H, W) -> float (3, size, size) in [0, 1]. letterbox: the whole box, its longer side
    scaled to `size`, centred on black (CLIP-CAER dataloader/video_dataloader.py:73-87, used for the
    context at :214; RAPT-CLIP the same); else the box is squashed to a square (the face crop)."""
    x1, y1, x2, y2 = box
    region = frame[:, y1:y2, x1:x2].float().unsqueeze(0) / 255.0  # (1, 3, h, w)
    longer = max(region.shape[-2:]) if letterbox else None
    inner = [max(1, round(n * size / longer)) for n in region.shape[-2:]] if letterbox else [size, size]
    resized = F.interpolate(region, size=inner, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (size - inner[0]) // 2, (size - inner[1]) // 2
    return F.pad(resized, (left, size - inner[1] - left, top, size - inner[0] - top))  # black bars


def clip_normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


class ClipDataset(torch.utils.data.Dataset):
    """Frames on disk: `records` from a list / CSV, boxes from read_boxes."""

    def __init__(self, records: list[ClipRecord], face_boxes: dict | None, body_boxes: dict | None,
                 cfg: DataConfig, num_frames: int, image_size: int, train: bool, seed: int,
                 centre_crop_fallback: bool, box_summary: str = ""):
        self.records, self.face_boxes, self.body_boxes = records, face_boxes, body_boxes
        self.cfg, self.num_frames, self.image_size = cfg, num_frames, image_size
        self.train, self.seed, self.centre_crop_fallback = train, seed, centre_crop_fallback
        self.epoch, self._frame_names = 0, {}
        self.box_summary = box_summary  # "face boxes: N of M clips, ..." of real data, printed at start

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def sampler(self, batch_size: int, rank: int = 0, world_size: int = 1) -> EpochSampler:
        """The training order: class-balanced with --balanced-sampler, else a shuffle of every clip."""
        if self.cfg.balanced_sampler:
            return ClassBalancedSampler(self.labels, batch_size, self.cfg.balance_power, self.seed, rank, world_size)
        return EpochSampler(len(self), batch_size, shuffle=True, seed=self.seed, rank=rank, world_size=world_size)

    def frame_names(self, index: int) -> list[str]:
        if index not in self._frame_names:
            rec = self.records[index]
            self._frame_names[index] = list_frames(rec.frames_dir, rec.source, rec.num_frames)
        return self._frame_names[index]

    def load_frame(self, index: int, name: str) -> torch.Tensor:
        path = self.records[index].frames_dir / name
        try:
            # PIL rather than torchvision.io: its decoders are deprecated from torchvision 0.29, and
            # before 0.20 they take no path. open_image scales 16-bit frames instead of clipping them.
            return torch.from_numpy(np.array(open_image(path))).permute(2, 0, 1)  # (H, W, C) uint8 -> (C, H, W)
        except DECODE_ERRORS as e:
            raise DataError(f"{self.records[index].source}: cannot read frame {path}: {e}") from e

    def frame_box(self, index: int, kind: str, name: str, height: int, width: int):
        """The face (grown by --face-margin) or body box of a frame, as grown_box; when it is missing or cannot
        be cropped, None if fallbacks are allowed (or no --body-boxes were given), else an error naming it."""
        rec, boxes = self.records[index], self.face_boxes if kind == "face" else self.body_boxes
        # FIX(CAER-BOX-KEYS): boxes are keyed by clip and frame name; the full-path lookup never matched.
        # was: box = (boxes or {}).get(str(rec.frames_dir / name))  (face boxes, by full path)
        entry = (boxes or {}).get(rec.key)
        box = entry.get(Path(name).stem) if isinstance(entry, dict) else entry  # a per-clip box: every frame
        margin = self.cfg.face_margin if kind == "face" else 0.0
        grown = "missing" if box is None else grown_box(box, margin, height, width)
        if not isinstance(grown, str):
            return grown
        if self.centre_crop_fallback or (boxes is None and kind == "body"):
            return None
        raise DataError(f"{rec.source}: {kind} box {shown(box)} of clip {rec.key!r} frame {name!r} is {grown} "
                        f"(pass --allow-missing-boxes to treat it as missing)")

    def __getitem__(self, index: int):
        rec, names = self.records[index], self.frame_names(index)
        g = sample_generator(self.seed, self.epoch, index)
        faces, contexts, fallbacks = [], [], 0
        for i in sample_indices(rec.num_frames, self.num_frames, self.train, g):
            frame = self.load_frame(index, names[i])
            _, height, width = frame.shape
            face_box = self.frame_box(index, "face", names[i], height, width)
            context_box = self.frame_box(index, "body", names[i], height, width)
            # FIX(CAER-BOX-KEYS): a missing box is counted and centre-cropped, never a silent full frame.
            # was: face_box = face_box or (0, 0, width, height)
            fallbacks += (face_box is None) + (context_box is None and self.body_boxes is not None)
            face_box = face_box or centre_square(height, width)
            faces.append(crop_resize(frame, face_box, self.image_size, letterbox=False))
            contexts.append(crop_resize(frame, context_box or (0, 0, width, height), self.image_size, letterbox=True))
        face, context = torch.stack(faces), torch.stack(contexts)  # (T, 3, S, S) each
        if self.train:
            face, context = self.augment(face, context, g)
        # FIX(CAER-CLIP-NORM): CLIP expects its own mean/std standardisation, not raw [0, 1] pixels.
        # was: return face, context, rec.label, fallbacks
        return clip_normalise(face), clip_normalise(context), rec.label, fallbacks

    def augment(self, face: torch.Tensor, context: torch.Tensor, g: torch.Generator):
        """One flip and one rotation per clip, applied to every frame of both streams."""
        angle = (torch.rand((), generator=g).item() * 2 - 1) * self.cfg.rotate_degrees
        # FIX(CAER-SAME-AUG): one flip for both streams; separate draws mirrored the face against its context.
        if self.cfg.flip and torch.rand((), generator=g).item() < 0.5:
            face, context = TF.horizontal_flip(face), TF.horizontal_flip(context)
        if self.cfg.rotate_degrees > 0:
            face, context = TF.rotate(face, angle), TF.rotate(context, angle)
        return face, context


# Class -> (face pattern, scene): classes 0-2 differ by the face (scene random), classes 3 and 4
# share class 2's face and differ from it and from each other only by the scene, so a model
# without the context stream can at best merge classes 2-4 (UAR <= 0.6).
SYNTHETIC_CLASSES = [("across", None), ("down", None), ("checks", 0), ("checks", 1), ("checks", 2)]
SCENE_COLOURS = torch.tensor([[170, 70, 70], [70, 170, 70], [70, 70, 170]], dtype=torch.float32)


def render_synthetic_clip(label: int, num_frames: int, size: int, rng: np.random.Generator):
    """uint8 frames (F, 3, size, size) and per-frame face boxes [x1, y1, x2, y2]."""
    pattern, scene = SYNTHETIC_CLASSES[label]
    scene = rng.integers(0, 3) if scene is None else scene
    background = SCENE_COLOURS[scene] + float(rng.normal(0, 15))
    frames = background.view(1, 3, 1, 1).expand(num_frames, 3, size, size).clone()
    side = int(rng.integers(size // 4, size // 3 + 1))
    cx, cy = rng.integers(side + 2, size - side - 2, size=2)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    period = int(rng.integers(3, 5))
    stripes = {"across": (yy // period) % 2, "down": (xx // period) % 2,
               "checks": (yy // period + xx // period) % 2}[pattern]
    face = (40 + 180 * stripes.float()).expand(3, side, side)
    boxes = []
    for f in range(num_frames):
        dx, dy = rng.integers(-2, 3, size=2)
        x1, y1 = int(cx + dx - side // 2), int(cy + dy - side // 2)
        bx1, by1 = max(0, x1 - side // 2), max(0, y1 - side // 3)
        frames[f, :, by1:, bx1:min(size, x1 + side + side // 2)] = 128.0  # the person: grey, no scene colour
        frames[f, :, y1:y1 + side, x1:x1 + side] = face
        boxes.append([x1, y1, x1 + side, y1 + side])
    noise = torch.randn(frames.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**62))))
    return (frames + 12 * noise).clamp(0, 255).to(torch.uint8), boxes


class SyntheticClips(ClipDataset):
    """In-memory clips rendered once from a seed, read through the same sampling, box look-up, crop
    and augmentation as the real datasets; frames are named 1.jpg, 2.jpg, ... as RAER's."""

    def __init__(self, size: int, cfg: DataConfig, num_frames: int, image_size: int, train: bool,
                 seed: int, split_seed: int, frame_size: int = 48):
        rng = np.random.default_rng(split_seed)
        records, face_boxes, self.frames = [], {}, []
        for i in range(size):
            label, clip_frames = i % len(SYNTHETIC_CLASSES), int(rng.integers(num_frames, 3 * num_frames + 1))
            frames, boxes = render_synthetic_clip(label, clip_frames, frame_size, rng)
            key = f"synthetic/{split_seed}/{i:05d}"
            self.frames.append(frames)
            face_boxes[key] = {str(f + 1): box for f, box in enumerate(boxes)}  # by frame stem, as read_boxes
            records.append(ClipRecord(Path(key), key, clip_frames, label, f"synthetic clip {key}"))
        super().__init__(records, face_boxes, None, cfg, num_frames, image_size, train, seed, False)

    def frame_names(self, index: int) -> list[str]:
        return [f"{f + 1}.jpg" for f in range(len(self.frames[index]))]

    def load_frame(self, index: int, name: str) -> torch.Tensor:
        return self.frames[index][int(Path(name).stem) - 1]


def stratified_split(records: list[ClipRecord], fraction: float, seed: int):
    """Move `fraction` of each class (at least one clip of classes with two or more) to validation."""
    rng, val_ids = np.random.default_rng(seed), set()
    for label in dict.fromkeys(r.label for r in records):  # classes in order of first appearance
        ids = [i for i, r in enumerate(records) if r.label == label]
        take = min(len(ids) - 1, max(1, round(fraction * len(ids)))) if len(ids) > 1 else 0
        val_ids.update(rng.permutation(ids)[:take].tolist())
    return [r for i, r in enumerate(records) if i not in val_ids], [r for i, r in enumerate(records) if i in val_ids]


def read_split(cfg: DataConfig, name: str) -> list[ClipRecord]:
    root = Path(cfg.data_root)
    if cfg.dataset == "daisee":
        return read_daisee_csv(root / name, root, cfg.frames_subdir)
    label_base = 1 if cfg.dataset == "raer" else 0
    return read_annotation_list(root / name, root, label_base, len(CLASS_DESCRIPTORS[cfg.dataset]))


def build_datasets(cfg: DataConfig, num_frames: int, image_size: int, seed: int):
    """(train, val, test) datasets. Validation picks the best epoch; test is scored once at the end."""
    if cfg.data_root is None:
        def make(size, train, split_seed):
            return SyntheticClips(size, cfg, num_frames, image_size, train, seed, split_seed)
        train, test = make(cfg.synthetic_train, True, 1000 + seed), make(cfg.synthetic_test, False, 3000 + seed)
        # FIX(CAER-VAL-SPLIT): the best epoch is picked on a validation split, not on the test list.
        # was: val = test
        val = make(cfg.synthetic_val, False, 2000 + seed)
        return train, val, test
    root = Path(cfg.data_root)
    train_records, test_records = read_split(cfg, cfg.train_list), read_split(cfg, cfg.test_list)
    # FIX(CAER-VAL-SPLIT): validation is its own list or a stratified share of train, never the test list.
    # was: val_records = test_records
    val_records = read_split(cfg, cfg.val_list) if cfg.val_list else None
    if val_records is None:
        train_records, val_records = stratified_split(train_records, cfg.val_fraction, seed)
    # DAiSEE frames are webcam close-ups: a centre crop is a documented fallback, always allowed.
    fallback = cfg.allow_missing_boxes or cfg.dataset == "daisee"
    records, boxes, summary = train_records + val_records + test_records, {"face": None, "body": None}, []
    for kind, name in (("face", cfg.face_boxes), ("body", cfg.body_boxes)):
        if (name if kind == "body" else cfg.dataset != "daisee" or (name and (root / name).is_file())):
            boxes[kind], line = read_boxes(root / name, kind, root, records, fallback)
            summary.append(line)

    def make(records, train):
        return ClipDataset(records, boxes["face"], boxes["body"], cfg, num_frames, image_size, train, seed, fallback,
                           ", ".join(summary))
    return make(train_records, True), make(val_records, False), make(test_records, False)


class ClassBalancedSampler(EpochSampler):
    """Epochs of `len(labels)` indices where class c gets a share ~ count_c ** power (power 0:
    equal shares), drawn with replacement inside each class, in an order that depends only on (seed,
    epoch); EpochSampler's unshuffled path shards and resumes that list."""

    def __init__(self, labels: list[int], batch_size: int, power: float = 0.0, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        super().__init__(len(labels), batch_size, shuffle=False, seed=seed, rank=rank, world_size=world_size)
        self.labels, self.power = np.asarray(labels), power

    def class_counts(self) -> dict[int, int]:
        classes, counts = np.unique(self.labels, return_counts=True)
        weights = counts.astype(float) ** self.power
        weights /= weights.sum()
        # FIX(CAER-BALANCED-SAMPLER): every class with data gets a sample, the rest by largest remainder.
        spare = self.num_samples - len(classes)
        if spare < 0:
            raise DataError(f"an epoch of {self.num_samples} samples cannot hold {len(classes)} classes")
        exact = spare * weights
        alloc = np.floor(exact).astype(int) + 1
        order = np.argsort(-(exact - np.floor(exact)), kind="stable")
        alloc[order[: self.num_samples - alloc.sum()]] += 1
        return {int(c): int(a) for c, a in zip(classes, alloc)}

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        picks = []
        for c, count in self.class_counts().items():
            members = np.flatnonzero(self.labels == c)
            repeats = max(1, math.ceil(count / len(members)))
            order = torch.cat([torch.randperm(len(members), generator=g) for _ in range(repeats)])[:count]
            picks.extend(members[order.numpy()].tolist())
        order = torch.randperm(len(picks), generator=g).tolist()
        return [picks[order[i]] for i in super()._indices()]  # EpochSampler's shard of the positions 0..n-1
