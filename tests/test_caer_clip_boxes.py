"""caer_clip box files as CLIP-CAER and RAPT-CLIP write them: key styles, malformed and degenerate boxes,
body boxes that match no clip, two files of one frame. Fixtures are written in the originals' formats:
face boxes `{dirname(frame): {"N.jpg": [l, t, r, b]}}`, body boxes `{dirname: [l, t, r, b]}`, CLIP-CAER
keys the same absolute strings as its list paths, RAPT-CLIP keys `os.path.join(root_dir, rel)`."""

import json
import os
from pathlib import Path

import pytest

from caer_clip import data as caer_data
from caer_clip.train import main
from common.runtime import DataError
from tests.fixtures_caer_clip import make_raer, write_frames

BOX = [10, 8, 30, 28]  # the green square make_raer paints into every 40x48 frame


def raer(tmp_path, frames=3) -> tuple[Path, caer_data.DataConfig, list[str]]:
    """A RAER folder of 10 clips (5 train, 5 test) and its clip folders relative to the root."""
    root = tmp_path / "raer"
    cfg = make_raer(root, clips_per_class=1, frames=frames, box=tuple(BOX))
    clips = list(json.loads((root / "face_boxes.json").read_text()))
    return root, cfg, clips


def write_face_boxes(root: Path, clips: list[str], key, frames=3) -> None:
    boxes = {key(clip): {f"{i}.jpg": BOX for i in range(1, frames + 1)} for clip in clips}
    (root / "face_boxes.json").write_text(json.dumps(boxes))


def test_rapt_clip_root_joined_keys_match(tmp_path, monkeypatch):
    """RAPT-CLIP keys are os.path.join(root_dir, rel) of whatever --root-dir it was given: absolute, the
    relative `./raer` of its train.sh, or a root on another machine. The baseline read all three as
    clips that do not exist and failed on every frame."""
    root, cfg, clips = raer(tmp_path)
    monkeypatch.chdir(tmp_path)
    for root_dir in (str(root), "./raer", "/kaggle/input/raer"):
        write_face_boxes(root, clips, lambda clip: os.path.join(root_dir, clip))  # noqa: B023
        for data_root in (str(root), "raer"):  # --data-root absolute or relative to the working directory
            cfg.data_root = data_root
            _, _, test = caer_data.build_datasets(cfg, num_frames=2, image_size=16, seed=0)
            face, _, _, fallbacks = test[0]
            assert fallbacks == 0, root_dir
            assert (face[:, 1, 8, 8] > face[:, 0, 8, 8] + 0.5).all()  # the crop is the green face box
            assert test.box_summary == "face boxes: 10 of 10 clips"


def test_clip_caer_absolute_keys_with_absolute_or_relative_lists(tmp_path):
    """CLIP-CAER's lists and keys are the same absolute strings; keys absolute and lists relative (or the
    other way round) name the same clips. The baseline matched only identical strings."""
    root, cfg, clips = raer(tmp_path)
    write_face_boxes(root, clips, lambda clip: str(root / clip))
    train, _, test = caer_data.build_datasets(cfg, 2, 16, 0)  # relative list, absolute keys
    assert test.records[0].key == "test/class1_0" and test[0][3] == 0
    for split in ("train", "test"):
        lines = (root / f"{split}.txt").read_text().splitlines()
        (root / f"{split}.txt").write_text("".join(f"{root / line}\n" for line in lines))
    train, _, test = caer_data.build_datasets(cfg, 2, 16, 0)  # absolute list, absolute keys
    assert test.records[0].key == "test/class1_0" and test[0][3] == 0
    write_face_boxes(root, clips, lambda clip: clip)
    _, _, test = caer_data.build_datasets(cfg, 2, 16, 0)  # absolute list, relative keys
    assert test.box_summary == "face boxes: 10 of 10 clips" and test[0][3] == 0


