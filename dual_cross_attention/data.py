"""Datasets for DCAL: CUB-200-2011, class-per-folder train/val(/test) trees, and a synthetic
fine-grained set where only a small local part decides the class.

Every dataset returns (image (3, S, S) float, label, index). Augmentation randomness comes from
`sample_generator(seed, epoch, index)`, never from the global RNG, so a resumed run sees exactly
the crops and flips of an uninterrupted one whatever the number of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from common.checkpoint import load_model_state, load_run_checkpoint
from common.cli import arg, at_least, between
from common.images import DECODE_ERRORS, open_image
from common.runtime import DataError, read_text, sample_generator
from dual_cross_attention.model import DCAL, DCALConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class DataConfig:
    data_root: str | None = arg(None, "CUB_200_2011 folder or a class-folder tree: train/ and val/ and/or test/ "
                                "(default: the built-in synthetic set)")
    resize: int = arg(550, "shorter side before cropping --image-size (real data)", check=at_least(1))
    val_fraction: float = arg(0.1, "share of each class of the train split held out for validation (best.pt) where "
                              "the data has no validation split of its own (CUB-200-2011, a train/test tree); "
                              "0: validate on the test split", check=between(0.0, 1.0))
    synthetic_train: int = arg(3000, "synthetic training images", check=at_least(1))
    synthetic_val: int = arg(600, "synthetic validation images", check=at_least(1))
    synthetic_test: int = arg(3000, "synthetic test images (drawn apart from the validation ones)", check=at_least(1))
    synthetic_classes: int = arg(10, "synthetic classes (at most 41)", check=at_least(2))
    synthetic_decoys: int = arg(3, "distractor parts per synthetic image, of no class: textures off the object",
                                check=at_least(0))
    synthetic_seed: int | None = arg(None, "seed that draws the synthetic task, its class parts and images (default: "
                                     "--seed); fixed, runs of several --seed values share one task",
                                     check=at_least(0))


# ----------------------------------------------------------------------------- transforms


class FGVCTransform:
    """Resize the shorter side to `resize`, then crop `crop` (random + horizontal flip in
    training, centre in evaluation), then ImageNet normalisation. The paper's FGVC recipe is
    resize 550, crop 448."""

    def __init__(self, resize: int = 550, crop: int = 448, train: bool = True):
        if crop > resize:
            raise ValueError(f"crop {crop} is larger than resize {resize}")
        self.resize, self.crop, self.train = resize, crop, train

    def __call__(self, img: Image.Image, generator: torch.Generator) -> torch.Tensor:
        img = TF.resize(img, self.resize, antialias=True)
        w, h = img.size
        if self.train:
            top = int(torch.randint(0, h - self.crop + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - self.crop + 1, (1,), generator=generator))
            img = TF.crop(img, top, left, self.crop, self.crop)
            if torch.rand(1, generator=generator).item() < 0.5:
                img = TF.hflip(img)
        else:
            img = TF.center_crop(img, [self.crop, self.crop])
        return TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)


def load_rgb(path: Path) -> Image.Image:
    try:
        return open_image(path)  # 8-bit RGB whatever the file's mode; 16-bit scaled, not clipped
    except DECODE_ERRORS as e:
        raise DataError(f"{path}: cannot read image ({e})") from e


class _FileListDataset(torch.utils.data.Dataset):
    """(path, label) list + transform; `set_epoch` changes the augmentation draw."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], transform: FGVCTransform, seed: int):
        self.samples, self.classes, self.transform, self.seed = samples, classes, transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = self.transform(load_rgb(path), sample_generator(self.seed, self.epoch, index))
        return image, label, index


# ----------------------------------------------------------------------------- CUB-200-2011

MAX_LISTED = 20  # problems shown in one DataError; the rest are counted


