"""Videos as sequences of face crops: the CSV index format, the split by video / original, the
synthetic default, and augmentation drawn once per sequence.

Real format (e.g. FaceForensics++ / DFDC after face extraction):

    <root>/index.csv          video,label[,split][,original]
    <root>/<video>/*.png|jpg  the face crops of that video, in frame order by file name
                              (icpr2020dfdc's `frNNN_subjS.jpg`: one sequence per subject S)
    <mask-root>/<video>/...   optional masks with the same file names (white = face / manipulated)

`label` is real/fake (or 0/1). `split` is train/val/test; without it videos are split here, by
`original` when given (a fake and the real video it was made from always share a split, so an
identity never leaks from training into validation, as in icpr2020dfdc's FF++ 720/140/140 split).
Every `original` must name a video of the index (or the identity name a real video gives itself in
its own `original`). `import_icpr2020dfdc.py` writes this index from icpr2020dfdc's DataFrames.

A sample is T evenly spaced frames of ONE video with that video's label (random offset in
training, fixed offsets for evaluation, which may take several clips per video).
"""

from __future__ import annotations

import csv
import io
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image

from common.cli import arg, at_least, between
from common.images import DECODE_ERRORS, check_one_file_per_frame, natural_key, open_image
from common.runtime import DataError, read_text, sample_generator

LABELS = {"real": 0, "fake": 1, "0": 0, "1": 1}
CLASS_NAMES = ("real", "fake")
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# icpr2020dfdc's extract_faces.py names a crop fr{frame:03d}_subj{subject}.jpg: a video with two people
# holds two interleaved runs of frames, which must make two sequences, never one that jumps between faces.
SUBJECT = re.compile(r"_subj(\d+)$")
# ImageNet statistics: the torchvision backbone (and its pretrained weights) expect them.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@dataclass
class VideoRecord:
    video: str  # name in the index (= folder of its frames)
    label: int  # 0 real, 1 fake
    num_frames: int  # frames available (synthetic: generated)
    split: str = ""  # train / val / test, '' when the split is made here
    original: str = ""  # the source video a fake was made from ('' for reals / unknown)
    frame_paths: list[Path] = field(default_factory=list)  # empty for synthetic videos
    mask_paths: list[Path] | None = None  # parallel masks, or None
    seed: int | None = None  # synthetic videos are drawn from this seed
    where: str = ""  # 'index.csv:12' for error messages
    subject: int | None = None  # the person S of a folder of frNNN_subjS crops holding several; None: one person

    @property
    def group(self) -> str:
        """Videos of one group always fall in the same split: a fake with its original (and all the
        subjects of one video, which share its name)."""
        return self.original or self.video


# ----------------------------------------------------------------------------- reading the index


def subject_of(name: str) -> int | None:
    match = SUBJECT.search(Path(name).stem)
    return int(match.group(1)) if match else None


