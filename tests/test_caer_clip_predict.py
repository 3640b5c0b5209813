"""caer_clip/predict.py reads lists and box files as train.py does (one reader), and its
picture's box outlines read on any scene."""

import json
import os

import pytest
import torch

from caer_clip import predict
from caer_clip.train import main as train_main
from common.runtime import DataError
from tests.fixtures_caer_clip import make_raer


@pytest.fixture(scope="module")
def raer_run(tmp_path_factory):
    """best.pt of a one-epoch tiny run on a RAER folder, and that folder."""
    root = tmp_path_factory.mktemp("caer_predict")
    make_raer(root / "raer", clips_per_class=1, frames=3)
    train_main(["--data-root", str(root / "raer"), "--clip", "tiny", "--num-frames", "2", "--batch-size", "2",
                "--epochs", "1", "--val-list", "test.txt", "--out", str(root / "run")])
    return root / "run" / "best.pt", root / "raer"


def test_predict_reads_a_list_relative_to_the_training_data_root(raer_run, tmp_path):
    """A CLIP-CAER list kept in another folder, paths relative to the data root (as train.py reads them):
    predict.py reads it relative to the checkpoint's --data-root; it read it relative to the list's folder
    and failed on a clip folder that does not exist."""
    checkpoint, root = raer_run
    (root / "lists").mkdir(exist_ok=True)
    (root / "lists" / "test.txt").write_text((root / "test.txt").read_text())
    rows = predict.main(["--checkpoint", str(checkpoint), str(root / "lists" / "test.txt"), "--face-boxes",
                         str(root / "face_boxes.json"), "--output", str(tmp_path / "p.csv")])
    assert [r["clip"] for r in rows][:2] == ["test/class1_0", "test/class2_0"]
    assert {r["box_fallbacks"] for r in rows} == {0}


def test_predict_reads_rapt_lists_and_keys_with_root_and_hints_at_root(raer_run, tmp_path):
    """A RAPT-CLIP list (paths relative to --root-dir) with its root-joined box keys reads with --root; a
    list that fails without --root says which folder it was read from and names --root."""
    checkpoint, root = raer_run
    boxes = json.loads((root / "face_boxes.json").read_text())
    rapt_keys = {os.path.join("/kaggle/input/raer", k): v for k, v in boxes.items()}  # os.path.join(root_dir, rel)
    (tmp_path / "face.json").write_text(json.dumps(rapt_keys))
    (tmp_path / "test.txt").write_text((root / "test.txt").read_text())
    rows = predict.main(["--checkpoint", str(checkpoint), str(tmp_path / "test.txt"), "--root", str(root),
                         "--face-boxes", str(tmp_path / "face.json"), "--output", str(tmp_path / "p.csv")])
    assert len(rows) == 5 and {r["box_fallbacks"] for r in rows} == {0}
    (tmp_path / "moved.txt").write_text("elsewhere/class1_0 3 1\n")
    with pytest.raises(DataError, match=r"do not exist: .*elsewhere.* -- .*relative to .*pass --root"):
        predict.main(["--checkpoint", str(checkpoint), str(tmp_path / "moved.txt"), "--output", str(tmp_path / "q")])


@pytest.mark.parametrize("scene", [(20, 200, 20), (0, 0, 0), (255, 255, 255)], ids=["green", "black", "white"])
def test_picture_box_outline_reads_on_any_scene(scene):
    """The face box outline holds a pixel far from the scene colour on green, black and white scenes (a
    green outline vanished on green)."""
    tile = torch.tensor(scene, dtype=torch.uint8).view(3, 1, 1).expand(3, 64, 64).clone()
    drawn = predict.outline_box(tile, torch.tensor([16.0, 16.0, 48.0, 48.0]), 2)
    distance = (drawn.int() - tile.int()).abs().sum(dim=0)  # L1 over RGB per pixel
    assert distance.max() >= 300
