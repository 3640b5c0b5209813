"""The four predict.py on a checkpoint of a tiny run of the project's own train.py: output formats,
the probabilities the model in eval mode gives for the same input, pictures, and the errors."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from common.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_model_state, load_run_checkpoint
from common.cli import run_cli
from common.runtime import DataError
from tests.fixtures_caer_clip import TINY_TRAIN as CAER_TINY
from tests.fixtures_deepfake_effnet_lstm import TINY_ARGS as DFD_TINY
from tests.fixtures_deepfake_effnet_lstm import grouped_videos, write_dataset
from tests.run_helpers import TINY

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAS_MATPLOTLIB, reason="pictures need matplotlib")


def predict_main(project: str):
    return importlib.import_module(f"{project}.predict").main


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def picture_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size  # (width, height)


def foreign_checkpoint(tmp_path: Path, project: str) -> Path:
    path = tmp_path / f"{project}.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "project": project, "model": {}}, path)
    return path


def train_tiny(project: str, args: list[str], out: Path) -> Path:
    importlib.import_module(f"{project}.train").main([*args, "--out", str(out), "--device", "cpu"])
    return out / "best.pt"


# ----------------------------------------------------------------------------- caer_clip


@pytest.fixture(scope="module")
def caer(tmp_path_factory):
    """best.pt of a tiny synthetic run, and three of its test clips written as PNG frames with their
    face boxes and a RAER list (labels from 1); the reference probabilities of the model in eval mode."""
    from caer_clip import train

    root = tmp_path_factory.mktemp("caer")
    checkpoint_path = train_tiny("caer_clip", [*CAER_TINY, "--synthetic-train", "8", "--synthetic-val", "5",
                                               "--synthetic-test", "5"], root / "run")
    checkpoint = load_run_checkpoint(checkpoint_path, "caer_clip")
    args = train.argparse.Namespace(**checkpoint["args"])
    cfg = train.config_from(args)
    model, splits = train.build_model_and_data(cfg, torch.device("cpu"))
    load_model_state(model, checkpoint["model"], checkpoint_path)
    model.eval()
    test, clips, boxes, lines, reference = splits["test"], root / "clips", {}, [], []
    for i in range(3):
        record = test.records[i]
        for f, frame in enumerate(test.frames[i], start=1):
            (clips / f"clip{i}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame.permute(1, 2, 0).numpy()).save(clips / f"clip{i}" / f"{f}.png")  # lossless
        boxes[f"clip{i}"] = {f"{name}.png": box for name, box in test.face_boxes[record.key].items()}
        lines.append(f"clip{i} {record.num_frames} {record.label + 1}")
        face, context, _, _ = test[i]
        with torch.no_grad():
            reference.append(model(face[None], context[None])["logits"].softmax(-1)[0])
    (clips / "face_boxes.json").write_text(json.dumps(boxes))
    (clips / "list.txt").write_text("\n".join(lines) + "\n")
    names = list(train.CLASS_DESCRIPTORS["synthetic"])
    return {"checkpoint": checkpoint_path, "clips": clips, "reference": torch.stack(reference), "names": names,
            "labels": [test.records[i].label for i in range(3)], "frames": cfg.model.num_frames}


def test_caer_clip_csv_gives_the_models_probabilities(caer, tmp_path):
    out = tmp_path / "pred.csv"
    predict_main("caer_clip")(["--checkpoint", str(caer["checkpoint"]), str(caer["clips"] / "list.txt"), "--face-boxes",
                               str(caer["clips"] / "face_boxes.json"), "--batch-size", "2", "--output", str(out)])
    columns, rows = read_csv(out)
    names = caer["names"]
    assert columns == ["clip", "prediction", *[f"p_{n}" for n in names], "true", "box_fallbacks"]
    probs = torch.tensor([[float(r[f"p_{n}"]) for n in names] for r in rows])
    torch.testing.assert_close(probs.sum(-1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(probs, caer["reference"], atol=2e-6, rtol=0)  # the CSV keeps 6 decimals
    assert [r["prediction"] for r in rows] == [names[i] for i in caer["reference"].argmax(-1)]
    assert [r["true"] for r in rows] == [names[y] for y in caer["labels"]]
    assert [r["clip"] for r in rows] == ["clip0", "clip1", "clip2"] and {r["box_fallbacks"] for r in rows} == {"0"}


def test_caer_clip_jsonl_one_clip_folder_without_boxes(caer, tmp_path):
    out = tmp_path / "pred.jsonl"
    predict_main("caer_clip")(["--checkpoint", str(caer["checkpoint"]), str(caer["clips"] / "clip0"), "--format",
                               "jsonl", "--output", str(out)])
    (row,) = read_jsonl(out)
    assert set(row) == {"clip", "prediction", "probabilities", "true", "box_fallbacks"}
    assert row["clip"] == "clip0" and row["true"] is None and list(row["probabilities"]) == caer["names"]
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert row["box_fallbacks"] == caer["frames"]  # no box file: every sampled frame is centre-cropped


@needs_matplotlib
def test_caer_clip_picture(caer, tmp_path):
    picture = tmp_path / "clips.png"
    rows = predict_main("caer_clip")(["--checkpoint", str(caer["checkpoint"]), str(caer["clips"]), "--face-boxes",
                                      str(caer["clips"] / "face_boxes.json"), "--picture", str(picture),
                                      "--output", str(tmp_path / "p.csv")])
    assert len(rows) == 3  # the folder of clips: its three clip folders
    width, height = picture_size(picture)
    assert width >= caer["frames"] * 256 and height >= 3 * 256  # 3 clips x T frames, tiles of >= 256 px


def test_caer_clip_errors(caer, tmp_path):
    main, ckpt = predict_main("caer_clip"), str(caer["checkpoint"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        main(["--checkpoint", ckpt, str(tmp_path / "nowhere")])
    with pytest.raises(CheckpointError, match="dual_cross_attention.pt"):
        main(["--checkpoint", str(foreign_checkpoint(tmp_path, "dual_cross_attention")), str(caer["clips"])])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no clip folders"):
        main(["--checkpoint", ckpt, str(tmp_path / "empty")])
    (tmp_path / "clip.mp4").write_bytes(b"\0")
    with pytest.raises(DataError, match="extract the frames"):
        main(["--checkpoint", ckpt, str(tmp_path / "clip.mp4")])
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in range(1, 5):
        Image.new("RGB", (48, 48)).save(broken / f"{f}.png")
    (broken / "2.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read frame .*broken/2.png"):
        main(["--checkpoint", ckpt, str(broken)])
    (tmp_path / "other_boxes.json").write_text(json.dumps({"clip9": {"1.png": [0, 0, 4, 4]}}))
    with pytest.raises(DataError, match="no face box for clip 'clip0'.*--allow-missing-boxes"):
        main(["--checkpoint", ckpt, str(caer["clips"] / "list.txt"),
              "--face-boxes", str(tmp_path / "other_boxes.json")])


# ----------------------------------------------------------------------------- dual_cross_attention

DCAL_CLASSES = [f"kind_{c}" for c in range(6)]


@pytest.fixture(scope="module")
def dcal(tmp_path_factory):
    """best.pt of a tiny run on a class-folder tree (6 classes, random 20 x 16 images)."""
    root = tmp_path_factory.mktemp("dcal")
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 2), ("val", 1)):
        for name in DCAL_CLASSES:
            for k in range(count):
                (root / "data" / split / name).mkdir(parents=True, exist_ok=True)
                pixels = torch.randint(0, 256, (16, 20, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / "data" / split / name / f"img{k}.png")
    checkpoint = train_tiny("dual_cross_attention", [
        "--data-root", str(root / "data"), "--model", "tiny", "--image-size", "16", "--resize", "16",
        "--embed-dim", "32", "--depth", "2", "--heads", "2", "--batch-size", "4", "--epochs", "1",
        "--log-interval", "1", "--num-overlays", "0"], root / "run")
    return {"checkpoint": checkpoint, "data": root / "data"}


def test_dual_cross_attention_top5_are_the_models_probabilities(dcal, tmp_path):
    from dual_cross_attention.data import DataConfig, build_datasets
    from dual_cross_attention.model import DCAL, DCALConfig

    out = tmp_path / "pred.csv"
    predict_main("dual_cross_attention")(["--checkpoint", str(dcal["checkpoint"]), str(dcal["data"] / "val"),
                                          "--batch-size", "4", "--output", str(out)])
    columns, rows = read_csv(out)
    assert columns == ["image", "branch", "true"] + [f"{k}_{i}" for i in range(1, 6) for k in ("class", "prob")]
    assert len(rows) == 3 * len(DCAL_CLASSES) and [r["branch"] for r in rows[:3]] == ["sa", "glca", "combined"]
    # the reference: the validation split as train.py reads it, through the model in eval mode
    checkpoint = load_run_checkpoint(dcal["checkpoint"], "dual_cross_attention")
    cfg = DCALConfig(**checkpoint["config"]["model"])
    val = build_datasets(DataConfig(**checkpoint["config"]["data"]), cfg.image_size, 0)[0]["val"]
    model = DCAL(cfg).eval()
    load_model_state(model, checkpoint["model"], dcal["checkpoint"])
    for (path, label), (image, _, _) in zip(val.samples, val):
        with torch.no_grad():
            out = model(image[None])
        sa, glca = out["sa"].softmax(-1)[0], out["glca"].softmax(-1)[0]
        expected = {"sa": sa, "glca": glca, "combined": (sa + glca) / 2}
        for row in (r for r in rows if r["image"] == str(path)):
            assert row["true"] == DCAL_CLASSES[label]  # the class folder the image sits in
            top = expected[row["branch"]].topk(5)
            assert [row[f"class_{i}"] for i in range(1, 6)] == [DCAL_CLASSES[c] for c in top.indices]
            assert [float(row[f"prob_{i}"]) for i in range(1, 6)] == pytest.approx(top.values.tolist(), abs=2e-6)


def test_dual_cross_attention_names_classes_from_the_checkpoint_without_the_data_folder(dcal, tmp_path):
    """best.pt copied to another machine: the class names come with it, not from the data folder."""
    checkpoint = torch.load(dcal["checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["config"]["classes"] == DCAL_CLASSES
    checkpoint["config"]["data"]["data_root"] = str(tmp_path / "gone")  # the data is not there any more
    torch.save(checkpoint, tmp_path / "best.pt")
    (tmp_path / "kind_3").mkdir()
    shutil.copy(dcal["data"] / "val" / "kind_3" / "img0.png", tmp_path / "kind_3" / "bird.png")
    rows = predict_main("dual_cross_attention")(["--checkpoint", str(tmp_path / "best.pt"), str(tmp_path / "kind_3"),
                                                 "--format", "jsonl", "--output", str(tmp_path / "pred.jsonl")])
    assert rows[0]["true"] == "kind_3"
    assert {entry["class"] for entry in rows[0]["combined"]} <= set(DCAL_CLASSES)


@needs_matplotlib
def test_dual_cross_attention_jsonl_and_explain(dcal, tmp_path):
    images = [str(dcal["data"] / "val" / name / "img0.png") for name in DCAL_CLASSES[:2]]
    out = tmp_path / "pred.jsonl"
    predict_main("dual_cross_attention")(["--checkpoint", str(dcal["checkpoint"]), *images, "--format", "jsonl",
                                          "--explain", str(tmp_path / "explain"), "--output", str(out)])
    rows = read_jsonl(out)
    assert [set(r) for r in rows] == [{"image", "true", "sa", "glca", "combined"}] * 2
    assert [r["true"] for r in rows] == DCAL_CLASSES[:2]
    assert all(len(r[b]) == 5 and set(r[b][0]) == {"class", "prob"} for r in rows for b in ("sa", "glca", "combined"))
    pictures = sorted((tmp_path / "explain").glob("*.png"))
    assert [p.name for p in pictures] == ["001_img0.png", "002_img0.png"]
    width, height = picture_size(pictures[0])
    assert width >= 256 and height >= 2 * 256  # two panels (patches picked, rollout) of >= 256 px


def test_dual_cross_attention_errors(dcal, tmp_path):
    main, ckpt = predict_main("dual_cross_attention"), str(dcal["checkpoint"])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        main(["--checkpoint", ckpt, str(tmp_path / "missing.png")])
    with pytest.raises(CheckpointError, match="caer_clip.pt"):
        main(["--checkpoint", str(foreign_checkpoint(tmp_path, "caer_clip")), str(dcal["data"])])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no images"):
        main(["--checkpoint", ckpt, str(tmp_path / "empty")])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match="bad.jpg: cannot read image"):
        main(["--checkpoint", ckpt, str(tmp_path / "bad.jpg")])


# ----------------------------------------------------------------------------- deepfake_effnet_lstm


@pytest.fixture(scope="module")
def deepfake(tmp_path_factory):
    """best.pt of a tiny run on a dataset folder in the training format (index.csv with splits), two
    sequences per video in evaluation."""
    root = tmp_path_factory.mktemp("deepfake")
    data = write_dataset(root / "data", grouped_videos(4, splits=True), frames=4, size=8)
    args = [*DFD_TINY, "--data-root", str(data), "--max-iters", "2", "--val-interval", "2", "--eval-clips", "2"]
    return {"checkpoint": train_tiny("deepfake_effnet_lstm", args, root / "run"), "data": data}


def test_deepfake_effnet_lstm_sequence_and_video_probabilities(deepfake, tmp_path):
    from deepfake_effnet_lstm import train
    from deepfake_effnet_lstm.model import DeepfakeDetector, per_video

    out = tmp_path / "pred.csv"
    predict_main("deepfake_effnet_lstm")(["--checkpoint", str(deepfake["checkpoint"]), str(deepfake["data"]),
                                          "--batch-size", "24", "--output", str(out)])
    columns, rows = read_csv(out)
    assert columns == ["video", "subject", "level", "sequence", "p_fake", "prediction", "true"]
    # the reference: train.py's evaluation of the test split (per sequence, then the mean per video)
    checkpoint = load_run_checkpoint(deepfake["checkpoint"], "deepfake_effnet_lstm")
    args = train.build_parser().parse_args([])
    vars(args).update(checkpoint["args"])
    cfg = train.config_from(args)
    datasets, cfg.class_weights, _ = train.make_datasets(cfg.data, cfg.run.seed)
    model = DeepfakeDetector(cfg.model)
    load_model_state(model, checkpoint["model"], deepfake["checkpoint"])
    test = datasets["test"]
    scores = train.score(model, train.eval_loader(test, cfg), cfg)
    labels, probs = scores["label"], scores["p_fake"]
    video_labels, video_probs = per_video(labels, probs, torch.arange(len(test)) // test.clips)
    for v, record in enumerate(test.records):
        mine = [r for r in rows if r["video"] == record.video]
        assert [(r["level"], r["sequence"]) for r in mine] == [("sequence", "0"), ("sequence", "1"), ("video", "")]
        assert [float(r["p_fake"]) for r in mine] == pytest.approx([*probs[2 * v:2 * v + 2].tolist(),
                                                                    float(video_probs[v])], abs=2e-6)
        assert {r["true"] for r in mine} == {("real", "fake")[int(video_labels[v])]}
        assert mine[-1]["prediction"] == ("real", "fake")[int(video_probs[v] >= 0.5)]


@needs_matplotlib
def test_deepfake_effnet_lstm_one_video_jsonl_and_overlay(deepfake, tmp_path):
    out = tmp_path / "pred.jsonl"
    predict_main("deepfake_effnet_lstm")(["--checkpoint", str(deepfake["checkpoint"]), str(deepfake["data"] / "real0"),
                                          "--format", "jsonl", "--overlay", str(tmp_path / "overlays"),
                                          "--output", str(out)])
    rows = read_jsonl(out)
    assert [(r["video"], r["level"], r["sequence"], r["true"]) for r in rows] == [
        ("real0", "sequence", 0, ""), ("real0", "sequence", 1, ""), ("real0", "video", None, "")]
    assert rows[-1]["p_fake"] == pytest.approx((rows[0]["p_fake"] + rows[1]["p_fake"]) / 2)
    (picture,) = (tmp_path / "overlays").glob("*.png")
    width, height = picture_size(picture)
    assert width >= 2 * 256 and height >= 2 * 256  # T = 2 frames, frames and attention rows of >= 256 px


def test_deepfake_effnet_lstm_a_folder_of_two_peoples_crops_gives_one_row_set_per_person(deepfake, tmp_path):
    """icpr2020dfdc names crops frNNN_subjS.jpg; each person is scored on their own frames, exactly as
    a folder holding only that person's frames is."""
    from PIL import Image

    both, alone = tmp_path / "clip7", {s: tmp_path / f"alone{s}" / "clip7" for s in (0, 1)}
    for folder in (both, *alone.values()):
        folder.mkdir(parents=True)
    for frame in range(4):
        for subject in (0, 1):
            image = Image.new("RGB", (8, 8), (200 * subject, 30 * frame, 90))
            image.save(both / f"fr{frame:03d}_subj{subject}.png")
            image.save(alone[subject] / f"{frame}.png")
    main = predict_main("deepfake_effnet_lstm")
    main(["--checkpoint", str(deepfake["checkpoint"]), str(both), "--output", str(tmp_path / "both.jsonl"),
          "--format", "jsonl"])
    rows = read_jsonl(tmp_path / "both.jsonl")
    assert {(r["video"], r["subject"]) for r in rows} == {("clip7", 0), ("clip7", 1)}
    for subject in (0, 1):
        mine = [r for r in rows if r["subject"] == subject]
        main(["--checkpoint", str(deepfake["checkpoint"]), str(alone[subject]), "--format", "jsonl",
              "--output", str(tmp_path / f"alone{subject}.jsonl")])
        reference = read_jsonl(tmp_path / f"alone{subject}.jsonl")
        assert {r["subject"] for r in reference} == {""}
        assert [(r["level"], r["sequence"]) for r in mine] == [(r["level"], r["sequence"]) for r in reference]
        assert [r["p_fake"] for r in mine] == pytest.approx([r["p_fake"] for r in reference], abs=1e-6)
    # and each person's sequence is made of that person's crops only, in frame order
    from deepfake_effnet_lstm.data import DataConfig
    from deepfake_effnet_lstm.predict import read_videos

    records = read_videos(both, DataConfig(frames=2))
    assert [(r.video, r.subject, [p.name for p in r.frame_paths]) for r in records] == [
        ("clip7", s, [f"fr{f:03d}_subj{s}.png" for f in range(4)]) for s in (0, 1)]


