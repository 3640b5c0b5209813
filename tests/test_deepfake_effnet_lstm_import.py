"""deepfake_effnet_lstm on polimi-ispl/icpr2020dfdc's index: import_icpr2020dfdc.py, one sequence per
subject of frNNN_subjS crops, and `original` values that must name a video.

The fixtures follow icpr2020dfdc's formats: the videos DataFrame of index_dfdc.py (index = file name,
`label` bool True = fake, `original` = the source's file name or NaN, `path` dfdc_train_part_N/x.mp4,
`folder` = N, `height`, `width`, `frames`), written as DataFrame.to_csv writes it (and as a pickle when
pandas is installed), and the crops of extract_faces.py, `<path>/fr{frame:03d}_subj{subject}.jpg`."""

import csv
import sys

import pytest
import torch
from PIL import Image

from common.runtime import DataError
from deepfake_effnet_lstm import data as D
from deepfake_effnet_lstm import import_icpr2020dfdc as I
from deepfake_effnet_lstm import train as T
from tests.fixtures_deepfake_effnet_lstm import TINY_ARGS

FRAME_IDS = list(range(0, 121, 10))  # 13 crops per subject: fr000 ... fr120 (extract_faces pads to 3 digits)
# part 0 and 1: training, 35: validation, 40: test (icpr2020dfdc's dfdc-35-5-10); two reals per part,
# each with one fake, and the first real of part 0 shows two people (subj0 and subj1).
PARTS = (0, 1, 35, 40)
TWO_PEOPLE = "dfdc_train_part_0/r0a.mp4"


def dfdc_videos() -> list[dict]:
    """Rows of index_dfdc.py's DataFrame, key first (its index: the file name)."""
    rows = []
    for part in PARTS:
        for k in ("a", "b"):
            real, fake = f"r{part}{k}.mp4", f"f{part}{k}.mp4"
            rows.append({"key": fake, "label": True, "original": real, "path": f"dfdc_train_part_{part}/{fake}",
                         "folder": part, "height": 1080, "width": 1920, "frames": 300})
            rows.append({"key": real, "label": False, "original": None, "path": f"dfdc_train_part_{part}/{real}",
                         "folder": part, "height": 1080, "width": 1920, "frames": 300})
    return rows


def write_videos_csv(path, rows):
    """What `pd.read_pickle('dfdc_videos.pkl').to_csv(path)` writes: the unnamed index first, bools as
    True/False, NaN as an empty cell."""
    columns = ["label", "original", "path", "folder", "height", "width", "frames"]
    lines = ["," + ",".join(columns)]
    for r in rows:
        lines.append(",".join([r["key"]] + ["" if r[c] is None else str(r[c]) for c in columns]))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_faces(faces_root, rows) -> list[str]:
    """The crops extract_faces.py writes, flat colours: red = 200 x subject, green = 2 x frame number
    (JPEG keeps flat colours within a few levels). Returns the faces DataFrame's index."""
    names = []
    for r in rows:
        folder = faces_root / r["path"]
        folder.mkdir(parents=True)
        for subject in (0, 1) if r["path"] == TWO_PEOPLE else (0,):
            for frame in FRAME_IDS:
                name = f"fr{frame:03d}_subj{subject:1d}.jpg"
                Image.new("RGB", (8, 8), (200 * subject, 2 * frame, 128)).save(folder / name, quality=95)
                names.append(f"{r['path']}/{name}")
    return names


def write_faces_csv(path, names):
    """The faces DataFrame's CSV export: index = the crop's path, a few of its columns."""
    lines = [",video,label,videosubject"] + [f"{n},{n.split('/')[1]},False,{n[-5]}" for n in names]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def dfdc(tmp_path):
    rows = dfdc_videos()
    faces = tmp_path / "faces"
    names = write_faces(faces, rows)
    return {"rows": rows, "faces": faces, "videos_csv": write_videos_csv(tmp_path / "dfdc_videos.csv", rows),
            "faces_csv": write_faces_csv(tmp_path / "dfdc_faces.csv", names)}


def read_rows(path):
    return list(csv.DictReader(path.open()))


def check_imported(index_csv, faces):
    """The written index: labels, originals as video ids, the split by part, and the reader's splits keep
    every fake with its original."""
    rows = read_rows(index_csv)
    assert list(rows[0]) == ["video", "label", "split", "original"] and len(rows) == 16
    by_video = {r["video"]: r for r in rows}
    fake = by_video["dfdc_train_part_35/f35a.mp4"]
    assert (fake["label"], fake["split"], fake["original"]) == ("fake", "val", "dfdc_train_part_35/r35a.mp4")
    assert by_video["dfdc_train_part_40/r40b.mp4"]["label"] == "real"
    assert {r["split"] for r in rows if "part_1/" in r["video"]} == {"train"}
    assert {r["split"] for r in rows if "part_40/" in r["video"]} == {"test"}
    records, _ = D.read_index(index_csv, faces, None, frames=4)
    splits = D.split_records(records, 0.15, 0.15, seed=0)
    split_of = {r.video: s for s, rs in splits.items() for r in rs}
    fakes = [r for r in records if r.label == 1]
    assert len(fakes) == 8 and all(split_of[r.original] == split_of[r.video] for r in fakes)
    assert [len(splits[s]) for s in D.SPLITS] == [9, 4, 4]  # the two-person video gives two train sequences


