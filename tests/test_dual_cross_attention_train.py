"""train.py end to end on tiny synthetic data: exact resume, config mismatch, rollout overlays."""

import csv

import pytest
import torch
from PIL import Image

from common.runtime import ConfigMismatchError
from dual_cross_attention.train import main
from tests.fixtures_dual_cross_attention import single_thread, write_cub  # noqa: F401

TINY = ["--synthetic-train", "64", "--synthetic-val", "16", "--synthetic-classes", "4", "--image-size", "16",
        "--embed-dim", "32", "--depth", "2", "--heads", "2", "--batch-size", "8", "--accum-steps", "2",
        "--log-interval", "1", "--epochs", "2", "--warmup-epochs", "1", "--eval-interval", "3"]


def _rows(run):
    return list(csv.DictReader(open(run / "log.csv")))


@pytest.mark.slow
def test_resume_mid_epoch_reproduces_the_uninterrupted_run_exactly(tmp_path):
    """8 steps (4 per epoch, 2 micro-batches each) straight, vs 3 steps, stop, resume to 8: equal
    weights, optimizer state and log rows (PWCA partners, drop-path, flips all reproduced)."""
    full, split = tmp_path / "full", tmp_path / "split"
    main(TINY + ["--out", str(full), "--num-overlays", "0"])
    main(TINY + ["--out", str(split), "--interrupt-after", "3", "--num-overlays", "0"])
    assert torch.load(split / "last.pt", weights_only=False)["step"] == 3
    main(TINY + ["--out", str(split), "--resume", str(split / "last.pt"), "--num-overlays", "0"])
    a, b = torch.load(full / "last.pt", weights_only=False), torch.load(split / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 8
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
    assert _rows(full) == _rows(split)


def test_resume_refuses_another_architecture_and_missing_checkpoint(tmp_path):
    run = tmp_path / "run"
    main(TINY + ["--out", str(run), "--max-iters", "1", "--num-overlays", "0"])
    with pytest.raises(ConfigMismatchError, match="depth"):
        main(TINY + ["--out", str(run), "--depth", "3", "--resume", str(run / "last.pt")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(TINY + ["--out", str(run), "--resume", str(run / "nope.pt")])


def test_rollout_overlays_saved_each_evaluation(tmp_path):
    run = tmp_path / "run"
    summary = main(TINY + ["--out", str(run), "--max-iters", "6", "--num-overlays", "3"])
    pngs = sorted(p.name for p in run.glob("rollout_step*.png"))
    assert pngs == ["rollout_step000003.png", "rollout_step000006.png"]
    assert Image.open(run / pngs[0]).size == (3 * 128, 2 * 128)  # 3 images, image row + overlay row
    rows = [r for r in _rows(run) if r["w_sa"]]
    assert all(r["w_glca"] and r["w_pwca"] for r in rows)  # the three effective weights are logged
    assert summary["val_top1_sa"] >= 0 and summary["val_top1_glca"] >= 0


def test_train_on_a_cub_fixture(tmp_path):
    root = write_cub(tmp_path / "CUB", labels=(1, 1, 1, 2, 2, 2, 3, 3, 3), split=(1, 1, 0) * 3)
    summary = main(["--data-root", str(root), "--model", "tiny", "--patch-size", "8", "--image-size", "32",
                    "--resize", "40", "--batch-size", "2", "--max-iters", "2", "--out", str(tmp_path / "run"),
                    "--num-overlays", "2"])
    assert summary["step"] == 2 and 0.0 <= summary["val_top1"] <= 1.0
    assert summary["peak_lr"] == 5e-4 * 2 / 512  # real data: the paper's rule