def test_body_boxes_that_match_no_clip_fail_naming_them(tmp_path):
    """Body boxes keyed under another root matched 0 of 10 clips and the baseline dropped them all
    silently (every context the whole frame). Now: an error naming the clips and the outside keys, or
    with --allow-missing-boxes a printed count and one counted fallback per frame."""
    root, cfg, clips = raer(tmp_path)
    (root / "body.json").write_text(json.dumps({f"/data/elsewhere/{clip}": BOX for clip in clips}))
    cfg.body_boxes = "body.json"
    with pytest.raises(DataError, match=r"body.json: no body box for clip 'train/class1_0' \(.*train.txt:1\)"
                                        r".*body boxes: 0 of 10 clips \(10 keys of body.json lie outside "
                                        r"--data-root .*'/data/elsewhere/train/class1_0'"):
        caer_data.build_datasets(cfg, 2, 16, 0)
    cfg.allow_missing_boxes = True
    train, _, test = caer_data.build_datasets(cfg, 2, 16, 0)
    assert test.box_summary.startswith("face boxes: 10 of 10 clips, body boxes: 0 of 10 clips (10 keys")
    assert test[0][3] == 2  # two frames, each context the whole frame, counted
    # One clip missing: the same error names just that clip; the other body boxes crop the context.
    (root / "body.json").write_text(json.dumps({clip: BOX for clip in clips[1:]}))
    cfg.allow_missing_boxes = False
    with pytest.raises(DataError, match=rf"no body box for clip '{clips[0]}' .*body boxes: 9 of 10 clips"):
        caer_data.build_datasets(cfg, 2, 16, 0)
    (root / "body.json").write_text(json.dumps({clip: BOX for clip in clips}))
    _, _, test = caer_data.build_datasets(cfg, 2, 16, 0)
    _, context, _, fallbacks = test[0]
    assert test.box_summary == "face boxes: 10 of 10 clips, body boxes: 10 of 10 clips" and fallbacks == 0
    assert (context[:, 1] > context[:, 0]).all()  # the context is the body box


MALFORMED_FACE = """{
  "train/class1_0": {"1.jpg": "10 8 30 28", "2.jpg": [10, 8, 30], "3.jpg": [NaN, 8, 30, 28]},
  "train/class2_0": {"1.jpg": [10, 8, Infinity, 28], "2.jpg": {"x1": 10, "y1": 8, "x2": 30, "y2": 28},
                     "3.jpg": [10, 8, 30, 28]}
}"""


def test_malformed_face_boxes_one_error_at_load_listing_each(tmp_path):
    """String, 3 numbers, NaN, Infinity, dict, and a body-style list for a clip: the baseline raised a raw
    ValueError / AttributeError from inside the DataLoader, naming no clip. Now one DataError at load."""
    root, cfg, _ = raer(tmp_path)
    for text, count in ((MALFORMED_FACE, 5), (MALFORMED_FACE[:-2] + ',\n  "train/class3_0": [10, 8, 30, 28]\n}', 6)):
        (root / "face_boxes.json").write_text(text)
        with pytest.raises(DataError) as error:
            caer_data.build_datasets(cfg, 2, 16, 0)
        message = str(error.value)
        assert message.startswith(f"{root / 'face_boxes.json'}: {count} malformed face box entries")
        for entry in ("clip 'train/class1_0' frame '1.jpg': \"10 8 30 28\"", "frame '2.jpg': [10, 8, 30]",
                      "frame '3.jpg': [NaN, 8, 30, 28]", "clip 'train/class2_0' frame '1.jpg': [10, 8, Infinity, 28]",
                      "frame '2.jpg': {\"x1\": 10"):
            assert entry in message
    assert "clip 'train/class3_0': [10, 8, 30, 28] is not an object {frame: box}" in message
    # Many bad entries: the first ten and a count.
    (root / "face_boxes.json").write_text(json.dumps({"train/class1_0": {f"{i}.jpg": [i] for i in range(25)}}))
    with pytest.raises(DataError, match=r"25 malformed face box entries.*frame '9.jpg': \[9\]; and 15 more$"):
        caer_data.build_datasets(cfg, 2, 16, 0)


@pytest.mark.parametrize("kind", ["face", "body"])
def test_box_file_with_a_list_at_the_top_is_an_error(tmp_path, kind):
    root, cfg, clips = raer(tmp_path)
    (root / f"{kind}.json").write_text(json.dumps([{clip: BOX} for clip in clips]))
    cfg.face_boxes, cfg.body_boxes = ("face.json", "") if kind == "face" else ("face_boxes.json", "body.json")
    with pytest.raises(DataError, match=rf"{kind}.json: the top level must be an object \{{clip: "):
        caer_data.build_datasets(cfg, 2, 16, 0)