def test_import_of_the_csv_export_gives_an_index_the_reader_splits_by_original(dfdc, tmp_path, capsys):
    """Before: no importer; the CSV export read as an index stops at its header (no `video` column)."""
    with pytest.raises(DataError, match="header"):
        D.read_index(dfdc["videos_csv"], dfdc["faces"], None, frames=4)
    out = dfdc["faces"] / "index.csv"
    I.main([str(dfdc["videos_csv"]), "--faces-df", str(dfdc["faces_csv"]), "--out", str(out)])
    assert "16 videos (8 real, 8 fake, train 8 / val 4 / test 4)" in capsys.readouterr().out
    check_imported(out, dfdc["faces"])
    with pytest.raises(DataError, match="exists; pass --overwrite"):
        I.main([str(dfdc["videos_csv"]), "--out", str(out)])


def test_import_of_the_pickle(dfdc):
    pd = pytest.importorskip("pandas")  # pandas is optional: the pickle is read only where it is installed
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "key"} for r in dfdc["rows"]],
                         index=[r["key"] for r in dfdc["rows"]])
    frame["original"] = frame["original"].astype("category")  # as index_dfdc.py stores it
    frame["folder"] = frame["folder"].astype("uint8")
    frame.to_pickle(dfdc["faces"].parent / "dfdc_videos.pkl")
    out = dfdc["faces"] / "index.csv"
    I.main([str(dfdc["faces"].parent / "dfdc_videos.pkl"), "--out", str(out)])
    check_imported(out, dfdc["faces"])


def test_a_pickle_without_pandas_says_how_to_read_it(tmp_path, monkeypatch):
    pickled = tmp_path / "dfdc_videos.pkl"
    pickled.write_bytes(b"\x80\x04\x95")  # a pickle's first bytes
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(DataError, match=r"pip install pandas.*to_csv"):
        I.main([str(pickled), "--out", str(tmp_path / "index.csv")])


def test_labels_true_false_and_one_zero_become_fake_real(tmp_path):
    """Before: `unknown label 'False'` (the index reader knows real/fake and 0/1 only)."""
    faces = tmp_path / "faces"
    rows = [{"key": "a.mp4", "label": "True", "original": "b.mp4", "path": "dfdc_train_part_0/a.mp4"},
            {"key": "b.mp4", "label": "False", "original": None, "path": "dfdc_train_part_0/b.mp4"},
            {"key": "c.mp4", "label": 1, "original": "d.mp4", "path": "dfdc_train_part_0/c.mp4"},
            {"key": "d.mp4", "label": 0.0, "original": None, "path": "dfdc_train_part_0/d.mp4"}]
    write_faces(faces, rows)
    raw = faces / "raw.csv"
    raw.write_text("video,label\n" + "".join(f"{r['path']},{r['label']}\n" for r in rows))
    with pytest.raises(DataError, match=r"raw.csv:2: unknown label 'True'.*import_icpr2020dfdc"):
        D.read_index(raw, faces, None, frames=4)
    videos = tmp_path / "videos.csv"
    videos.write_text(",label,original,path\n" + "".join(
        f"{r['key']},{r['label']},{r['original'] or ''},{r['path']}\n" for r in rows))
    I.main([str(videos), "--out", str(faces / "index.csv")])  # no folder column: no split column
    written = read_rows(faces / "index.csv")
    assert [(r["label"], r["original"]) for r in written] == [
        ("fake", "dfdc_train_part_0/b.mp4"), ("real", ""), ("fake", "dfdc_train_part_0/d.mp4"), ("real", "")]
    assert "split" not in written[0]
    assert [r.label for r in D.read_index(faces / "index.csv", faces, None, frames=4)[0]] == [1, 0, 1, 0]
    videos.write_text(videos.read_text().replace("a.mp4,True", "a.mp4,maybe").replace("c.mp4,1", "c.mp4,FAKE!"))
    bad_labels = r"(?s)2 label\(s\).*videos.csv:2: label 'maybe'\n.*videos.csv:4: label 'FAKE!'"
    with pytest.raises(DataError, match=bad_labels):
        I.main([str(videos), "--out", str(faces / "index.csv"), "--overwrite"])


