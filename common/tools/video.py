"""Raw videos to the frame folders the readers expect: DAiSEE `.avi` clips for caer_clip,
FaceForensics++ / DFDC `.mp4` videos for deepfake_effnet_lstm.

    python -m common.tools.video SRC_DIR OUT_DIR [--fps F | --frames-per-video N] [--ext jpg|png]
                           [--size S] [--layout caer_clip|deepfake_effnet_lstm] [--workers K]

Every video under SRC_DIR (.avi .mp4 .mov .mkv .webm, recursively, in natural order) becomes one
folder of frames `1.jpg, 2.jpg, ...`: 1-based and unpadded, the RAER convention (its face-box files
are keyed "N.jpg"), ordered by both readers with `natural_key`, and numbered consecutively so that
the n-th file is the n-th sampled frame whatever the sampling. OUT_DIR is the `--data-root`:

- layout deepfake_effnet_lstm (default): `OUT_DIR/<path under SRC_DIR without extension>/`, the
  source tree mirrored, since FaceForensics++ repeats names across methods
  (Deepfakes/c23/videos/000_003.mp4, Face2Face/c23/videos/000_003.mp4). That relative path is the
  `video` column of index.csv; `--index` writes a stub of it with an empty label column to fill.
- layout caer_clip: `OUT_DIR/frames/<file name without extension>/`, flat, because the DAiSEE reader
  looks up `<root>/frames/<ClipID without extension>/` and DAiSEE nests each clip in
  `<subject>/<clip>/` folders. Two videos with one name are refused before anything is written.

Sampling: `--fps F` keeps the first frame of every 1/F s of video time (never more than the video's
own frames); `--frames-per-video N` keeps N frames at the centres of N equal segments of the video
(all of them when the video is shorter); neither keeps every frame.

Each video is written into a hidden `.<name>.partial` folder and renamed into place when complete,
so a kill mid-video never leaves a folder that a re-run would take as finished. A re-run skips the
videos whose folder exists; `video_frames.json` records the settings and a re-run with different ones
is refused (the folders would mix two samplings). Decoding needs PyAV (`pip install av`), an optional
dependency: without it the command stops with that one line.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from common.images import natural_key
from common.runtime import DataError

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".webm")
LAYOUTS = ("deepfake_effnet_lstm", "caer_clip")
SETTINGS_FILE = "video_frames.json"
INSTALL_HINT = "decoding videos needs PyAV: pip install av"


class VideoError(DataError):
    """A video that cannot be decoded, or an output folder that cannot hold it: the message names the file."""


@dataclass(frozen=True)
class FrameSettings:
    fps: float | None = None  # keep the first frame of every 1/fps s of video time (None: no time sampling)
    frames_per_video: int | None = None  # keep this many evenly spaced frames (None: no count sampling)
    ext: str = "jpg"  # frame file type: jpg or png
    size: int | None = None  # shorter side resized to this many pixels, aspect kept (None: as decoded)
    quality: int = 95  # JPEG quality; the Pillow default of 75 blurs the compression traces of small faces


@dataclass(frozen=True)
class Job:
    video: Path  # the source video
    folder: Path  # its finished frame folder


def import_av():
    """The PyAV module, or a one-line exit naming the package to install."""
    try:
        import av
    except ImportError:
        raise SystemExit(f"common/tools/video.py: error: {INSTALL_HINT}") from None
    return av


# ----------------------------------------------------------------------------- finding videos


def find_videos(src: Path) -> list[Path]:
    """Video files under `src` (or `src` itself), in natural order of their path under `src`."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise VideoError(f"{src}: no such file or folder")
    videos = [p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
    return sorted(videos, key=lambda p: natural_key(p.relative_to(src).as_posix()))


def output_folder(video: Path, src: Path, out: Path, layout: str) -> Path:
    if layout == "caer_clip":
        return out / "frames" / video.stem
    relative = video.relative_to(src) if src.is_dir() else Path(video.name)
    return out / relative.with_suffix("")


def plan_jobs(videos: list[Path], src: Path, out: Path, layout: str) -> list[Job]:
    """One job per video; two videos that would share a folder are refused, naming both."""
    jobs, owner = [], {}
    for video in videos:
        folder = output_folder(video, src, out, layout)
        if folder in owner:
            raise VideoError(f"{owner[folder]} and {video} would both be written to {folder}; rename one "
                             f"(or use --layout deepfake_effnet_lstm, which keeps the folders of SRC_DIR)")
        owner[folder] = video
        jobs.append(Job(video, folder))
    return jobs


# ----------------------------------------------------------------------------- decoding and sampling


def even_indices(total: int, count: int) -> list[int]:
    """`count` frame indices at the centres of `count` equal segments of `total` frames (all of them
    when the video is shorter). Centres rather than both ends: first and last frames are often fades."""
    if total <= count:
        return list(range(total))
    return [math.floor((i + 0.5) * total / count) for i in range(count)]


def decoded_frames(path: Path) -> Iterator[tuple[int, float, object]]:
    """(index, seconds from the first frame, av.VideoFrame) for every frame of the first video stream.
    Any decoding failure becomes a VideoError naming the file."""
    av = import_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame and slice threads of the decoder: several times faster on HD
            rate = stream.average_rate or stream.guessed_rate
            start = None
            for index, frame in enumerate(container.decode(stream)):
                # Some AVI files carry no timestamps: fall back on the index at the nominal rate.
                if frame.time is not None:
                    time = frame.time
                elif rate:
                    time = index / float(rate)
                else:
                    raise VideoError(f"{path}: frames without timestamps and no frame rate; "
                                     f"use --frames-per-video instead of --fps")
                start = time if start is None else start
                yield index, time - start, frame
    except av.error.FFmpegError as e:
        # FFmpeg's message repeats the file name; its strerror is the reason alone
        raise VideoError(f"{path}: cannot decode video ({getattr(e, 'strerror', None) or e})") from e


def reported_frame_count(path: Path) -> int:
    """Frames the container claims (0 when it does not say, as Matroska / WebM)."""
    av = import_av()
    try:
        with av.open(str(path)) as container:
            return container.streams.video[0].frames if container.streams.video else 0
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot decode video ({getattr(e, 'strerror', None) or e})") from e


def to_image(frame, size: int | None) -> Image.Image:
    image = frame.to_image()  # RGB24 through FFmpeg's converter, whatever the pixel format
    if size is None:
        return image
    scale = size / min(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if new_size == image.size else image.resize(new_size, Image.BICUBIC)


def sampled_frames(path: Path, settings: FrameSettings) -> Iterator[Image.Image]:
    """The frames to keep, in temporal order."""
    if settings.frames_per_video is not None:
        yield from frames_by_count(path, settings.frames_per_video, settings.size)
        return
    last_bucket = -1
    for _, time, frame in decoded_frames(path):
        if settings.fps is not None:
            # 1e-6: a frame stamped 0.4999999 s by float rounding still opens the 0.5 s slot
            bucket = math.floor(time * settings.fps + 1e-6)
            if bucket <= last_bucket:
                continue
            last_bucket = bucket
        yield to_image(frame, settings.size)


def frames_by_count(path: Path, count: int, size: int | None) -> list[Image.Image]:
    """`count` evenly spaced frames. The container's frame count is trusted for one pass and checked
    against the frames really decoded; a wrong or missing count costs a second pass, never a wrong pick."""
    total = reported_frame_count(path)
    if total == 0:
        total = sum(1 for _ in decoded_frames(path))
    for _ in range(2):
        wanted = set(even_indices(total, count))
        picked, decoded = [], 0
        for index, _, frame in decoded_frames(path):
            decoded = index + 1
            if index in wanted:
                picked.append(to_image(frame, size))
        if decoded == total:
            return picked
        total = decoded
    return picked


# ----------------------------------------------------------------------------- writing


def save_frame(image: Image.Image, path: Path, quality: int) -> None:
    if path.suffix == ".jpg":
        image.save(path, quality=quality)
    else:
        image.save(path)


def partial_folder(folder: Path) -> Path:
    """Hidden sibling the frames are written to before the rename (readers list no dot folders)."""
    return folder.with_name(f".{folder.name}.partial")


def write_video(job: Job, settings: FrameSettings) -> int:
    """Decode one video into its frame folder; returns the number of frames written."""
    partial = partial_folder(job.folder)
    if partial.exists():
        shutil.rmtree(partial)  # left by a killed run
    partial.mkdir(parents=True)
    try:
        written = 0
        for written, image in enumerate(sampled_frames(job.video, settings), start=1):
            save_frame(image, partial / f"{written}.{settings.ext}", settings.quality)
        if written == 0:
            raise VideoError(f"{job.video}: no frame could be decoded")
        os.replace(partial, job.folder)
        return written
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def attempt(job: Job, settings: FrameSettings) -> int | VideoError:
    """write_video with its VideoError returned, so that worker processes hand it back like a result."""
    try:
        return write_video(job, settings)
    except VideoError as e:
        return e


def run_jobs(jobs: list[Job], settings: FrameSettings, workers: int) -> Iterator[int | VideoError]:
    """Frames written or the VideoError (which names the video), per video in order of completion."""
    if workers == 1:
        for job in jobs:
            yield attempt(job, settings)
        return
    pool = ProcessPoolExecutor(workers)
    try:
        futures = [pool.submit(attempt, job, settings) for job in jobs]
        for future in as_completed(futures):
            yield future.result()
    finally:
        # on a stop, videos not started are dropped; running ones still finish (or clean up) their folder
        pool.shutdown(wait=True, cancel_futures=True)


def write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def check_settings(out: Path, settings: FrameSettings, layout: str) -> None:
    """Record the settings in OUT_DIR, or refuse a re-run whose settings differ from the recorded ones."""
    path = out / SETTINGS_FILE
    wanted = {**asdict(settings), "layout": layout}
    if path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if recorded != wanted:
            changed = ", ".join(f"{k} {recorded.get(k)} -> {wanted[k]}" for k in wanted if recorded.get(k) != wanted[k])
            raise VideoError(f"{path}: {out} was written with other settings ({changed}); its folders would "
                             f"mix two samplings: use another OUT_DIR or delete this one")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(wanted, indent=2) + "\n")


def write_index_stub(out: Path, folders: list[Path]) -> str:
    """index.csv with `video,label` and the label left empty to fill (real/fake); an existing index is
    never overwritten, since its labels may already be filled."""
    path = out / "index.csv"
    names = [folder.relative_to(out).as_posix() for folder in folders]
    if path.exists():
        return f"{path} exists, left as it is"
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["video", "label"])
    writer.writerows([name, ""] for name in names)
    write_atomic(path, text.getvalue())
    return f"{path}: {len(names)} videos, fill the label column with real or fake"


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m common.tools.video", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, metavar="SRC_DIR",
                        help="folder searched recursively for videos, or one video")
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="the --data-root the frame folders go to")
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=float, default=None,
                          help="frames per second of video time (default: every frame)")
    sampling.add_argument("--frames-per-video", type=int, default=None, help="evenly spaced frames per video")
    parser.add_argument("--ext", choices=["jpg", "png"], default="jpg", help="frame file type (default: jpg)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality, 1-95 (default: 95)")
    parser.add_argument("--size", type=int, default=None, help="resize the shorter side to this (default: as decoded)")
    parser.add_argument("--layout", choices=LAYOUTS, default="deepfake_effnet_lstm",
                        help="deepfake_effnet_lstm (default): OUT_DIR/<path under SRC_DIR>/; "
                        "caer_clip: OUT_DIR/frames/<name>/")
    parser.add_argument("--index", action="store_true", help="deepfake_effnet_lstm: write an index.csv stub "
                        "(video,label) with the label column to fill")
    parser.add_argument("--workers", type=int, default=1, help="videos decoded in parallel processes (default: 1)")
    parser.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                        help="unreadable video: stop there (default), or go on and list them all at the end "
                        "(exit status 1)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("fps", "frames_per_video", "size", "workers"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0 (got {value})")
    if not 1 <= args.quality <= 95:
        parser.error(f"--quality must be in [1, 95] (got {args.quality})")
    if args.index and args.layout != "deepfake_effnet_lstm":
        parser.error("--index is for --layout deepfake_effnet_lstm (DAiSEE ships its label CSVs)")
    import_av()  # fail before searching a large tree
    settings = FrameSettings(args.fps, args.frames_per_video, args.ext, args.size, args.quality)

    src, out = args.src, args.out
    jobs = plan_jobs(find_videos(src), src, out, args.layout)
    if not jobs:
        raise VideoError(f"{src}: no video files ({' '.join(VIDEO_EXTENSIONS)})")
    check_settings(out, settings, args.layout)
    todo = [job for job in jobs if not job.folder.is_dir()]
    skipped = len(jobs) - len(todo)
    done, frames, failures = 0, 0, []
    with tqdm(total=len(jobs), initial=skipped, unit="video", desc="videos", dynamic_ncols=True) as bar:
        for result in run_jobs(todo, settings, args.workers):
            bar.update(1)
            if isinstance(result, VideoError):
                if args.on_error == "stop":
                    raise result
                failures.append(result)
                tqdm.write(f"skipped: {result}", file=sys.stderr)
            else:
                done, frames = done + 1, frames + result
            bar.set_postfix(done=done, skipped=skipped, failed=len(failures))
    print(f"{done} done ({frames} frames), {skipped} skipped, {len(failures)} failed -> {out}")
    if args.index:
        print(write_index_stub(out, [job.folder for job in jobs if job.folder.is_dir()]))
    if failures:
        for error in failures:
            print(f"  {error}", file=sys.stderr)
        raise VideoError(f"{len(failures)} of {len(jobs)} videos could not be read (listed above); "
                         f"no folder was written for them")


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