def test_malformed_body_boxes_one_error_at_load(tmp_path):
    root, cfg, clips = raer(tmp_path)
    body = {clip: BOX for clip in clips}
    body.update({clips[0]: "10 8 30 28", clips[1]: [10, 8, 30], clips[2]: {"1.jpg": [10, 8]}})  # per frame: fine
    text = json.dumps(body).replace(f'"{clips[3]}": [10', f'"{clips[3]}": [NaN')  # the JSON token NaN
    (root / "body.json").write_text(text)
    cfg.body_boxes = "body.json"
    with pytest.raises(DataError, match=rf"body.json: 4 malformed body box entries .*clip '{clips[0]}': "
                                        rf"\"10 8 30 28\"; clip '{clips[1]}': \[10, 8, 30\]; clip '{clips[2]}' "
                                        rf"frame '1.jpg': \[10, 8\]; clip '{clips[3]}': \[NaN, 8, 30, 28\]"):
        caer_data.build_datasets(cfg, 2, 16, 0)


DEGENERATE = {"zero area": ([12, 8, 12, 28], "of zero area"), "inverted": ([30, 8, 10, 28], "inverted"),
              "outside": ([60, 50, 90, 80], "outside the 48x40 frame"),
              "negative": ([-30, -20, -5, -1], "outside the 48x40 frame")}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_face_box_is_a_missing_box(tmp_path, case):
    """The baseline centre-cropped these and counted them even without --allow-missing-boxes."""
    box, problem = DEGENERATE[case]
    root, cfg, clips = raer(tmp_path)
    boxes = json.loads((root / "face_boxes.json").read_text())
    boxes["test/class1_0"]["2.jpg"] = box
    (root / "face_boxes.json").write_text(json.dumps(boxes))
    _, _, test = caer_data.build_datasets(cfg, 3, 16, 0)
    with pytest.raises(DataError, match=rf"test.txt:1: face box .* of clip 'test/class1_0' frame '2.jpg' is {problem}"):
        test[0]
    cfg.allow_missing_boxes = True
    _, _, test = caer_data.build_datasets(cfg, 3, 16, 0)
    assert test[0][3] == 1 and test[1][3] == 0  # one counted centre crop


def test_degenerate_body_box_is_a_missing_box_and_partly_outside_boxes_are_fine(tmp_path):
    root, cfg, clips = raer(tmp_path)
    body = {clip: BOX for clip in clips}
    body["test/class1_0"] = [30, 8, 10, 28]  # inverted
    body["test/class2_0"] = [-10, -10, 20, 20]  # reaches past the frame corner: clamped, kept
    (root / "body.json").write_text(json.dumps(body))
    boxes = json.loads((root / "face_boxes.json").read_text())
    boxes["test/class2_0"]["1.jpg"] = [40, 30, 70, 60]  # partly outside, too
    (root / "face_boxes.json").write_text(json.dumps(boxes))
    cfg.body_boxes = "body.json"
    _, _, test = caer_data.build_datasets(cfg, 2, 16, 0)
    with pytest.raises(DataError,
                       match=r"body box \[30, 8, 10, 28\] of clip 'test/class1_0' frame '1.jpg' is inverted"):
        test[0]
    assert test[1][3] == 0
    cfg.allow_missing_boxes = True
    _, _, test = caer_data.build_datasets(cfg, 2, 16, 0)
    assert test[0][3] == 2  # both frames: the whole frame as context, counted


def test_two_files_of_one_frame_are_an_error(tmp_path):
    """'1.jpg' with '1.png' (one stem) and '1.jpg' with '01.jpg' (one frame number) in a clip folder,
    on the RAER/CAER list path and on the DAiSEE reader."""
    root, cfg, _ = raer(tmp_path)
    clip = root / "test" / "class1_0"
    (clip / "1.jpg").rename(clip / "1.png")
    write_frames(tmp_path / "one", 1)
    (tmp_path / "one" / "1.jpg").rename(clip / "1.jpg")
    with pytest.raises(DataError, match=r"test.txt:1: .*class1_0 holds frame 1 twice \(1.jpg and 1.png\)"):
        caer_data.build_datasets(cfg, 2, 16, 0)  # at load: the face boxes are checked against every frame
    (clip / "1.png").rename(clip / "01.jpg")
    with pytest.raises(DataError, match=r"test.txt:1: .*class1_0 holds frame 1 twice \((01.jpg and 1.jpg|1.jpg "
                                        r"and 01.jpg)\)"):
        caer_data.build_datasets(cfg, 2, 16, 0)
    daisee = tmp_path / "daisee"
    write_frames(daisee / "frames" / "1100011002", 3)
    (daisee / "frames" / "1100011002" / "3.jpg").rename(daisee / "frames" / "1100011002" / "03.png")
    write_frames(tmp_path / "three", 3)
    (tmp_path / "three" / "3.jpg").rename(daisee / "frames" / "1100011002" / "3.jpg")
    (daisee / "labels.csv").write_text("ClipID,Boredom,Engagement,Confusion,Frustration\n1100011002.avi,0,2,0,0\n")
    cfg = caer_data.DataConfig(data_root=str(daisee), dataset="daisee", train_list="labels.csv",
                               val_list="labels.csv", test_list="labels.csv", face_boxes="")
    with pytest.raises(DataError, match=r"labels.csv:2: .*1100011002 holds frame 3 twice"):
        caer_data.build_datasets(cfg, 2, 16, 0)


