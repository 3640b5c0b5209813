"""common/tools/video.py: raw videos to frame folders. The videos are written here with PyAV, 2 s at 10 fps,
32x32, frame i a solid grey of level 10 + 12 i, so every written frame tells which source frame it is."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from caer_clip import data as caer_data
from common.images import open_image
from common.runtime import DataError
from common.tools import video
from common.tools.video import VideoError, even_indices, main
from deepfake_effnet_lstm import data as deepfake_data

try:
    import av
except ImportError:
    av = None
needs_av = pytest.mark.skipif(av is None, reason="video decoding is optional: pip install av")

RATE, SECONDS, SIDE = 10, 2, 32


def write_video(path: Path, frames: int = RATE * SECONDS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        for i in range(frames):
            grey = np.full((SIDE, SIDE, 3), 10 + 12 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(grey, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)
    return path


def source_index(path: Path) -> int:
    """Which source frame a written frame is, from its grey level."""
    return round((np.asarray(open_image(path)).mean() - 10) / 12)


def frame_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_even_indices_are_segment_centres():
    assert even_indices(20, 4) == [2, 7, 12, 17]
    assert even_indices(10, 1) == [5]
    assert even_indices(3, 8) == [0, 1, 2]  # a short video gives what it has


@needs_av
def test_fps_keeps_frames_in_time_order(tmp_path):
    write_video(tmp_path / "src" / "clip.mp4")
    main([str(tmp_path / "src"), str(tmp_path / "out"), "--fps", "2"])
    folder = tmp_path / "out" / "clip"
    assert frame_files(folder) == ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]  # 2 s x 2 fps, 1-based
    assert [source_index(folder / f"{n}.jpg") for n in range(1, 5)] == [0, 5, 10, 15]


@needs_av
def test_frames_per_video_from_avi_and_mkv(tmp_path):
    # .mkv reports no frame count, so the count comes from decoding: the same picks either way
    write_video(tmp_path / "src" / "a.avi")
    write_video(tmp_path / "src" / "b.mkv")
    main([str(tmp_path / "src"), str(tmp_path / "out"), "--frames-per-video", "4", "--ext", "png"])
    for name in ("a", "b"):
        folder = tmp_path / "out" / name
        assert frame_files(folder) == ["1.png", "2.png", "3.png", "4.png"]
        assert [source_index(folder / f"{n}.png") for n in range(1, 5)] == [2, 7, 12, 17]


@needs_av
def test_every_frame_natural_order_and_size(tmp_path):
    write_video(tmp_path / "clip.v2.mp4")
    main([str(tmp_path / "clip.v2.mp4"), str(tmp_path / "out"), "--size", "16"])
    folder = tmp_path / "out" / "clip.v2"
    names = sorted(frame_files(folder), key=lambda n: int(n.split(".")[0]))
    assert len(names) == 20 and names[-1] == "20.jpg"
    assert [source_index(folder / n) for n in names] == list(range(20))
    assert open_image(folder / "1.jpg").size == (16, 16)


@needs_av
def test_caer_clip_layout_is_read_by_the_daisee_reader(tmp_path):
    # DAiSEE nests clips as <subject>/<clip>/<clip>.avi; the reader wants frames/<ClipID without extension>/
    write_video(tmp_path / "DataSet" / "Train" / "110001" / "1100011002" / "1100011002.avi")
    write_video(tmp_path / "DataSet" / "Train" / "110001" / "1100011003" / "1100011003.avi", frames=12)
    root = tmp_path / "daisee"
    main([str(tmp_path / "DataSet"), str(root), "--layout", "caer_clip", "--frames-per-video", "10"])
    labels = root / "TrainLabels.csv"
    labels.write_text("ClipID,Boredom,Engagement,Confusion,Frustration\n"
                      "1100011002.avi,0,2,0,0\n1100011003.avi,1,3,0,0\n")
    records = caer_data.read_daisee_csv(labels, root, "frames")
    assert [(r.frames_dir, r.num_frames, r.label) for r in records] == [
        (root / "frames" / "1100011002", 10, 2), (root / "frames" / "1100011003", 10, 3)]
    names = caer_data.list_frames(records[0].frames_dir, "test")
    assert names[:3] == ["1.jpg", "2.jpg", "3.jpg"] and names[-1] == "10.jpg"
    assert [source_index(records[0].frames_dir / n) for n in names] == even_indices(20, 10)


@needs_av
def test_deepfake_layout_and_index_stub_are_read_by_the_index_reader(tmp_path):
    # FaceForensics++ repeats file names across methods: the folders keep the source tree
    write_video(tmp_path / "ff" / "original" / "000.mp4")
    write_video(tmp_path / "ff" / "Deepfakes" / "000_003.mp4")
    write_video(tmp_path / "ff" / "Face2Face" / "000_003.avi")
    root = tmp_path / "faces"
    main([str(tmp_path / "ff"), str(root), "--fps", "5", "--index"])
    index = root / "index.csv"
    rows = list(csv.DictReader(index.open()))
    assert [(r["video"], r["label"]) for r in rows] == [
        ("Deepfakes/000_003", ""), ("Face2Face/000_003", ""), ("original/000", "")]
    with pytest.raises(DataError, match="unknown label"):  # the stub is to be filled, not trained on
        deepfake_data.read_index(index, root, None, frames=4)
    index.write_text("video,label,original\nDeepfakes/000_003,fake,000\nFace2Face/000_003,fake,000\n"
                     "original/000,real,000\n")
    records, padded = deepfake_data.read_index(index, root, None, frames=4)
    assert padded == 0 and [r.num_frames for r in records] == [10, 10, 10]
    assert [source_index(p) for p in records[2].frame_paths] == list(range(0, 20, 2))
    main([str(tmp_path / "ff"), str(root), "--fps", "5", "--index"])
    assert "original/000,real,000" in index.read_text()  # a filled index is never overwritten


@needs_av
def test_rerun_skips_finished_videos_and_refuses_other_settings(tmp_path, capsys):
    for name in ("a", "b"):
        write_video(tmp_path / "src" / f"{name}.mp4")
    argv = [str(tmp_path / "src"), str(tmp_path / "out"), "--fps", "2"]
    main(argv)
    assert "2 done (8 frames), 0 skipped, 0 failed" in capsys.readouterr().out
    write_video(tmp_path / "src" / "c.mp4")
    main(argv)
    assert "1 done (4 frames), 2 skipped, 0 failed" in capsys.readouterr().out
    with pytest.raises(VideoError, match=r"other settings \(fps 2.0 -> 5.0\)"):
        main([*argv[:2], "--fps", "5"])


@needs_av
def test_interrupted_video_leaves_no_folder_to_skip(tmp_path, monkeypatch, capsys):
    write_video(tmp_path / "src" / "a.mp4")
    save_frame, calls = video.save_frame, []

    def killed_on_third_frame(image, path, quality):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        save_frame(image, path, quality)

    monkeypatch.setattr(video, "save_frame", killed_on_third_frame)
    with pytest.raises(KeyboardInterrupt):
        main([str(tmp_path / "src"), str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["video_frames.json"]  # no a/, no partial
    # a partial folder left by a hard kill (SIGKILL: no clean-up ran) is replaced, not taken as done
    (tmp_path / "out" / ".a.partial").mkdir()
    (tmp_path / "out" / ".a.partial" / "1.jpg").write_bytes(b"half")
    monkeypatch.setattr(video, "save_frame", save_frame)
    main([str(tmp_path / "src"), str(tmp_path / "out")])
    assert "1 done (20 frames), 0 skipped" in capsys.readouterr().out
    assert len(frame_files(tmp_path / "out" / "a")) == 20 and not (tmp_path / "out" / ".a.partial").exists()


@needs_av
def test_corrupt_video_is_named(tmp_path, capsys):
    write_video(tmp_path / "src" / "a_good.mp4")
    (tmp_path / "src" / "b_broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    write_video(tmp_path / "src" / "c_good.mp4")
    out = tmp_path / "out"
    with pytest.raises(VideoError, match=r"b_broken\.mp4: cannot decode video"):
        main([str(tmp_path / "src"), str(out), "--fps", "1"])
    assert (out / "a_good").is_dir() and not (out / "c_good").exists()  # stopped at the broken one
    capsys.readouterr()
    with pytest.raises(VideoError, match="1 of 3 videos could not be read"):
        main([str(tmp_path / "src"), str(out), "--fps", "1", "--on-error", "skip"])
    captured = capsys.readouterr()
    assert "1 done (2 frames), 1 skipped, 1 failed" in captured.out
    assert "b_broken.mp4: cannot decode video" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a_good", "c_good", "video_frames.json"]


@needs_av
def test_two_workers_write_the_same_folders(tmp_path, capsys):
    for name in ("a", "b", "c"):
        write_video(tmp_path / "src" / f"{name}.mp4")
    main([str(tmp_path / "src"), str(tmp_path / "out"), "--frames-per-video", "3", "--workers", "2"])
    assert "3 done (9 frames)" in capsys.readouterr().out
    for name in ("a", "b", "c"):
        assert [source_index(tmp_path / "out" / name / f"{n}.jpg") for n in (1, 2, 3)] == even_indices(20, 3)


@needs_av
def test_name_clash_in_caer_clip_layout_is_refused(tmp_path):
    write_video(tmp_path / "src" / "x" / "clip.mp4", frames=2)
    write_video(tmp_path / "src" / "y" / "clip.avi", frames=2)
    with pytest.raises(VideoError, match=r"clip\.mp4 and .*clip\.avi would both be written"):
        main([str(tmp_path / "src"), str(tmp_path / "out"), "--layout", "caer_clip"])
    assert not (tmp_path / "out").exists()


def test_without_pyav_the_error_says_pip_install(tmp_path, monkeypatch):
    (tmp_path / "a.mp4").write_bytes(b"not decoded: the check comes first")
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(SystemExit, match="pip install av"):
        main([str(tmp_path / "a.mp4"), str(tmp_path / "out")])