def test_an_original_that_names_no_video_is_a_data_error_listing_them(dfdc):
    """Before: icpr2020dfdc's originals are file names ('r0a.mp4'), not the index's video ids: every fake
    became a group of its own and could sit in another split than its source, silently."""
    faces = dfdc["faces"]
    rows = [{"video": r["path"], "label": "fake" if r["label"] else "real", "original": r["original"] or ""}
            for r in dfdc["rows"]]
    lines = ["video,label,original"] + [f"{r['video']},{r['label']},{r['original']}" for r in rows]
    (faces / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        D.read_index(faces / "index.csv", faces, None, frames=4)
    message = str(error.value)
    assert "8 `original` value(s) name no video" in message
    assert "index.csv:2: original 'r0a.mp4'" in message and "index.csv:16: original 'r40b.mp4'" in message
    # a real video may name its own identity, and its fakes name that: one group, accepted
    (faces / "index.csv").write_text("video,label,original\ndfdc_train_part_0/f0a.mp4,fake,id0\n"
                                     "dfdc_train_part_0/r0b.mp4,real,id0\n")
    assert len(D.read_index(faces / "index.csv", faces, None, frames=4)[0]) == 2
    # the importer: an original that is no key of the DataFrame
    dfdc["videos_csv"].write_text(dfdc["videos_csv"].read_text().replace(",r1b.mp4,", ",r1z.mp4,"))
    unknown = r"(?s)1 `original` value\(s\) name no video.*dfdc_videos.csv:\d+: original 'r1z.mp4'"
    with pytest.raises(DataError, match=unknown):
        I.main([str(dfdc["videos_csv"]), "--out", str(faces / "new.csv")])


def test_two_subjects_of_one_folder_make_two_sequences_never_one_interleaved(dfdc):
    """Before: fr000_subj0, fr000_subj1, fr010_subj0, ... made ONE sequence jumping between two faces."""
    faces = dfdc["faces"]
    (faces / "index.csv").write_text(f"video,label\n{TWO_PEOPLE},real\ndfdc_train_part_0/f0a.mp4,fake\n")
    records, _ = D.read_index(faces / "index.csv", faces, None, frames=4)
    assert [(r.video, r.subject, r.num_frames) for r in records] == [
        (TWO_PEOPLE, 0, 13), (TWO_PEOPLE, 1, 13), ("dfdc_train_part_0/f0a.mp4", None, 13)]
    for subject, record in enumerate(records[:2]):
        assert [p.name for p in record.frame_paths] == [f"fr{f:03d}_subj{subject}.jpg" for f in FRAME_IDS]
    dataset = D.VideoSequenceDataset(records, 13, 8, train=False, augment=None)
    for subject in (0, 1):
        frames = dataset[subject]["frames"] * D.STD + D.MEAN  # [T, 3, 8, 8] back to [0, 1]
        red, green = frames[:, 0].mean((1, 2)) * 255, frames[:, 1].mean((1, 2)) * 255
        assert ((red - 200 * subject).abs() < 8).all()  # one person throughout
        assert ((green - 2 * torch.tensor(FRAME_IDS)).abs() < 8).all()  # in frame order
    assert [dataset[i]["video"] for i in range(3)] == [0, 0, 1]  # per-video metrics pool both people
    splits = D.split_records(records, 0.4, 0.4, seed=0)
    assert len({s for s, rs in splits.items() for r in rs if r.video == TWO_PEOPLE}) == 1
    with pytest.raises(DataError, match=r"r0a.mp4 holds the face crops of 2 people \(subj0, subj1\)"):
        D.list_frames(faces / TWO_PEOPLE, "predict")  # a folder given alone: refused, not interleaved
    for frame in (1000, 1010):  # fr{:03d} writes fr1000 after fr990: natural order, not text order
        Image.new("RGB", (4, 4)).save(faces / TWO_PEOPLE / f"fr{frame:03d}_subj1.jpg")
    assert [p.name for p in D.list_frames(faces / TWO_PEOPLE, "t", subject=1)][-3:] == [
        "fr120_subj1.jpg", "fr1000_subj1.jpg", "fr1010_subj1.jpg"]


def test_a_tiny_run_trains_on_the_imported_index(dfdc, tmp_path):
    out = dfdc["faces"] / "index.csv"
    I.main([str(dfdc["videos_csv"]), "--faces-df", str(dfdc["faces_csv"]), "--out", str(out)])
    results = T.main([*TINY_ARGS, "--data-root", str(dfdc["faces"]), "--max-iters", "2", "--val-interval", "2",
                      "--image-size", "16", "--lstm-hidden", "8", "--test", "--out", str(tmp_path / "run")])
    assert results["step"] == 2 and 0.0 <= results["test"]["roc_auc"] <= 1.0


def test_videos_without_faces_are_left_out_with_the_fakes_of_their_original(dfdc, capsys):
    """extract_faces.py writes no folder for a video without a detected face: the importer leaves it out,
    and a fake of it too (its `original` would name no video of the index)."""
    names = [line for line in dfdc["faces_csv"].read_text().splitlines() if "/r1a.mp4/" not in line
             and "/f40b.mp4/" not in line]
    dfdc["faces_csv"].write_text("\n".join(names) + "\n")
    out = dfdc["faces"] / "index.csv"
    I.main([str(dfdc["videos_csv"]), "--faces-df", str(dfdc["faces_csv"]), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "2 video(s) without face crops" in printed and "1 fake(s) whose original has no face crops" in printed
    assert "1 video(s) hold crops of several people" in printed
    videos = [r["video"] for r in read_rows(out)]
    assert len(videos) == 13 and not {"dfdc_train_part_1/r1a.mp4", "dfdc_train_part_1/f1a.mp4"} & set(videos)
