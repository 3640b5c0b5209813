"""P(fake) per sequence and per video from a deepfake_effnet_lstm checkpoint.

    python deepfake_effnet_lstm/predict.py --checkpoint runs/deepfake_effnet_lstm/best.pt faces/video_0001
    python deepfake_effnet_lstm/predict.py --checkpoint best.pt faces/ --format jsonl --overlay overlays/

INPUT is the face crops of one video (a folder of frames, in frame order by file name), a folder of
such video folders, or a dataset folder in the training format (index.csv + <video>/ folders: its
videos and their true labels). Each video gives --eval-clips sequences of T evenly spaced frames, as
validation and test take them (data.VideoSequenceDataset); the video's P(fake) is the mean over its
sequences, as model.per_video aggregates it; a probability >= 0.5 is called fake. A folder of
icpr2020dfdc crops (frNNN_subjS.jpg) holding several people gives one row set per person (column
subject), as training reads them.
A video file is refused: `python -m common.tools.video` turns videos into frame folders, whose faces must
then be cropped (the model was trained on face crops).
--overlay DIR writes one PNG per video: the frames of its first sequence and the attention map the
backbone applies to them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project, when run as a script

import dataclasses

import torch
from einops import rearrange

from common.cli import run_cli
from common.images import natural_key
from common.runtime import DataError, EpochSampler, autocast, autocast_dtype, make_loader
from common.tools.predict import eval_model, existing, open_run, predict_parser, write_rows
from deepfake_effnet_lstm import data as data_lib
from deepfake_effnet_lstm.model import DeepfakeDetector, DetectorConfig, fake_probability, per_video
from deepfake_effnet_lstm.plots import draw_overlay

PROJECT = "deepfake_effnet_lstm"
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
COLUMNS = ["video", "subject", "level", "sequence", "p_fake", "prediction", "true"]


def build_parser():
    parser = predict_parser(__doc__, formats=("csv", "jsonl"))
    parser.add_argument("input", help="a folder of face-crop frames, a folder of such folders, or a dataset folder "
                        "with index.csv")
    parser.add_argument("--overlay", default=None, metavar="DIR", help="one PNG per video: frames and attention map "
                        "(needs matplotlib)")
    return parser


def read_videos(path: Path, data: data_lib.DataConfig) -> list[data_lib.VideoRecord]:
    """The videos of INPUT; true labels only from an index.csv (-1: unknown)."""
    if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        raise DataError(f"{path}: a video file; this model reads the face crops of a video as image files "
                        f"({', '.join(data_lib.IMAGE_EXTENSIONS)}) in one folder per video: write its frames with "
                        f"`python -m common.tools.video {path} frames/`, crop the faces, and pass the folder")
    if path.is_file():
        raise DataError(f"{path}: not a folder; give a folder of frames, a folder of such folders, or the dataset "
                        f"folder that holds index.csv")
    if (path / "index.csv").is_file():
        return data_lib.read_index(path / "index.csv", path, None, data.frames, data.pad_short)[0]
    holds_frames = any(p.is_file() and p.suffix.lower() in data_lib.IMAGE_EXTENSIONS for p in path.iterdir())
    folders = [path] if holds_frames else sorted((d for d in path.iterdir() if d.is_dir()),
                                                 key=lambda d: natural_key(d.name))
    records = []
    for folder in folders:
        for subject in data_lib.list_subjects(folder, str(folder)):  # frNNN_subjS crops of several people: one each
            frames = data_lib.list_frames(folder, str(folder), subject)
            if not frames:
                continue
            who = folder if subject is None else f"{folder} (subject {subject})"
            if len(frames) < data.frames and not data.pad_short:
                raise DataError(f"{who}: {len(frames)} frames, fewer than the T = {data.frames} the model was "
                                f"trained on (a run with --pad-short repeats the last frame)")
            records.append(data_lib.VideoRecord(folder.name, -1, len(frames), frame_paths=frames, where=str(who),
                                                subject=subject))
    if not records:
        raise DataError(f"{path} holds no frames ({', '.join(data_lib.IMAGE_EXTENSIONS)}) and no folders of frames")
    return records


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    plt, device, checkpoint = open_run(args, PROJECT, "--overlay")
    config = checkpoint["config"]
    data = data_lib.DataConfig(**config["data"])
    records = read_videos(existing(args.input, "input"), data)
    model = eval_model(DeepfakeDetector(dataclasses.replace(DetectorConfig(**config["model"]), pretrained="none")),
                       checkpoint, args.checkpoint, device)  # the weights are the checkpoint's: nothing to download
    dataset = data_lib.VideoSequenceDataset(records, data.frames, data.image_size, train=False, augment=None,
                                            clips=data.eval_clips, seed=config["run"]["seed"])
    dtype = autocast_dtype(device, config["run"]["amp"])
    sampler = EpochSampler(len(dataset), args.batch_size, shuffle=False, drop_last=False)
    probs = []
    for batch in make_loader(dataset, sampler, workers=0, seed=config["run"]["seed"]):
        with autocast(device, dtype):
            probs.append(fake_probability(model(batch["frames"].to(device))).cpu())
    probs = rearrange(torch.cat(probs), "(v c) -> v c", c=dataset.clips)  # item i: clip i % C of video i // C
    videos = torch.arange(len(records)).repeat_interleave(dataset.clips)
    labels = torch.tensor([r.label for r in records]).repeat_interleave(dataset.clips)
    _, video_probs = per_video(labels, probs.flatten(), videos)  # (V,) the mean over each video's sequences

    def row(record: data_lib.VideoRecord, level: str, sequence, p: float) -> dict:
        return {"video": record.video, "subject": "" if record.subject is None else record.subject, "level": level,
                "sequence": sequence, "p_fake": p, "prediction": data_lib.CLASS_NAMES[int(p >= 0.5)],
                "true": data_lib.CLASS_NAMES[record.label] if record.label >= 0 else ""}

    rows = []
    for v, record in enumerate(records):
        rows += [row(record, "sequence", clip, p) for clip, p in enumerate(probs[v].tolist())]
        rows.append(row(record, "video", None, float(video_probs[v])))
    write_rows(rows, COLUMNS, args.format, args.output)

    if plt is not None:
        for v, record in enumerate(records):
            true = f", true {data_lib.CLASS_NAMES[record.label]}" if record.label >= 0 else ""
            who = record.video if record.subject is None else f"{record.video} subject {record.subject}"
            caption = (f"{who}: P(fake) {float(video_probs[v]):.2f} over {dataset.clips} sequence(s), "
                       f"predicted {data_lib.CLASS_NAMES[int(video_probs[v] >= 0.5)]}{true}; frames of sequence 0")
            frames = dataset[v * dataset.clips]["frames"]  # [T, 3, S, S]
            attention_map = model.get_attention(frames[None].to(device))[0]  # [T, 1, h, w]
            name = f"{v:03d}_{record.video}{'' if record.subject is None else f'_subj{record.subject}'}.png"
            title = f"deepfake_effnet_lstm {args.checkpoint}: attention overlay"
            draw_overlay(plt, frames, attention_map, caption, title, Path(args.overlay) / name)
        print(f"overlays: {len(records)} PNG files in {args.overlay}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    run_cli(main)
