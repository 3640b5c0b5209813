"""train.py end to end on tiny synthetic data: exact resume after a stop signal, config mismatch,
parse-time checks, the final test of best.pt, rollout overlays."""

import csv
import importlib.util
import json
import signal

import pytest
import torch
from PIL import Image

from common.lifecycle import Run
from common.runtime import ConfigMismatchError, DataError
from common.tools.predict import TILE
from dual_cross_attention.data import SyntheticFineGrained
from dual_cross_attention.train import evaluate_checkpoint, main
from tests.fixtures_dual_cross_attention import write_cub  # noqa: F401
from tests.lifecycle_faults import signal_during_step

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)

# 4 optimizer steps per epoch of 2 micro-batches each; validations at steps 3, 4, 6, 8
TINY = ["--synthetic-train", "64", "--synthetic-val", "16", "--synthetic-test", "16", "--synthetic-classes", "4",
        "--image-size", "16", "--embed-dim", "32", "--depth", "2", "--heads", "2", "--batch-size", "8",
        "--accum-steps", "2", "--log-interval", "1", "--epochs", "2", "--val-interval", "3"]


def _rows(run):
    return list(csv.DictReader(open(run / "log.csv")))


def _load(path):
    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_sigterm_then_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, monkeypatch):
    """8 steps straight, vs SIGTERM after step 3 (just validated, mid-epoch) or step 4 (the epoch's
    last, its validation still to come), then `--resume last.pt`: equal weights, optimizer state,
    log rows and test score (PWCA partners, drop-path, shifts all reproduced). The stop saves
    last.pt although the default --ckpt-interval (200) has not come."""
    full = tmp_path / "full"
    reference = main(TINY + ["--out", str(full), "--num-overlays", "0"])
    a = _load(full / "last.pt")
    assert a["progress"]["step"] == 8
    for stop_after in (3, 4):
        split = tmp_path / f"split{stop_after}"
        with monkeypatch.context() as patch:
            patch.setattr(Run, "should_stop", signal_during_step(stop_after))
            with pytest.raises(SystemExit) as stopped:
                main(TINY + ["--out", str(split), "--num-overlays", "0"])
        assert stopped.value.code == 128 + signal.SIGTERM
        assert _load(split / "last.pt")["progress"]["step"] == stop_after
        assert not list(split.glob("*.tmp")) and not (split / ".lock").exists()
        resumed = main(["--resume", str(split / "last.pt")])  # every setting comes from the checkpoint
        b = _load(split / "last.pt")
        assert b["progress"]["step"] == 8
        for name in a["model"]:
            assert torch.equal(a["model"][name], b["model"][name]), name
        assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
        assert _rows(full) == _rows(split)
        assert resumed["test"] == reference["test"] and resumed["best"] == reference["best"]