def test_deepfake_effnet_lstm_errors(deepfake, tmp_path):
    main, ckpt = predict_main("deepfake_effnet_lstm"), str(deepfake["checkpoint"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        main(["--checkpoint", ckpt, str(tmp_path / "nowhere")])
    with pytest.raises(CheckpointError, match="visobert_multitask.pt"):
        main(["--checkpoint", str(foreign_checkpoint(tmp_path, "visobert_multitask")), str(deepfake["data"])])
    (tmp_path / "video.mp4").write_bytes(b"\0")
    with pytest.raises(DataError, match="video.mp4: a video file.*common.tools.video.*crop the faces"):
        main(["--checkpoint", ckpt, str(tmp_path / "video.mp4")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no frames"):
        main(["--checkpoint", ckpt, str(tmp_path / "empty")])
    (tmp_path / "short").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "short" / "0.png")
    with pytest.raises(DataError, match="short: 1 frames, fewer than the T = 2"):
        main(["--checkpoint", ckpt, str(tmp_path / "short")])
    (tmp_path / "short" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="short/1.png: unreadable image"):
        main(["--checkpoint", ckpt, str(tmp_path / "short")])


# ----------------------------------------------------------------------------- visobert_multitask

VISOBERT_TINY = [*TINY["visobert_multitask"], "--epochs", "1"]


@pytest.fixture(scope="module")
def visobert(tmp_path_factory):
    from visobert_multitask.data import synthetic_splits

    checkpoint = train_tiny("visobert_multitask", VISOBERT_TINY, tmp_path_factory.mktemp("visobert") / "run")
    return {"checkpoint": checkpoint, "texts": synthetic_splits(128, 32, 32, 0)["test"].texts[:5]}


def visobert_reference(checkpoint_path: Path, texts: list[str]) -> torch.Tensor:
    """(N, A, 4) probabilities, one review at a time (no padding), with the checkpoint's vocabulary."""
    from visobert_multitask.data import WordTokenizer
    from visobert_multitask.model import AspectSentimentModel, ModelConfig

    checkpoint = load_run_checkpoint(checkpoint_path, "visobert_multitask")
    tokenizer = WordTokenizer(checkpoint["extra"]["vocab"])
    model = AspectSentimentModel(ModelConfig(**checkpoint["config"]["model"])).eval()
    load_model_state(model, checkpoint["model"], checkpoint_path)
    with torch.no_grad():
        return torch.cat([model(ids, ids.ne(tokenizer.pad_id)).softmax(-1) for ids in
                          (torch.tensor([tokenizer.encode(t, checkpoint["config"]["max_len"])]) for t in texts)])


def test_visobert_multitask_jsonl_from_a_file_gives_the_models_probabilities(visobert, tmp_path):
    from visobert_multitask.data import STATES, SYN_ASPECTS

    reviews, out = tmp_path / "reviews.txt", tmp_path / "pred.jsonl"
    reviews.write_text("\n".join(visobert["texts"][:3]) + "\n\n" + "\n".join(visobert["texts"][3:]) + "\n",
                       encoding="utf-8")
    predict_main("visobert_multitask")(["--checkpoint", str(visobert["checkpoint"]), "--file", str(reviews),
                                        "--format", "jsonl", "--output", str(out)])
    rows = read_jsonl(out)
    assert [r["text"] for r in rows] == visobert["texts"]  # the blank line is skipped
    assert all(set(r) == {"review", "text", "aspects"} and list(r["aspects"]) == list(SYN_ASPECTS) for r in rows)
    probs = torch.tensor([[[a["probabilities"][s] for s in STATES] for a in r["aspects"].values()] for r in rows])
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, len(SYN_ASPECTS)), atol=1e-5, rtol=0)
    expected = visobert_reference(visobert["checkpoint"], visobert["texts"])
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    assert [[a["state"] for a in r["aspects"].values()] for r in rows] == \
        [[STATES[s] for s in review] for review in expected.argmax(-1).tolist()]


def test_visobert_multitask_table_from_text_and_stdin(visobert, monkeypatch, capsys):
    from visobert_multitask.data import STATES, SYN_ASPECTS

    main, ckpt = predict_main("visobert_multitask"), str(visobert["checkpoint"])
    rows = main(["--checkpoint", ckpt, "--text", visobert["texts"][0], "--text", visobert["texts"][1]])
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 * (2 + len(SYN_ASPECTS))
    assert table[0] == f"review 1: {visobert['texts'][0]}" and table[1].split() == ["aspect", "state", *STATES]
    assert table[2].split()[:2] == [rows[0]["aspect"], rows[0]["state"]]
    monkeypatch.setattr(sys, "stdin", io.StringIO(visobert["texts"][1] + "\n"))
    piped = main(["--checkpoint", ckpt])
    assert [(r["aspect"], r["state"]) for r in piped] == [(r["aspect"], r["state"]) for r in rows[len(SYN_ASPECTS):]]
    expected = [r[s] for r in rows[len(SYN_ASPECTS):] for s in STATES]
    assert [r[s] for r in piped for s in STATES] == pytest.approx(expected, abs=1e-5)


def test_visobert_multitask_errors(visobert, tmp_path, monkeypatch):
    main, ckpt = predict_main("visobert_multitask"), str(visobert["checkpoint"])
    with pytest.raises(FileNotFoundError, match="reviews.txt"):
        main(["--checkpoint", ckpt, "--file", str(tmp_path / "reviews.txt")])
    with pytest.raises(CheckpointError, match="deepfake_effnet_lstm.pt"):
        main(["--checkpoint", str(foreign_checkpoint(tmp_path, "deepfake_effnet_lstm")), "--text", "pin trâu"])
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="blank.txt: no review text"):
        main(["--checkpoint", ckpt, "--file", str(tmp_path / "blank.txt")])
    (tmp_path / "latin1.txt").write_bytes("giá rẻ".encode()[:-1] + b"\xe9\n")
    with pytest.raises(DataError, match="latin1.txt:1: not valid UTF-8"):
        main(["--checkpoint", ckpt, "--file", str(tmp_path / "latin1.txt")])