def _read_table(path: Path, columns: int, problems: list[str] | None = None) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line, the last field keeping inner spaces (CRLF, BOM fine);
    a line with too few fields is added to `problems`, or raised at once when no list is given."""
    if not path.is_file():
        raise DataError(f"{path}: missing (CUB-200-2011 layout needs images.txt, image_class_labels.txt, "
                        "train_test_split.txt and images/)")
    rows = []
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=columns - 1)
        if len(parts) != columns:
            if problems is None:
                raise DataError(f"{path}:{line_no}: expected {columns} fields, got {line!r}")
            problems.append(f"{path}:{line_no}: expected {columns} fields, got {line!r}")
        else:
            rows.append((line_no, parts))
    return rows


def _unique_ids(path: Path, rows: list[tuple[int, list[str]]], problems: list[str]) -> dict[str, tuple[int, str]]:
    """{id: (line, value)} of a two-column index file; a repeated id is a problem, not a silent overwrite."""
    by_id: dict[str, tuple[int, str]] = {}
    for line_no, (key, value) in rows:
        if key in by_id:
            problems.append(f"{path}:{line_no}: duplicate id {key} (first on line {by_id[key][0]})")
        else:
            by_id[key] = (line_no, value)
    return by_id


def _class_id(text: str) -> int | None:
    """The integer of a class id field, or None (ASCII only: str.isdigit() passes '²', int() refuses it)."""
    return int(text) if text.isascii() and text.isdigit() else None


def read_cub(root: Path) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[str]]:
    """(train, test, class names) of a CUB-200-2011 folder, labels 0-based in classes.txt order. The index
    files are checked against each other; every inconsistency (a missing or duplicate image id, an is_train
    other than 0/1, a class id that is no integer or no class, a missing image file) is raised in one
    DataError naming file, line and value."""
    problems: list[str] = []
    files = {name: root / f"{name}.txt" for name in ("images", "image_class_labels", "train_test_split", "classes")}
    images, labels, split = (_unique_ids(files[name], _read_table(files[name], 2, problems), problems)
                             for name in ("images", "image_class_labels", "train_test_split"))
    if not images:
        problems.append(f"{files['images']}: lists no image")

    class_ids: list[int] = []  # in file order: label i is class_ids[i]
    if files["classes"].is_file():
        classes = []
        for line_no, (class_id, name) in _read_table(files["classes"], 2, problems):
            if _class_id(class_id) is None:
                problems.append(f"{files['classes']}:{line_no}: class id {class_id!r} is not an integer")
            elif _class_id(class_id) in class_ids:
                problems.append(f"{files['classes']}:{line_no}: duplicate class id {class_id}")
            else:
                class_ids.append(_class_id(class_id))
                classes.append(name)
    else:  # the class ids found, in increasing order, stand for the names
        class_ids = sorted({_class_id(c) for _, c in labels.values() if (_class_id(c) or 0) >= 1})
        classes = [str(c) for c in class_ids]
    index_of = {c: i for i, c in enumerate(class_ids)}

    for image_id, (line_no, class_id) in labels.items():
        if _class_id(class_id) is None:
            problems.append(f"{files['image_class_labels']}:{line_no}: image id {image_id}: class id {class_id!r} "
                            f"is not an integer")
        elif _class_id(class_id) not in index_of:
            problems.append(f"{files['image_class_labels']}:{line_no}: image id {image_id} has unknown class id "
                            f"{class_id} (class ids: {'classes.txt' if files['classes'].is_file() else '>= 1'})")
    for image_id, (line_no, is_train) in split.items():
        if is_train not in ("0", "1"):
            problems.append(f"{files['train_test_split']}:{line_no}: image id {image_id}: is_train {is_train!r} "
                            f"is not 0 or 1")
    for name, table in (("image_class_labels", labels), ("train_test_split", split)):
        problems += [f"{files[name]}:{line_no}: image id {image_id} is not in images.txt"
                     for image_id, (line_no, _) in table.items() if image_id not in images]
        problems += [f"{files[name]}: no line for image id {image_id} (images.txt:{line_no})"
                     for image_id, (line_no, _) in images.items() if image_id not in table]
    problems += [f"{files['images']}:{line_no}: image id {image_id}: file images/{path} does not exist"
                 for image_id, (line_no, path) in images.items() if not (root / "images" / path).is_file()]
    if problems:  # all of them in one error, so a broken index is fixed in one pass
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{root}: the CUB-200-2011 index files disagree: {len(problems)} problem(s):\n  "
                        + "\n  ".join(problems[:MAX_LISTED]) + more)

    splits: dict[str, list[tuple[Path, int]]] = {"1": [], "0": []}
    for image_id, (_, path) in images.items():
        splits[split[image_id][1]].append((root / "images" / path, index_of[_class_id(labels[image_id][1])]))
    for is_train, name in (("1", "train"), ("0", "test")):
        if not splits[is_train]:
            raise DataError(f"{files['train_test_split']}: the {name} split is empty")
    return splits["1"], splits["0"], classes


def folder_samples(root: Path, split: str, classes: list[str] | None = None):
    """root/<split>/<class>/<image>; classes from the train tree, the other trees may not add any."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing split folder (expected {root}/train/<class>/... and "
                        f"{root}/val/<class>/... or {root}/test/<class>/...)")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    classes = found if classes is None else classes
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{split_dir}: unknown class folder(s) {unknown} not present in the train split")
    samples = [(path, label) for label, name in enumerate(classes) if (split_dir / name).is_dir()
               for path in sorted((split_dir / name).iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not samples:
        raise DataError(f"{split_dir}: the split is empty (no images under its class folders)")
    return samples, classes


def stratified_holdout(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out) indices: round(fraction x n) of the n items of each class held out, at
    least one of a class with two or more and never the last one of a class; the same split for
    the same seed whatever the global RNG (the draw is seeded per class)."""
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    held_out: set[int] = set()
    for label, indices in by_class.items():
        take = min(len(indices) - 1, max(1, round(fraction * len(indices))))
        order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed * 100_003 + label))
        held_out.update(indices[i] for i in order[:take].tolist())
    return [i for i in range(len(labels)) if i not in held_out], sorted(held_out)


def build_real_datasets(root: str | Path, resize: int, crop: int, seed: int, val_fraction: float = 0.1):
    """(train, val, test) datasets. Validation (best.pt) is the data's own val split; where there is
    none (CUB-200-2011, a train/test tree) a stratified `val_fraction` of the train split, drawn
    from `seed`; test is scored once at the end. With `val_fraction` 0, or a train/val tree
    without test/, the test dataset is the validation dataset itself."""
    root = Path(root)
    if (root / "images.txt").is_file():
        train, test, classes = read_cub(root)
        source, val = root / "train_test_split.txt", None
    elif (root / "train").is_dir():
        train, classes = folder_samples(root, "train")
        has_val, has_test = (root / "val").is_dir(), (root / "test").is_dir()
        # with neither val/ nor test/, folder_samples names the missing folder
        val = folder_samples(root, "val", classes)[0] if has_val or not has_test else None
        test = folder_samples(root, "test", classes)[0] if has_test else val  # a train/val tree: val is the test too
        source = root / "train"
    else:
        raise DataError(f"{root}: neither a CUB-200-2011 folder (images.txt) nor a train/val class-folder tree")
    if val is None and val_fraction == 0:
        val = test
    elif val is None:
        # best.pt is chosen on images held out of the train split, never on the test images it is
        # then scored on (that would make the test score optimistic); --val-fraction 0 opts out.
        kept, held_out = stratified_holdout([label for _, label in train], val_fraction, seed)
        if not held_out:
            raise DataError(f"{source}: cannot hold out a validation split from the train split: no class has two "
                            f"training images (--val-fraction 0 validates on the test split instead)")
        train, val = [train[i] for i in kept], [train[i] for i in held_out]
    train_set = _FileListDataset(train, classes, FGVCTransform(resize, crop, train=True), seed)
    val_set = _FileListDataset(val, classes, FGVCTransform(resize, crop, train=False), seed)
    test_set = val_set if test is val else _FileListDataset(test, classes, FGVCTransform(resize, crop, train=False),
                                                            seed)
    return train_set, val_set, test_set


def build_datasets(cfg: DataConfig, image_size: int, seed: int) -> tuple[dict, int]:
    """{"train", "val", "test"} datasets and the class count: real data under cfg.data_root, else synthetic."""
    if cfg.data_root is not None:
        train, val, test = build_real_datasets(cfg.data_root, cfg.resize, image_size, seed, cfg.val_fraction)
        return {"train": train, "val": val, "test": test}, len(train.classes)
    sizes = {"train": cfg.synthetic_train, "val": cfg.synthetic_val, "test": cfg.synthetic_test}
    if cfg.synthetic_classes > SyntheticFineGrained.max_classes():
        raise DataError(f"--synthetic-classes {cfg.synthetic_classes}: the synthetic set has parts for at most "
                        f"{SyntheticFineGrained.max_classes()} classes")
    # the seed picks which textures are the classes, so it sets how hard the task is: a fixed
    # --synthetic-seed keeps one task for every run seed (the ablation compares on it)
    data_seed = seed if cfg.synthetic_seed is None else cfg.synthetic_seed
    splits = {split: SyntheticFineGrained(n, cfg.synthetic_classes, image_size, decoys=cfg.synthetic_decoys,
                                          seed=data_seed, split=split) for split, n in sizes.items()}
    return splits, cfg.synthetic_classes


# ----------------------------------------------------------------------------- synthetic


class SyntheticFineGrained(torch.utils.data.Dataset):
    """Fine-grained toy data: one object (an ellipse of random colour, size and angle) per image on a
    cluttered background (smooth colour field, stripes, bars, noise); the class is decided only by the
    small `part` x `part` px texture on the object (stripes, checks, diagonals of 1-2 px in two
    colours, like a patch of plumage), at any pixel position, so it straddles patches. Distractors
    are parts of the same family that belong to no class, placed off the object independently of the
    label. The model has to find one small region, the setting GLCA's rollout-selected local queries
    are built for (Zhu et al., CVPR 2022, sec. 3.2); the object carries no class information.

    Images are drawn once from (seed, split) on a canvas `margin` px wider on each side: evaluation
    shows the centre, training a crop shifted by up to +-margin px per (seed, epoch, index) (no flip:
    a mirrored diagonal is another texture). `part_boxes` (top, left) and `decoy_boxes` (-1: no room)
    are in canvas pixels; subtract `crop_offset(index)` for the image `__getitem__` returns."""

    PALETTE = torch.tensor([[1.0, 0.1, 0.1], [0.1, 0.9, 0.1], [0.2, 0.3, 1.0], [1.0, 1.0, 0.2]])
    # the pre-training task's parts: the same textures in other colours, so none of its classes
    # (nor its distractors) is a part of the fine task
    PRETRAIN_PALETTE = torch.tensor([[0.1, 0.9, 0.9], [0.9, 0.1, 0.9], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    SPLITS = ("train", "val", "test", "pretrain-train", "pretrain-val")
    TEXTURES = (  # colour (0 or 1 of the pair) at row u, column v of a part; periodic in u and v
        lambda u, v: u % 2, lambda u, v: v % 2, lambda u, v: (u + v) % 2, lambda u, v: (u // 2 + v // 2) % 2,
        lambda u, v: (u // 2) % 2, lambda u, v: (v // 2) % 2, lambda u, v: ((u + v) // 2) % 2)

    @classmethod
    def colour_pairs(cls) -> list[tuple[int, int]]:
        return [(a, b) for a in range(len(cls.PALETTE)) for b in range(a + 1, len(cls.PALETTE))]

    @classmethod
    def max_classes(cls) -> int:
        """Distinct textured parts, less one kept for the decoys."""
        return len(cls.TEXTURES) * len(cls.colour_pairs()) - 1

    def __init__(self, num_samples: int, num_classes: int = 10, image_size: int = 32, part: int = 8,
                 decoys: int = 3, seed: int = 0, split: str = "train", margin: int = 2):
        canvas = image_size + 2 * margin
        if image_size - part < 2 * margin:
            raise ValueError(f"image_size {image_size} leaves no room for a {part} px part within +-{margin} px shifts")
        if split not in self.SPLITS:
            raise ValueError(f"split {split!r} is not one of {self.SPLITS}")
        pairs = self.colour_pairs()
        family = len(self.TEXTURES) * len(pairs)  # unordered pairs: swapping the colours only shifts a texture
        if num_classes > self.max_classes():
            raise ValueError(f"at most {self.max_classes()} synthetic classes ({family} textured parts, one left "
                             f"for decoys)")
        self.num_classes, self.image_size, self.part = num_classes, image_size, part
        self.margin, self.seed, self.train, self.epoch = margin, seed, split in ("train", "pretrain-train"), 0
        u, v = torch.meshgrid(torch.arange(part), torch.arange(part), indexing="ij")
        order = torch.randperm(family, generator=torch.Generator().manual_seed(seed)).tolist()  # the same in all splits
        tiles = []
        for index in order:  # the first num_classes are the classes' parts
            texture, (a, b) = self.TEXTURES[index // len(pairs)], pairs[index % len(pairs)]
            palette = self.PRETRAIN_PALETTE if split.startswith("pretrain") else self.PALETTE
            tiles.append(palette[torch.tensor([a, b])[texture(u, v)]].permute(2, 0, 1))  # (3, part, part)
        self.patterns = torch.stack(tiles)  # (family, 3, part, part) in [0, 1]
        g = torch.Generator().manual_seed(seed * 7919 + 101 + self.SPLITS.index(split))
        # balanced classes: num_samples / num_classes images each, in a random order
        self.labels = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=g)]
        pool = torch.arange(num_classes, family)
        self.decoy_patterns = pool[torch.randint(0, len(pool), (num_samples, decoys), generator=g)]  # into patterns
        # the part lies inside the crop whatever the shift: top/left in [2 * margin, image_size - part]
        self.part_boxes = torch.randint(2 * margin, image_size - part + 1, (num_samples, 2), generator=g)
        centre = self.part_boxes.float() + part / 2 + (torch.rand(num_samples, 2, generator=g) * 2 - 1)  # object's
        minor = ((torch.rand(num_samples, generator=g) * 0.06 + 0.16) * image_size).clamp_min(part / 2 + 1.5)
        radius = torch.stack([minor * (1 + 0.4 * torch.rand(num_samples, generator=g)), minor], dim=1)  # semi-axes
        self.decoy_boxes = self._place_decoys(centre, radius[:, 0], decoys, canvas, g)
        images = self._backgrounds(num_samples, canvas, g)
        for i, d in (self.decoy_boxes[..., 0] >= 0).nonzero().tolist():
            top, left = self.decoy_boxes[i, d].tolist()
            images[i, :, top:top + part, left:left + part] = self.patterns[self.decoy_patterns[i, d]]
        angle = torch.rand(num_samples, 1, 1, generator=g) * math.pi
        grid = torch.arange(canvas).float()
        dy = grid[None, :, None] - centre[:, 0, None, None]  # (n, canvas, 1) offsets from the object's centre
        dx = grid[None, None, :] - centre[:, 1, None, None]  # (n, 1, canvas)
        along, across = dy * angle.cos() + dx * angle.sin(), dx * angle.cos() - dy * angle.sin()
        inside = (along / radius[:, 0, None, None]) ** 2 + (across / radius[:, 1, None, None]) ** 2 <= 1  # (n, c, c)
        body_colour = torch.rand(num_samples, 3, 1, 1, generator=g) * 0.8 + 0.1
        images = torch.where(inside[:, None], body_colour, images)
        for i, (top, left) in enumerate(self.part_boxes.tolist()):
            images[i, :, top:top + part, left:left + part] = self.patterns[self.labels[i]]
        images = images + 0.05 * torch.randn(images.shape, generator=g)
        self.images = ((images - 0.5) / 0.25).float()

    def _place_decoys(self, centre: torch.Tensor, reach: torch.Tensor, decoys: int, canvas: int,
                      g: torch.Generator, tries: int = 64) -> torch.Tensor:
        """(n, decoys, 2) top-left corners off the object (centre farther than its long semi-axis
        `reach` + 3/4 part) and apart from each other; (-1, -1) where none of the tries fits."""
        n, part = len(centre), self.part
        candidates = torch.randint(0, canvas - part + 1, (n, tries, 2), generator=g)
        spots = candidates.float() + part / 2  # (n, tries, 2) centres
        free = (spots - centre[:, None]).norm(dim=-1) > reach[:, None] + 0.75 * part  # (n, tries)
        boxes = torch.full((n, decoys, 2), -1, dtype=torch.long)
        for d in range(decoys):
            pick = free.float().argmax(dim=1)  # the first free candidate of each image
            found = free[torch.arange(n), pick]
            boxes[found, d] = candidates[found, pick[found]]
            chosen = spots[torch.arange(n), pick]
            free &= ~found[:, None] | ((spots - chosen[:, None]).norm(dim=-1) >= part)  # keep the next one apart
        return boxes

    @staticmethod
    def _backgrounds(n: int, size: int, g: torch.Generator, max_bars: int = 6) -> torch.Tensor:
        """(n, 3, size, size) in ~[0, 1]: a smooth colour field, stripes and 3-6 bars, all random per image."""
        field = TF.resize(torch.rand(n, 3, 3, 3, generator=g) * 0.6 + 0.2, [size, size], antialias=True)
        y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
        theta = torch.rand(n, 1, 1, generator=g) * math.pi
        freq = torch.rand(n, 1, 1, generator=g) * 0.3 + 0.15  # cycles per pixel
        phase = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
        stripes = torch.sin(2 * math.pi * freq * (x * theta.cos() + y * theta.sin()) + phase)  # (n, size, size)
        tint = (torch.rand(n, 3, generator=g) * 2 - 1) * (torch.rand(n, 1, generator=g) * 0.2 + 0.05)
        images = field + tint[:, :, None, None] * stripes[:, None]
        # bars 1-2 px wide and 3-10 px long, lying or standing, of random colours: clutter the size of a part
        thick = torch.randint(1, 3, (n, max_bars), generator=g)
        length = torch.randint(3, 11, (n, max_bars), generator=g)
        lying = torch.rand(n, max_bars, generator=g) < 0.5
        height, width = torch.where(lying, thick, length), torch.where(lying, length, thick)
        top = (torch.rand(n, max_bars, generator=g) * (size - height + 1)).long()
        left = (torch.rand(n, max_bars, generator=g) * (size - width + 1)).long()
        shown = torch.arange(max_bars) < torch.randint(3, max_bars + 1, (n, 1), generator=g)  # (n, bars)
        colour = torch.rand(n, max_bars, 3, generator=g)
        for b in range(max_bars):  # later bars over earlier ones
            rows = (y[None] >= top[:, b, None, None]) & (y[None] < (top + height)[:, b, None, None])
            cols = (x[None] >= left[:, b, None, None]) & (x[None] < (left + width)[:, b, None, None])
            mask = rows & cols & shown[:, b, None, None]  # (n, size, size)
            images = torch.where(mask[:, None], colour[:, b, :, None, None], images)
        return images

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def crop_offset(self, index: int) -> tuple[int, int]:
        """(top, left) of the shown crop in canvas pixels: the centre in evaluation, a shift of up to
        +-margin drawn per (seed, epoch, index) in training."""
        if not self.train:
            return self.margin, self.margin
        return tuple(torch.randint(0, 2 * self.margin + 1, (2,),
                                   generator=sample_generator(self.seed, self.epoch, index)).tolist())

    def __getitem__(self, index: int):
        top, left = self.crop_offset(index)
        image = self.images[index, :, top:top + self.image_size, left:left + self.image_size]
        return image, int(self.labels[index]), index


# ----------------------------------------------------------------------------- a saved run


def rebuild_run(path) -> tuple[dict, DCAL, dict]:
    """(checkpoint, model with its weights, {train, val, test} datasets) of a saved run, the data and
    model rebuilt from the settings saved in it (for the tools and a one-process re-evaluation)."""
    checkpoint = load_run_checkpoint(path, "dual_cross_attention")
    model_cfg = DCALConfig(**checkpoint["config"]["model"])
    splits, _ = build_datasets(DataConfig(**checkpoint["config"]["data"]), model_cfg.image_size,
                               checkpoint["args"]["seed"])
    model = DCAL(model_cfg)
    load_model_state(model, checkpoint["model"], path)
    return checkpoint, model, splits