def test_resume_refuses_another_architecture_without_touching_the_run(tmp_path):
    run = tmp_path / "run"
    main(TINY + ["--out", str(run), "--max-iters", "1", "--num-overlays", "0"])
    config = (run / "config.json").read_bytes()
    with pytest.raises(ConfigMismatchError, match="depth"):
        main(TINY + ["--out", str(run), "--depth", "3", "--resume", str(run / "last.pt")])
    assert (run / "config.json").read_bytes() == config  # refused before anything was written
    with pytest.raises(ConfigMismatchError, match="synthetic_train"):  # another synthetic set is other data
        main(TINY + ["--out", str(run), "--synthetic-train", "48", "--resume", str(run / "last.pt")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(TINY + ["--out", str(run), "--resume", str(run / "nope.pt")])


def test_resuming_a_finished_run_adds_no_rows_and_tests_again(tmp_path):
    run = tmp_path / "run"
    first = main(TINY + ["--out", str(run), "--max-iters", "2", "--num-overlays", "0"])
    rows = _rows(run)
    again = main(["--resume", str(run / "last.pt")])
    assert _rows(run) == rows and again["test"] == first["test"] and again["val"] == first["val"]


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["--epochs", "0"], "argument --epochs: must be >= 1"),
    (["--lr=-1e-3"], "argument --lr: must be > 0"),
    (["--base-lr", "0"], "argument --base-lr: must be > 0"),
    (["--max-iters", "0"], "argument --max-iters: must be >= 1"),
    (["--accum-steps", "0"], "argument --accum-steps: must be >= 1"),
    (["--warmup-steps=-1"], "argument --warmup-steps: must be >= 0"),
    (["--grad-clip=-1"], "argument --grad-clip: must be >= 0"),
    (["--weight-decay=-0.1"], "argument --weight-decay: must be >= 0"),
    (["--val-interval", "0"], "argument --val-interval: must be >= 1"),
    (["--log-interval", "0"], "argument --log-interval: must be >= 1"),
    (["--top-ratio", "1.5"], "argument --top-ratio: must be between 0"),
    (["--batch-size", "1"], "argument --batch-size: must be >= 2 with PWCA"),
    (["--image-size", "18", "--patch-size", "4"], "argument --image-size: must be a multiple"),
    (["--clip-grad", "1"], "unrecognized arguments: --clip-grad"),
    (["--eval-interval", "1"], "unrecognized arguments: --eval-interval"),
    (["--warmup-epochs", "1"], "unrecognized arguments: --warmup-epochs"),
    (["--interrupt-after", "1"], "unrecognized arguments: --interrupt-after"),
])
def test_bad_flags_are_refused_at_parse_time(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["--out", str(tmp_path / "run"), *flags])
    assert refused.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_too_many_classes_for_the_fine_task_is_a_data_error_naming_the_flag(tmp_path):
    with pytest.raises(DataError, match="--synthetic-classes 42: .* at most 41 classes"):
        main(TINY + ["--synthetic-classes", "42", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_batch_size_one_is_fine_without_pwca(tmp_path):
    summary = main(TINY + ["--batch-size", "1", "--accum-steps", "1", "--no-pwca", "--synthetic-train", "4",
                           "--max-iters", "2", "--out", str(tmp_path / "run"), "--num-overlays", "0"])
    assert summary["step"] == 2 and _load(tmp_path / "run" / "last.pt")["config"]["train"]["batch_size"] == 1


def test_final_test_scores_best_pt_on_its_own_split(tmp_path):
    """results["test"] is best.pt on the synthetic test split (drawn apart from validation), and a
    one-process evaluate_checkpoint of best.pt gives exactly those numbers."""
    run = tmp_path / "run"
    summary = main(TINY + ["--out", str(run), "--max-iters", "4", "--num-overlays", "0"])
    assert set(summary["test"]) == set(summary["val"]) == {"top1", "top1_sa", "top1_glca"}
    assert evaluate_checkpoint(run / "best.pt") == summary["test"]
    assert json.loads((run / "results.json").read_text())["test"] == summary["test"]
    val, test = (SyntheticFineGrained(16, 4, 16, seed=0, split=s) for s in ("val", "test"))
    assert not torch.equal(val.images, test.images)


def test_rollout_overlays_saved_each_validation(tmp_path):
    run = tmp_path / "run"
    summary = main(TINY + ["--out", str(run), "--max-iters", "6", "--num-overlays", "3"])
    if importlib.util.find_spec("matplotlib") is not None:  # without it the pictures are skipped, with a note
        pngs = sorted(p.name for p in run.glob("rollout_step*.png"))
        assert pngs == ["rollout_step000003.png", "rollout_step000004.png", "rollout_step000006.png"]
        width, height = Image.open(run / pngs[0]).size
        assert width >= 2 * TILE and height >= 3 * TILE  # 3 rows of (image, rollout), 16 px images drawn at 256
    rows = [r for r in _rows(run) if r["w_sa"]]
    assert all(r["w_glca"] and r["w_pwca"] for r in rows)  # the three effective weights are logged
    assert summary["val"]["top1_sa"] >= 0 and summary["val"]["top1_glca"] >= 0


def test_train_on_a_cub_fixture(tmp_path, capsys):
    root = write_cub(tmp_path / "CUB", labels=(1, 1, 1, 2, 2, 2, 3, 3, 3), split=(1, 1, 0) * 3)
    summary = main(["--data-root", str(root), "--model", "tiny", "--patch-size", "8", "--image-size", "32",
                    "--resize", "40", "--batch-size", "2", "--max-iters", "2", "--out", str(tmp_path / "run"),
                    "--num-overlays", "2"])
    assert summary["step"] == 2 and 0.0 <= summary["val"]["top1"] <= 1.0 and 0.0 <= summary["test"]["top1"] <= 1.0
    assert summary["peak_lr"] == 5e-4 * 2 / 512  # real data: the paper's rule
    assert "warning:" not in capsys.readouterr().out  # validation is held out of the train split, not the test split