# ----------------------------------------------------------------------------- all four


@pytest.mark.parametrize("project,inputs", [("caer_clip", ["clips"]), ("dual_cross_attention", ["a.jpg"]),
                                            ("deepfake_effnet_lstm", ["faces"]),
                                            ("visobert_multitask", ["--text", "pin trâu"])])
def test_a_known_error_is_one_line_and_exit_status_1(project, inputs, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "best.pt"
    monkeypatch.setattr(sys, "argv", [f"{project}/predict.py", "--checkpoint", str(missing), *inputs])
    with pytest.raises(SystemExit) as stop:
        run_cli(predict_main(project))
    assert stop.value.code == 1
    expected = f"{project}/predict.py: error: FileNotFoundError: checkpoint {missing} does not exist\n"
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize("project,flag", [("caer_clip", "--picture"), ("dual_cross_attention", "--explain"),
                                          ("deepfake_effnet_lstm", "--overlay")])
def test_picture_flags_without_matplotlib_say_what_to_install(project, flag, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        predict_main(project)(["--checkpoint", str(tmp_path / "best.pt"), str(tmp_path), flag, str(tmp_path / "p")])


def test_numbers_without_matplotlib(caer, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rows = predict_main("caer_clip")(["--checkpoint", str(caer["checkpoint"]), str(caer["clips"] / "clip1"),
                                      "--output", str(tmp_path / "p.csv")])
    assert len(rows) == 1 and rows[0]["prediction"] in caer["names"]
