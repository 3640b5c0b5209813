"""The pictures the training runs draw: each file is written where the READMEs say, big enough to read
(every frame or image tile at least common.tools.predict.TILE px), and built from the run's own numbers."""

import importlib.util

import numpy as np
import pytest
from PIL import Image

from common.tools.predict import TILE
from tests.fixtures_deepfake_effnet_lstm import TINY_ARGS as DFD_TINY

pytestmark = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="pictures need matplotlib")


def size_of(path):
    with Image.open(path) as image:
        return image.size  # (width, height)


def test_caer_confusion_png_has_a_cell_per_class_pair_and_the_csv(tmp_path):
    from caer_clip.data import CLASS_DESCRIPTORS
    from caer_clip.plots import save_confusion

    names = list(CLASS_DESCRIPTORS["caer"])
    counts = np.full((len(names), len(names)), 2) + 40 * np.eye(len(names), dtype=int)  # dark diagonal
    save_confusion(counts, names, tmp_path / "confusion_test", "caer_clip, test split: best.pt (epoch 3, step 9)")
    width, height = size_of(tmp_path / "confusion_test.png")
    assert width >= 80 * len(names) and height >= 80 * len(names)  # a readable cell per (true, predicted) pair
    assert (tmp_path / "confusion_test.csv").read_text().splitlines()[1] == "anger,42," + ",".join(["2"] * 6)


def test_dcal_rollout_grid_after_a_tiny_run(tmp_path):
    from dual_cross_attention.train import main

    run = tmp_path / "run"
    main(["--synthetic-train", "32", "--synthetic-val", "8", "--synthetic-test", "8", "--synthetic-classes", "4",
          "--image-size", "16", "--embed-dim", "32", "--depth", "2", "--heads", "2", "--batch-size", "8",
          "--max-iters", "1", "--num-overlays", "2", "--out", str(run)])
    width, height = size_of(run / "rollout_step000001.png")
    assert width >= 2 * TILE and height >= 2 * TILE  # 2 images x (image, rollout), 16 px images drawn at 256 px


def test_deepfake_overlays_after_a_tiny_run(tmp_path):
    from deepfake_effnet_lstm.train import main

    run = tmp_path / "run"
    args = [a for a in DFD_TINY if a != "--no-overlays"]
    main(args + ["--max-iters", "1", "--out", str(run)])
    for name in ("real", "fake"):
        width, height = size_of(run / "overlays" / f"step000001_{name}.png")
        assert width >= 2 * TILE and height >= 2 * TILE  # T = 2 frames, frames over attention, 32 px frames at 256


def test_visobert_figures_take_the_loss_weights_from_the_checkpoint_and_sit_beside_it(tmp_path, capsys):
    from visobert_multitask import visualize
    from visobert_multitask.train import main as train

    train(["--synthetic-train", "32", "--synthetic-val", "8", "--synthetic-test", "8", "--hidden", "32", "--layers",
           "1", "--heads", "2", "--intermediate", "64", "--batch-size", "16", "--epochs", "1", "--device", "cpu",
           "--w-focal", "0.6", "--w-con", "0.4", "--out", str(tmp_path / "run")])
    capsys.readouterr()
    out = visualize.main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--batch-size", "4", "--seq-len", "8",
                          "--iters", "1"])
    assert (out["loss"]["w_focal"], out["loss"]["w_con"]) == (0.6, 0.4)
    assert "0.6 x focal + 0.4 x SupCon" in capsys.readouterr().out
    assert [p.parent for p in out["files"]] == [tmp_path / "run"] * 3  # next to the checkpoint
    for path in out["files"]:
        assert min(size_of(path)) >= TILE
