"""Class probabilities of clips from a caer_clip checkpoint.

    python caer_clip/predict.py --checkpoint runs/caer_clip/best.pt clips/clip_0001
    python caer_clip/predict.py --checkpoint best.pt RAER/test.txt --face-boxes RAER/face_boxes.json --format jsonl
    python caer_clip/predict.py --checkpoint best.pt clips/ --picture clips.png

INPUT is one clip (a folder of frames 1.jpg, 2.jpg, ...), a folder of clip folders, or a list file in
the training format, one clip per line: `frames_dir [num_frames label]`, labels numbered as the
checkpoint's --dataset numbers them (RAER from 1, CAER from 0). List paths and the clip keys of
--face-boxes (the JSON train.py reads, {clip: {frame: [x1, y1, x2, y2]}}) and --body-boxes are read by
train.py's readers relative to --root (default: for a list the checkpoint's --data-root when that folder
exists, as train.py reads them, else the list's folder; the folder of clips; the parent of the one clip).
Without --face-boxes every face crop is the centre square of the frame (counted in box_fallbacks).

Frames are sampled, cropped and normalised by the evaluation path of caer_clip/data.py, and the model
and class names come from the checkpoint's own settings.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

import os

import torch
import torch.nn.functional as F
from torchvision.utils import draw_bounding_boxes, make_grid

from caer_clip import data as data_lib
from caer_clip.model import ModelConfig
from common import runtime
from common.cli import run_cli
from common.runtime import DataError
from common.tools import predict

PROJECT = "caer_clip"
PICTURE_CLIPS = 8  # clips drawn by --picture (the first ones)
PICTURE_COLUMNS = 8  # frames per row of a clip in the picture


def build_parser():
    parser = predict.predict_parser(__doc__, formats=("csv", "jsonl"))
    parser.add_argument("input", help="a clip folder of frames, a folder of clip folders, or a list file")
    parser.add_argument("--face-boxes", default=None, help="per-frame face boxes JSON "
                        "{clip: {frame: [x1, y1, x2, y2]}} (default: centre crops)")
    parser.add_argument("--body-boxes", default=None, help="per-clip body boxes JSON {clip: [x1, y1, x2, y2]} for the "
                        "context crop (default: the whole frame)")
    parser.add_argument("--allow-missing-boxes", action="store_true", help="centre-crop the frames --face-boxes has no "
                        "box for (counted in box_fallbacks) instead of failing")
    parser.add_argument("--root", default=None, help="folder list paths and box keys are relative to (default: see "
                        "above)")
    parser.add_argument("--picture", default=None, help="PNG of the sampled frames of the first clips, the face crop "
                        "outlined, with the predicted class (needs matplotlib)")
    return parser


# ----------------------------------------------------------------------------- model and clips


def load_model(checkpoint: dict, path, device: torch.device):
    """The trained model, rebuilt as training built it (data.build_seeded_model), then its weights."""
    config = checkpoint["config"]
    model = data_lib.build_seeded_model(ModelConfig(**config["model"]), data_lib.DataConfig(**config["data"]),
                                        config["run"]["seed"])
    return predict.eval_model(model, checkpoint, path, device)


def clip_record(frames_dir: Path, root: Path, where: str, label: int = -1,
                num_frames: int | None = None) -> data_lib.ClipRecord:
    names = data_lib.list_frames(frames_dir, where)
    if not names:
        extensions = ", ".join(data_lib.FRAME_EXTENSIONS)
        raise DataError(f"{where}: clip folder {frames_dir} holds no frames ({extensions})")
    key = data_lib.clip_key(Path(os.path.relpath(frames_dir, root)).as_posix())
    return data_lib.ClipRecord(frames_dir, key, num_frames or len(names), label, where)


def read_clips(input_path: Path, root: Path | None, label_base: int, num_classes: int):
    """(the clips of INPUT, the folder their keys are relative to: `root`, or see the module's docstring)."""
    if input_path.is_file():
        if input_path.suffix.lower() in data_lib.VIDEO_EXTENSIONS:
            raise DataError(f"{input_path}: a video file; caer_clip reads clips as folders of frames "
                            f"(1.jpg, 2.jpg, ...): extract the frames first")
        base = root or input_path.parent
        return data_lib.read_annotation_list(input_path, base, label_base, num_classes, unlabelled=True), base
    if data_lib.list_frames(input_path, str(input_path)):  # one clip
        base = root or input_path.parent
        return [clip_record(input_path, base, str(input_path))], base
    base = root or input_path
    folders = sorted((d for d in input_path.iterdir() if d.is_dir()), key=lambda d: d.name)
    records = [clip_record(d, base, str(d)) for d in folders if data_lib.list_frames(d, str(d))]
    if not records:
        raise DataError(f"{input_path} holds no frames ({', '.join(data_lib.FRAME_EXTENSIONS)}) and no clip folders "
                        "with frames")
    return records, base


def read_inputs(args, data_cfg: data_lib.DataConfig, num_classes: int):
    """(records, face boxes, body boxes) through train.py's readers, list paths and box keys relative to
    --root (a list's default: the checkpoint's --data-root when that folder exists here, as train.py
    reads them; else see the module's docstring). A list's error says which folder they were read from."""
    input_path = predict.existing(args.input, "input")
    root = Path(args.root) if args.root else None
    if root is None and input_path.is_file() and data_cfg.data_root and Path(data_cfg.data_root).is_dir():
        root = Path(data_cfg.data_root)
    base = None
    try:
        records, base = read_clips(input_path, root, 1 if data_cfg.dataset == "raer" else 0, num_classes)
        absent = [f"{r.frames_dir} ({r.source})" for r in records if not r.frames_dir.is_dir()]
        if absent:
            raise DataError(f"{len(absent)} listed clip folder(s) do not exist: {data_lib.listing(absent)}")
        boxes = [data_lib.read_boxes(Path(path), kind, base, records, args.allow_missing_boxes)[0] if path else None
                 for kind, path in (("face", args.face_boxes), ("body", args.body_boxes))]
    except DataError as e:
        if not input_path.is_file() or args.root:
            raise
        raise DataError(f"{e} -- the list's paths and the box keys were read relative to {base or input_path.parent}"
                        f"; train.py reads them relative to --data-root: pass --root <the training --data-root>") from e
    return records, *boxes


# ----------------------------------------------------------------------------- picture


def sampled_frames(dataset: data_lib.ClipDataset, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The T frames the model saw of clip `index`, in [0, 1] at one size of at least TILE px, and the
    face crop of each (B, 4 boxes in those pixels), chosen as ClipDataset.__getitem__ chooses them."""
    rec, names = dataset.records[index], dataset.frame_names(index)
    generator = runtime.sample_generator(dataset.seed, 0, index)
    picks = data_lib.sample_indices(rec.num_frames, dataset.num_frames, False, generator)
    frames, boxes = [], []
    for i in picks:
        frame = dataset.load_frame(index, names[i])  # uint8 (3, H, W)
        _, height, width = frame.shape
        frames.append(frame)
        boxes.append(dataset.frame_box(index, "face", names[i], height, width) or data_lib.centre_square(height, width))
    first, scale = predict.enlarge(frames[0][None])
    size = first.shape[-2:]
    tiles = torch.cat([F.interpolate(f[None].float(), size=size, mode="nearest") for f in frames]) / 255
    boxes = torch.tensor([[x1 * size[1] / f.shape[2], y1 * size[0] / f.shape[1], x2 * size[1] / f.shape[2],
                           y2 * size[0] / f.shape[1]] for (x1, y1, x2, y2), f in zip(boxes, frames)])
    return tiles, boxes  # (T, 3, h, w), (T, 4)


def outline_box(tile: torch.Tensor, box: torch.Tensor, width: int) -> torch.Tensor:
    """uint8 (3, h, w) with `box` drawn in yellow inside a black edge on both sides: it reads on green
    scenes (where a green outline vanished), on dark and on light ones."""
    edge = max(1, width // 2)
    wide = torch.cat([box[:2] - edge, box[2:] + edge])[None]
    tile = draw_bounding_boxes(tile, wide, colors="black", width=width + 2 * edge)
    return draw_bounding_boxes(tile, box[None], colors="yellow", width=width)


def draw_picture(plt, dataset: data_lib.ClipDataset, probs: torch.Tensor, names: list[str], path: str,
                 checkpoint: str) -> Path:
    """One panel per clip (the first PICTURE_CLIPS): its sampled frames in a grid, face crops in yellow,
    captioned with the predicted class, its probability and the true class when the list gives it."""
    shown = range(min(PICTURE_CLIPS, len(dataset)))
    panels = []
    for index in shown:
        tiles, boxes = sampled_frames(dataset, index)
        width = max(2, tiles.shape[-1] // 100)
        outlined = torch.stack([outline_box((t * 255).byte(), b, width) for t, b in zip(tiles, boxes)])
        grid = make_grid(outlined.float() / 255, nrow=PICTURE_COLUMNS, padding=6, pad_value=1.0)
        rec, p = dataset.records[index], probs[index]
        caption = f"{rec.key}: predicted {names[int(p.argmax())]} ({float(p.max()):.2f})"
        caption += f", true {names[rec.label]}" if rec.label >= 0 else ""
        panels.append((grid, caption))
    more = f" (the first {len(shown)} of {len(dataset)} clips)" if len(dataset) > len(shown) else ""
    fig, _ = predict.sheet(plt, panels, f"caer_clip {checkpoint}: the {dataset.num_frames} frames sampled per clip, "
                                f"in time order, face crop outlined in yellow{more}")
    return predict.save_figure(plt, fig, path)


# ----------------------------------------------------------------------------- main


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    plt, device, checkpoint = predict.open_run(args, PROJECT, "--picture")
    config = checkpoint["config"]
    data_cfg = data_lib.DataConfig(**config["data"])
    names = list(data_lib.CLASS_DESCRIPTORS[data_lib.dataset_name(data_cfg)])
    records, face_boxes, body_boxes = read_inputs(args, data_cfg, len(names))
    model = load_model(checkpoint, args.checkpoint, device)
    # As in training: a frame missing from a given box file was an error above (DAiSEE: always a centre crop).
    fallback = face_boxes is None or args.allow_missing_boxes or data_cfg.dataset == "daisee"
    dataset = data_lib.ClipDataset(records, face_boxes, body_boxes, data_cfg, model.cfg.num_frames,
                          model.clip.cfg.image_resolution, train=False, seed=config["run"]["seed"],
                          centre_crop_fallback=fallback)
    dtype = runtime.autocast_dtype(device, config["run"]["amp"])
    probs, fallbacks = [], []
    sampler = runtime.EpochSampler(len(dataset), args.batch_size, shuffle=False, drop_last=False)
    for face, context, _, box_fallbacks in runtime.make_loader(dataset, sampler, 0, config["run"]["seed"]):
        with runtime.autocast(device, dtype):
            logits = model(face.to(device), context.to(device))["logits"]
        probs.append(logits.float().softmax(dim=-1).cpu())
        fallbacks += box_fallbacks.tolist()
    probs = torch.cat(probs)

    rows = []
    for rec, p, predicted, fb in zip(records, probs.tolist(), probs.argmax(dim=-1).tolist(), fallbacks):
        true, prediction = names[rec.label] if rec.label >= 0 else "", names[predicted]
        if args.format == "csv":
            rows.append({"clip": rec.key, "prediction": prediction, **{f"p_{n}": v for n, v in zip(names, p)},
                         "true": true, "box_fallbacks": fb})
        else:
            rows.append({"clip": rec.key, "prediction": prediction, "probabilities": dict(zip(names, p)),
                         "true": true or None, "box_fallbacks": fb})
    predict.write_rows(rows, ["clip", "prediction", *[f"p_{n}" for n in names], "true", "box_fallbacks"], args.format,
               args.output)
    if face_boxes is None:
        print("no --face-boxes: the face crop of every frame is its centre square", file=sys.stderr)
    if plt is not None:
        print(f"picture: {draw_picture(plt, dataset, probs, names, args.picture, args.checkpoint)}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    run_cli(main)
