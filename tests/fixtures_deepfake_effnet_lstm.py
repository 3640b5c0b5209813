"""Tiny on-disk datasets in the real format, written with PIL into a pytest tmp_path."""

from pathlib import Path

from PIL import Image

from tests.run_helpers import TINY

TINY_ARGS = [*TINY["deepfake_effnet_lstm"], "--pretrained", "none"]


def write_dataset(root: Path, videos: list[dict], frames: int = 4, size: int = 8, masks: bool = False) -> Path:
    """videos: dicts with video, label and optional split / original. Frame f of video v is a flat
    image with red = 10 v and green = 10 f, so a test can tell which video and frame it got."""
    columns = ["video", "label"] + [c for c in ("split", "original") if any(c in v for v in videos)]
    lines = [",".join(columns)]
    for v_index, v in enumerate(videos):
        lines.append(",".join(str(v.get(c, "")) for c in columns))
        folder = root / v["video"]
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(v.get("frames", frames)):
            Image.new("RGB", (size, size), (10 * v_index, 10 * f, 128)).save(folder / f"{f:04d}.png")
            if masks:
                (root.parent / "masks" / v["video"]).mkdir(parents=True, exist_ok=True)
                Image.new("L", (size, size), 255).save(root.parent / "masks" / v["video"] / f"{f:04d}.png")
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    return root


def grouped_videos(n_originals: int, splits: bool = False) -> list[dict]:
    """Each original real video with two fakes made from it (same group)."""
    videos = []
    for i in range(n_originals):
        split = {"split": ("train", "train", "val", "test")[i % 4]} if splits else {}
        videos.append({"video": f"real{i}", "label": "real", "original": "", **split})
        for k in range(2):
            videos.append({"video": f"fake{i}_{k}", "label": "fake", "original": f"real{i}", **split})
    return videos