def list_subjects(folder: Path, where: str) -> list[int | None]:
    """The people S of a folder holding the frNNN_subjS crops of several, else [None]: one sequence."""
    subjects = {subject_of(p.name) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    if None in subjects and len(subjects) > 1:
        raise DataError(f"{where}: {folder} mixes frNNN_subjS crops with other frame names; keep one naming")
    return sorted(subjects) if len(subjects) > 1 else [None]


def list_frames(folder: Path, where: str, subject: int | None = None) -> list[Path]:
    """The frame files of one video in frame order, one file per frame; with `subject`, the crops of
    that person only. A folder holding several people's crops needs `subject`."""
    names = [p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
    if subject is not None:
        names = [name for name in names if subject_of(name) == subject]
    else:
        subjects = sorted({s for s in map(subject_of, names) if s is not None})
        if len(subjects) > 1:
            raise DataError(f"{where}: {folder} holds the face crops of {len(subjects)} people "
                            f"(subj{', subj'.join(map(str, subjects))}); a sequence must show one: list the video "
                            f"in an index.csv, which reads one sequence per subject")
    check_one_file_per_frame(names, folder, where)
    # FIX(DFD-FRAME-SORT): a text sort puts 10.png before 2.png, so unpadded frames reached the LSTM shuffled.
    # was: return sorted(folder / name for name in names)
    return [folder / name for name in sorted(names, key=natural_key)]


def read_index(index_csv: Path, frames_root: Path, mask_root: Path | None, frames: int,
               pad_short: bool = False) -> tuple[list[VideoRecord], int]:
    """Parse the index and check every video's frame folder. Returns the records and the number of
    videos shorter than `frames` (padded by repeating the last frame when `pad_short`)."""
    if not index_csv.is_file():
        raise DataError(f"{index_csv}: index file not found")
    records, seen, padded = [], {}, 0
    with io.StringIO(read_text(index_csv), newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if "video" not in header or "label" not in header:
            raise DataError(f"{index_csv}:1: header {header} must contain 'video' and 'label' "
                            f"(optional 'split', 'original')")
        for line, row in enumerate(reader, start=2):
            where = f"{index_csv}:{line}"
            video = (row["video"] or "").strip()
            label_text = (row["label"] or "").strip().lower()
            if label_text not in LABELS:
                # True/False is icpr2020dfdc's `label` (True = fake); import_icpr2020dfdc.py converts its index
                icpr = label_text in ("true", "false")
                hint = "; for icpr2020dfdc's DataFrames run import_icpr2020dfdc.py" if icpr else ""
                raise DataError(f"{where}: unknown label {row['label']!r} for video {video!r}; use real/fake or "
                                f"0/1{hint}")
            split = (row.get("split") or "").strip().lower()
            if split and split not in SPLITS:
                raise DataError(f"{where}: unknown split {split!r}; use train/val/test")
            if video in seen:
                raise DataError(f"{where}: video {video!r} already listed at line {seen[video]}")
            seen[video] = line
            folder = frames_root / video
            if not folder.is_dir():
                raise DataError(f"{where}: frame folder {folder} does not exist")
            for subject in list_subjects(folder, where):  # one sequence per person, sharing label, split, group
                frame_paths = list_frames(folder, where, subject)
                of_whom = "" if subject is None else f" (subject {subject})"
                if len(frame_paths) < frames:
                    if not pad_short or not frame_paths:
                        raise DataError(f"{where}: {folder} has {len(frame_paths)} frames{of_whom}, fewer than "
                                        f"--frames {frames} (pass --pad-short to repeat the last frame)")
                    padded += 1
                mask_paths = None
                if mask_root is not None:
                    mask_paths = [mask_root / video / p.name for p in frame_paths]
                    missing = [p for p in mask_paths if not p.is_file()]
                    if missing:
                        raise DataError(f"{where}: mask {missing[0]} missing ({len(missing)} of {video}'s masks"
                                        f"{of_whom})")
                records.append(VideoRecord(video, LABELS[label_text], len(frame_paths), split,
                                           (row.get("original") or "").strip(), frame_paths, mask_paths, where=where,
                                           subject=subject))
    if not records:
        raise DataError(f"{index_csv}: no videos listed")
    check_originals(records, index_csv)
    return records, padded


def check_originals(records: list[VideoRecord], index_csv: Path) -> None:
    """An `original` that names no video made its fakes a group of their own, so a fake and its source
    could fall in different splits without a word. Known names: the videos, and the identity names real
    videos give themselves in their own `original` column."""
    known = {r.video for r in records} | {r.original for r in records if r.label == 0 and r.original}
    unknown = dict.fromkeys((r.where, r.original) for r in records if r.original and r.original not in known)
    if unknown:
        shown = [f"  {where}: original {original!r}" for where, original in list(unknown)[:50]]
        more = [f"  ... and {len(unknown) - 50} more"] if len(unknown) > 50 else []
        raise DataError(f"{index_csv}: {len(unknown)} `original` value(s) name no video of the index (a fake "
                        f"must name the `video` of its source, so both stay in one split):\n"
                        + "\n".join(shown + more))


def split_records(records: list[VideoRecord], val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, list[VideoRecord]]:
    """Use the index's split column when given, else split GROUPS (original video) at random,
    stratified by the group's labels. Either way no group crosses two splits."""
    given = [r for r in records if r.split]
    if given and len(given) != len(records):
        missing = next(r for r in records if not r.split)
        raise DataError(f"{missing.where}: split column empty for {missing.video!r} while other rows have one")
    split_of_group: dict[str, str] = {}
    if given:
        for r in records:
            first = split_of_group.setdefault(r.group, r.split)
            if first != r.split:
                raise DataError(f"{r.where}: video {r.video!r} is in split {r.split!r} but its group "
                                f"{r.group!r} is already in {first!r}: identities would leak across splits")
    else:
        groups: dict[str, set[int]] = {}
        for r in records:
            groups.setdefault(r.group, set()).add(r.label)
        by_kind: dict[tuple, list[str]] = {}
        for name, labels in sorted(groups.items()):
            by_kind.setdefault(tuple(sorted(labels)), []).append(name)
        rng = random.Random(seed)
        for names in by_kind.values():
            rng.shuffle(names)
            n_test = round(len(names) * test_fraction)
            n_val = round(len(names) * val_fraction)
            for i, name in enumerate(names):
                split_of_group[name] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return {s: [r for r in records if split_of_group[r.group] == s] for s in SPLITS}


def subsample(records: list[VideoRecord], fraction: float, seed: int) -> list[VideoRecord]:
    """Keep `fraction` of the VIDEOS of each class (at least one), never a fraction of frames."""
    if fraction >= 1.0:
        return records
    rng = random.Random(seed)
    kept = []
    for label in (0, 1):
        of_class = [r for r in records if r.label == label]
        kept += rng.sample(of_class, max(1, math.ceil(len(of_class) * fraction))) if of_class else []
    return sorted(kept, key=lambda r: r.video)


def check_two_classes(name: str, records: list[VideoRecord], source: str) -> None:
    present = {r.label for r in records}
    if present != {0, 1}:
        only = ", ".join(CLASS_NAMES[c] for c in sorted(present)) or "nothing"
        raise DataError(f"{source}: the {name} split has only {only} ({len(records)} videos); "
                        f"ROC-AUC and class weights need both real and fake videos")


def class_weights(labels: list[int]) -> torch.Tensor:
    """Inverse-frequency weights n / (2 n_c), mean 1 over samples."""
    counts = torch.bincount(torch.tensor(labels), minlength=2).float()
    if (counts == 0).any():
        raise DataError(f"class weights: a class has no sample (counts real/fake = {counts.tolist()})")
    return counts.sum() / (2 * counts)


# ----------------------------------------------------------------------------- synthetic videos


def synthetic_records(n_videos: int, seed: int, num_frames: int = 16, split: str = "train") -> list[VideoRecord]:
    """Half real, half fake; the frames are drawn from the record's seed when loaded."""
    offset = {"train": 0, "val": 1, "test": 2}[split]
    return [VideoRecord(f"{split}_{i:05d}", i % 2, num_frames, split, seed=seed * 1_000_003 + offset * 100_003 + i)
            for i in range(n_videos)]


def synthetic_video(seed: int, label: int, num_frames: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A talking-head cartoon: a background and a face ellipse whose skin is either light or dark.
    A real video keeps one tone (plus camera noise and a slow exposure drift shared by both
    classes); in a fake the tone flips at random from frame to frame, as when a face swap is
    blended frame by frame without temporal smoothing. Each single frame of a fake has the same
    distribution as a real frame (light or dark with probability 1/2), so only the temporal
    inconsistency reveals it.
    Returns frames [F, 3, S, S] in [0, 1] and the manipulated-region (face) mask [F, 1, S, S]."""
    g = torch.Generator().manual_seed(seed)
    u = lambda *shape: torch.rand(*shape, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    background = u(3, 1, 1) * 0.4 + 0.3 + 0.2 * (u(3, 1, 1) - 0.5) * xx  # [3, S, S] with a gradient
    cx, cy = ((u(2) - 0.5) * 0.3).tolist()
    face = (((xx - cx) / 0.5) ** 2 + ((yy - cy) / 0.65) ** 2 < 1).float()  # [S, S]
    skin = u(1, 3, 1, 1) * 0.2 + 0.45
    light = (u(num_frames if label == 1 else 1) < 0.5).float().expand(num_frames)  # fake: a fresh draw per frame
    tone = (0.6 + 0.8 * light + 0.1 * (u(1) - 0.5)).view(-1, 1, 1, 1)  # x0.6 (dark) or x1.4 (light)
    exposure = 0.03 * torch.sin(torch.linspace(0, 3, num_frames) + float(u(1)) * 6)
    frames = background * (1 - face) + skin * tone * face  # [F, 3, S, S]
    frames = frames + exposure.view(-1, 1, 1, 1) + 0.03 * torch.randn(num_frames, 3, size, size, generator=g)
    return frames.clamp(0, 1), face.expand(num_frames, 1, size, size).clone()


# ----------------------------------------------------------------------------- frames and augmentation


def sequence_frame_ids(num_frames: int, length: int, offset_fraction: float) -> list[int]:
    """`length` frames evenly spaced over the video, the whole pattern shifted by
    offset_fraction * (free room). Shorter videos repeat their last frame (padding, counted at indexing)."""
    if num_frames < length:
        return list(range(num_frames)) + [num_frames - 1] * (length - num_frames)
    stride = max(1, num_frames // length)
    room = num_frames - (stride * (length - 1) + 1)
    start = round(offset_fraction * room)
    return [start + stride * i for i in range(length)]


def load_image(path: Path, size: int, mode: str = "RGB") -> torch.Tensor:
    try:
        im = open_image(path, mode).resize((size, size), Image.BILINEAR)  # 16-bit scaled, not clipped
        return TF.to_dtype(TF.pil_to_tensor(im), torch.float32, scale=True)
    except DECODE_ERRORS as e:
        raise DataError(f"{path}: unreadable image ({e})") from e


@dataclass
class DataConfig:
    data_root: str | None = arg(None, "folder with index.csv and <video>/ frame folders (default: none, the "
                                "synthetic demo)")
    index: str | None = arg(None, "index CSV (default: <data-root>/index.csv)")
    mask_root: str | None = arg(None, "folder of masks parallel to the frames (enables --attention-loss-weight)")
    frames: int = arg(8, "T, frames per sequence", check=at_least(1))
    image_size: int | None = arg(None, "face crops are resized to this square side (default: 224 with --data-root, "
                                 "icpr2020dfdc's; 32 on the synthetic demo)", check=at_least(1))
    pad_short: bool = arg(False, "repeat the last frame of videos shorter than T (counted)")
    val_fraction: float = arg(0.15, "share of groups for validation (index without a split column)",
                              check=between(0.0, 1.0))
    test_fraction: float = arg(0.15, "share of groups for test (index without a split column)", check=between(0.0, 1.0))
    subset_fraction: float = arg(1.0, "keep this share of the videos of each split and class (at least one)",
                                 check=between(0.0, 1.0))
    eval_clips: int = arg(2, "sequences per video in validation / test", check=at_least(1))
    synthetic_train: int = arg(384, "synthetic training videos", check=at_least(1))
    synthetic_val: int = arg(96, "synthetic validation videos", check=at_least(1))
    synthetic_test: int = arg(96, "synthetic test videos", check=at_least(1))
    synthetic_frames: int = arg(16, "frames per synthetic video", check=at_least(1))
    augment: bool = arg(True, "training augmentation, drawn once per sequence")
    aug_blur: float = arg(0.0, "probability of a Gaussian blur (training; 0: off)", check=between(0.0, 1.0))
    aug_noise: float = arg(0.0, "std of compression-like noise (training; 0: off)", check=at_least(0.0, float))
    aug_icpr: bool | None = arg(None, "icpr2020dfdc's Gaussian noise, downscaling and JPEG compression (training; "
                                "default: on with --data-root, off on the synthetic demo)")


@dataclass
class AugmentConfig:
    flip: float = 0.5  # probability of a horizontal flip
    rotation: float = 10.0  # max degrees
    translate: float = 0.05  # max shift, fraction of the side
    scale: float = 0.1  # zoom in [1 - scale, 1 + scale]
    jitter: float = 0.2  # brightness / contrast / saturation factor in [1 - j, 1 + j]
    blur: float = 0.0  # probability of a Gaussian blur
    noise: float = 0.0  # std of additive noise + 5-bit quantisation (compression-like); 0 = off
    icpr: bool = False  # icpr2020dfdc's noise, downscaling and JPEG (isplutils/utils.py:159-194), each with p 0.5


def augment_sequence(frames: torch.Tensor, masks: torch.Tensor | None, cfg: AugmentConfig,
                     g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ONE set of random parameters for the whole sequence. Drawing them per frame would make a
    real video flicker (colour jitter) or shake (affine), which is exactly the fake cue."""
    u = lambda lo, hi: float(lo + (hi - lo) * torch.rand((), generator=g))
    if u(0, 1) < cfg.flip:
        frames = TF.horizontal_flip(frames)
        masks = TF.horizontal_flip(masks) if masks is not None else None
    size = frames.shape[-1]
    shift = [round(u(-cfg.translate, cfg.translate) * size), round(u(-cfg.translate, cfg.translate) * size)]
    affine = dict(angle=u(-cfg.rotation, cfg.rotation), translate=shift,
                  scale=u(1 - cfg.scale, 1 + cfg.scale), shear=[0.0, 0.0])
    frames = TF.affine(frames, **affine, interpolation=TF.InterpolationMode.BILINEAR)
    masks = TF.affine(masks, **affine) if masks is not None else None
    frames = TF.adjust_brightness(frames, u(1 - cfg.jitter, 1 + cfg.jitter))
    frames = TF.adjust_contrast(frames, u(1 - cfg.jitter, 1 + cfg.jitter))
    frames = TF.adjust_saturation(frames, u(1 - cfg.jitter, 1 + cfg.jitter))
    if cfg.blur > 0 and u(0, 1) < cfg.blur:
        frames = TF.gaussian_blur(frames, kernel_size=[3, 3], sigma=[u(0.1, 1.5)] * 2)
    if cfg.noise > 0:
        noise = torch.randn(frames.shape, generator=g) * u(0, cfg.noise)
        frames = torch.round((frames + noise).clamp(0, 1) * 31) / 31
    if cfg.icpr:
        frames = icpr_degradations(frames, u, g)
    return frames, masks


def icpr_degradations(frames: torch.Tensor, u, g: torch.Generator) -> torch.Tensor:
    """icpr2020dfdc's training degradations (isplutils/utils.py at bbd6411), each with albumentations'
    default p = 0.5: Downscale x0.5 (:161), additive Gaussian noise of std 0.01-0.03 (:191, the OneOf with
    ISONoise), Downscale x0.7-0.9 (:193), JPEG quality 50-99 (:194). Strength drawn once per sequence."""
    size = frames.shape[-2:]

    def downscale(x: torch.Tensor, factor: float) -> torch.Tensor:
        small = [max(1, round(side * factor)) for side in size]
        return F.interpolate(F.interpolate(x, size=small, mode="bilinear"), size=size, mode="bilinear")

    if u(0, 1) < 0.5:
        frames = downscale(frames, 0.5)
    if u(0, 1) < 0.5:
        frames = (frames + torch.randn(frames.shape, generator=g) * u(0.01, 0.03)).clamp(0, 1)
    if u(0, 1) < 0.5:
        frames = downscale(frames, u(0.7, 0.9)).clamp(0, 1)
    if u(0, 1) < 0.5:
        quality = int(u(50, 100))
        as_bytes = [torchvision.io.encode_jpeg(TF.to_dtype(f, torch.uint8, scale=True), quality=quality)
                    for f in frames]
        frames = torch.stack([TF.to_dtype(torchvision.io.decode_jpeg(b), torch.float32, scale=True) for b in as_bytes])
    return frames


class VideoSequenceDataset(torch.utils.data.Dataset):
    """Item i: clip (i % clips) of record (i // clips) -> {'frames' [T, 3, S, S] normalised,
    'label', 'video' (index of the video in this split; the subjects of one video share it),
    'mask' [T, 1, S, S] when masks exist}."""

    def __init__(self, records: list[VideoRecord], frames: int, size: int, train: bool,
                 augment: AugmentConfig | None, clips: int = 1, seed: int = 0):
        self.records, self.frames, self.size, self.train = records, frames, size, train
        self.augment, self.clips, self.seed, self.epoch = augment, 1 if train else clips, seed, 0
        self.has_masks = all(r.seed is not None or r.mask_paths is not None for r in records)
        # per-video metrics pool the sequences of all the subjects of one video
        first_of: dict[str, int] = {}
        self.video_ids = [first_of.setdefault(r.video, len(first_of)) for r in records]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records) * self.clips

    def load_frames(self, record: VideoRecord, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if record.seed is not None:
            frames, masks = synthetic_video(record.seed, record.label, record.num_frames, self.size)
            return frames[ids], masks[ids]
        frames = torch.stack([load_image(record.frame_paths[i], self.size) for i in ids])
        if record.mask_paths is None:
            return frames, None
        masks = torch.stack([load_image(record.mask_paths[i], self.size, mode="L") for i in ids])
        return frames, masks

    def __getitem__(self, index: int) -> dict:
        video_index, clip = divmod(index, self.clips)
        record = self.records[video_index]
        # per-sample randomness from (seed, epoch, index): the same whatever the worker count or a resume
        g = sample_generator(self.seed, self.epoch, index)
        # FIX(DFD-SEQUENCES): T evenly spaced frames of this one video, not frames of random videos.
        offset = float(torch.rand((), generator=g)) if self.train else (clip + 0.5) / self.clips
        ids = sequence_frame_ids(record.num_frames, self.frames, offset)
        frames, masks = self.load_frames(record, ids)
        if self.augment is not None:
            frames, masks = augment_sequence(frames, masks, self.augment, g)
        item = {"frames": (frames - MEAN) / STD, "label": record.label, "video": self.video_ids[video_index]}
        if self.has_masks:
            item["mask"] = masks
        return item


def denormalize(frames: torch.Tensor) -> torch.Tensor:
    """Back to [0, 1] RGB for drawing overlays."""
    return (frames.cpu() * STD + MEAN).clamp(0, 1)


def upsample_map(attention_map: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 1, h, w] -> [N, 1, size, size], for overlays."""
    return F.interpolate(attention_map.float().cpu(), size=(size, size), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- putting it together


def default_image_size(data_root: str | None) -> int:
    """icpr2020dfdc trains on 224 px faces (scripts/train_all.sh:18); the synthetic demo on 32 px."""
    return 224 if data_root else 32


def make_datasets(cfg: DataConfig, seed: int) -> tuple[dict[str, VideoSequenceDataset], torch.Tensor, dict]:
    """Datasets of the three splits, training class weights, and counts to print."""
    if cfg.data_root:
        root = Path(cfg.data_root)
        index = Path(cfg.index) if cfg.index else root / "index.csv"
        records, padded = read_index(index, root, Path(cfg.mask_root) if cfg.mask_root else None,
                                     cfg.frames, cfg.pad_short)
        splits = split_records(records, cfg.val_fraction, cfg.test_fraction, seed)
        empty = [name for name in ("train", "val") if not splits[name]]
        if empty and not any(r.split for r in records):
            groups = len({r.group for r in records})
            raise DataError(f"{index}: no `split` column, and splitting its {groups} groups (a video with its "
                            f"fakes) by --val-fraction {cfg.val_fraction} and --test-fraction {cfg.test_fraction} "
                            f"leaves the {empty[0]} split empty: add a `split` column (train/val/test) or change "
                            f"the fractions")
        source = str(index)
    else:
        sizes = {"train": cfg.synthetic_train, "val": cfg.synthetic_val, "test": cfg.synthetic_test}
        splits = {s: synthetic_records(n, seed, cfg.synthetic_frames, s) for s, n in sizes.items()}
        padded, source = 0, "synthetic videos"
    splits = {s: subsample(r, cfg.subset_fraction, seed) for s, r in splits.items()}
    for name in ("train", "val"):
        check_two_classes(name, splits[name], source)
    icpr = cfg.aug_icpr if cfg.aug_icpr is not None else bool(cfg.data_root)  # on real data unless said otherwise
    augment = AugmentConfig(blur=cfg.aug_blur, noise=cfg.aug_noise, icpr=icpr) if cfg.augment else None
    size = cfg.image_size or default_image_size(cfg.data_root)
    # FIX(DFD-SPLIT-BY-VIDEO): one dataset per split of video groups; a split of samples leaked faces.
    # FIX(DFD-AUG-AFTER-SPLIT): augment the training split only; the seed augmented before splitting.
    datasets = {s: VideoSequenceDataset(splits[s], cfg.frames, size, train=s == "train",
                                        augment=augment if s == "train" else None, clips=cfg.eval_clips, seed=seed)
                for s in SPLITS}
    # FIX(DFD-CLASS-WEIGHTS): class weights from the training split only; val/test labels leaked.
    # was: weights = class_weights([r.label for s in SPLITS for r in splits[s]])
    weights = class_weights([r.label for r in splits["train"]])
    info = {"padded": padded, "source": source, "sequences": {s: len(r) for s, r in splits.items()},
            "videos": {s: len({x.video for x in r}) for s, r in splits.items()}}
    return datasets, weights, info