TINY = ["--clip", "tiny", "--num-frames", "2", "--batch-size", "2", "--epochs", "1", "--moco-queue", "8",
        "--logit-scale", "20", "--val-list", "test.txt"]


def test_train_main_matches_rapt_keys_and_prints_box_counts(tmp_path, capsys):
    """Through train.py: RAPT-CLIP root-joined face and body keys train, the counts are printed at start;
    body keys that match no clip stop the run before training, naming the clip."""
    root, cfg, clips = raer(tmp_path)
    write_face_boxes(root, clips, lambda clip: os.path.join(str(root), clip))
    (root / "body.json").write_text(json.dumps({os.path.join(str(root), clip): BOX for clip in clips}))
    summary = main(["--data-root", str(root), "--body-boxes", "body.json", "--out", str(tmp_path / "run"), *TINY])
    assert summary["step"] == 2
    assert "face boxes: 10 of 10 clips, body boxes: 10 of 10 clips" in capsys.readouterr().out
    (root / "body.json").write_text(json.dumps({f"/elsewhere/{clip}": BOX for clip in clips}))
    with pytest.raises(DataError, match=r"no body box for clip 'train/class1_0'.*body boxes: 0 of 10 clips"):
        main(["--data-root", str(root), "--body-boxes", "body.json", "--out", str(tmp_path / "run2"), *TINY])


# ----------------------------------------------------------------------------- what a new user trips on


def test_rapt_per_frame_body_boxes_are_read(tmp_path):
    """The RAPT-CLIP family's per-frame body file {clip: {frame: box}} (its later loaders read
    body_boxes[clip][frame]) crops the context frame by frame; it was refused as malformed."""
    root, cfg, clips = raer(tmp_path)
    (root / "body.json").write_text(json.dumps({clip: {f"{i}.jpg": BOX for i in (1, 2, 3)} for clip in clips}))
    cfg.body_boxes = "body.json"
    _, _, test = caer_data.build_datasets(cfg, 2, 16, 0)
    _, context, _, fallbacks = test[0]
    assert fallbacks == 0 and (context[:, 1] > context[:, 0]).all()  # the green box alone, no red frame
    assert test.box_summary == "face boxes: 10 of 10 clips, body boxes: 10 of 10 clips"


def test_every_missing_face_box_is_named_in_one_error(tmp_path):
    """Clips and frames without a face box are all found at load and named in one error (clip, list line,
    frames); they were found one at a time, at the first sampled frame that lacked one."""
    root, cfg, clips = raer(tmp_path)
    boxes = json.loads((root / "face_boxes.json").read_text())
    del boxes["train/class1_0"]["2.jpg"], boxes["test/class3_0"]["3.jpg"], boxes["test/class5_0"]
    (root / "face_boxes.json").write_text(json.dumps(boxes))
    with pytest.raises(DataError) as error:
        caer_data.build_datasets(cfg, 2, 16, 0)
    message = str(error.value)
    assert "'train/class1_0' (" in message and "train.txt:1) frames 2.jpg" in message
    assert "test.txt:3) frames 3.jpg" in message and "'test/class5_0' (" in message
    assert "face boxes: 7 of 10 clips" in message
    cfg.allow_missing_boxes = True  # the fallback's count names the clips
    _, _, test = caer_data.build_datasets(cfg, 2, 16, 0)
    assert test.box_summary.startswith("face boxes: 7 of 10 clips (3 fall back: 'train/class1_0'; 'test/class3_0'; "
                                       "'test/class5_0')")
