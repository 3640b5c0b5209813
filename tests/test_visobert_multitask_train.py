"""visobert_multitask/train.py end to end: smoke run, run folder, exact resume after a stop signal,
resume of a finished run, mid-epoch validation, one-process evaluation of a checkpoint, parse-time
checks, config mismatch, bad data."""

import csv
import json
import signal

import pytest
import torch

from common.checkpoint import load_run_checkpoint
from common.lifecycle import Run
from common.runtime import ConfigMismatchError, DataError
from tests.lifecycle_faults import signal_during_step
from visobert_multitask.train import evaluate_checkpoint, main

TINY = ["--synthetic-train", "96", "--synthetic-val", "32", "--synthetic-test", "32", "--hidden", "32", "--layers", "1",
        "--heads", "2", "--intermediate", "64", "--batch-size", "16", "--log-interval", "2", "--device", "cpu"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_run(a, b):
    full, resumed = load_run_checkpoint(a / "last.pt", "visobert_multitask"), load_run_checkpoint(b / "last.pt",
                                                                                                 "visobert_multitask")
    assert full["progress"]["step"] == resumed["progress"]["step"]
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert rows(a / "log.csv") == rows(b / "log.csv")
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["test"] == rb["test"] and ra["val"] == rb["val"]


@pytest.mark.slow
def test_smoke_run_writes_run_folder_and_summary(tmp_path):
    summary = main(TINY + ["--epochs", "1", "--out", str(tmp_path / "run")])
    run = tmp_path / "run"
    assert {"config.json", "log.csv", "last.pt", "best.pt", "results.json"} <= {p.name for p in run.iterdir()}
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["hidden"] == 32 and config["lr"] == 1e-3 and config["warmup_steps"] == 1
    log = rows(run / "log.csv")
    assert {r["split"] for r in log} == {"train", "val", "test"}
    assert "step" in log[0] and not any("time" in k for k in log[0])
    assert summary["run_dir"] == str(run) and summary["best"]["metric"] == "score"
    for split in ("val", "test"):  # flat floats, the per-aspect table kept apart
        assert set(summary[split]) == {"det_f1", "sent_f1", "f1_inflated", "score"}
        assert all(isinstance(v, float) for v in summary[split].values())
    assert [r["aspect"] for r in summary["test_per_aspect"]][:2] == ["BATTERY", "CAMERA"]
    assert json.loads((run / "results.json").read_text())["test"] == summary["test"]


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    args = TINY + ["--epochs", "2", "--ckpt-interval", "4"]
    main(args + ["--out", str(tmp_path / "full")])
    # 6 batches per epoch: mid epoch 1, between two interval checkpoints
    monkeypatch.setattr(Run, "should_stop", signal_during_step(9))
    with pytest.raises(SystemExit) as stopped:
        main(args + ["--out", str(tmp_path / "cut")])
    assert stopped.value.code == 128 + signal.SIGTERM
    # train rows at steps 2, 4, 6, 8; val at 6
    assert load_run_checkpoint(tmp_path / "cut" / "last.pt", "visobert_multitask")["progress"] == {
        "step": 9, "epoch": 1, "batch_in_epoch": 3, "log_rows": 5, "world_size": 1}
    assert not (tmp_path / "cut" / "results.json").exists() and not (tmp_path / "cut" / ".lock").exists()
    monkeypatch.undo()
    main(["--resume", str(tmp_path / "cut" / "last.pt")])  # every other setting from the checkpoint
    assert_same_run(tmp_path / "full", tmp_path / "cut")


@pytest.mark.slow
def test_resuming_a_finished_run_adds_no_rows_and_tests_the_same_best(tmp_path):
    """Before, each resume of a finished run appended another test row to log.csv."""
    run = tmp_path / "run"
    first = main(TINY + ["--epochs", "2", "--out", str(run)])
    log = (run / "log.csv").read_text()
    again = main(["--resume", str(run / "last.pt")])
    assert (run / "log.csv").read_text() == log
    assert again["test"] == first["test"] and again["val"] == first["val"] and again["step"] == first["step"]


@pytest.mark.slow
def test_val_interval_validates_mid_epoch_and_resumes_at_a_validation_step(tmp_path, monkeypatch):
    args = TINY + ["--epochs", "2", "--val-interval", "4", "--ckpt-interval", "0"]
    main(args + ["--out", str(tmp_path / "full")])
    val_steps = [int(r["step"]) for r in rows(tmp_path / "full" / "log.csv") if r["split"] == "val"]
    assert val_steps == [4, 6, 8, 12]  # every 4 steps, every epoch end (6, 12), never twice at one step
    monkeypatch.setattr(Run, "should_stop", signal_during_step(8))  # the stop arrives in a step that also validates
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "cut")])
    monkeypatch.undo()
    main(["--resume", str(tmp_path / "cut" / "last.pt")])
    assert_same_run(tmp_path / "full", tmp_path / "cut")


@pytest.mark.slow
def test_evaluate_checkpoint_equals_the_final_test(tmp_path):
    """The final test scores best.pt; a one-process evaluation rebuilt from that file alone (the
    word vocabulary from the checkpoint) gives the same numbers."""
    results = main(TINY + ["--epochs", "2", "--out", str(tmp_path / "run")])
    best = tmp_path / "run" / "best.pt"
    assert load_run_checkpoint(best, "visobert_multitask")["extra"]["vocab"][:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert evaluate_checkpoint(best, "test", "cpu") == results["test"]
    assert set(evaluate_checkpoint(best, "val")) == set(results["val"])


@pytest.mark.parametrize("argv, words", [
    (["--epochs", "0"], "argument --epochs: must be >= 1"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["--lr", "-0.001"], "argument --lr: must be > 0"),
    (["--grad-clip", "-1"], "argument --grad-clip: must be >= 0"),
    (["--dropout", "1.5"], "argument --dropout: must be between 0"),
    (["--hidden", "30", "--heads", "4"], "--hidden 30 is not a multiple of --heads 4"),
])
def test_bad_arguments_are_refused_at_parse_time(argv, words, capsys):
    """Before: `--epochs 0` ended in FileNotFoundError for a --resume nobody gave, `--batch-size 0`
    in ZeroDivisionError."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and words in capsys.readouterr().err


def test_removed_and_renamed_flags_are_gone(capsys):
    for gone in (["--stop-after", "3"], ["--clip", "1"], ["--warmup-frac", "0.1"]):
        with pytest.raises(SystemExit):
            main(gone)
        assert "unrecognized arguments" in capsys.readouterr().err


def test_resume_with_other_architecture_names_the_key(tmp_path):
    main(TINY + ["--epochs", "1", "--max-iters", "1", "--out", str(tmp_path / "run")])
    with pytest.raises(ConfigMismatchError, match="model.hidden: checkpoint=32 now=48"):
        main([*TINY, "--hidden", "48", "--epochs", "1", "--out", str(tmp_path / "run"),
              "--resume", str(tmp_path / "run" / "last.pt")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(TINY + ["--resume", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "run")])


def test_bad_data_root_raises_data_error(tmp_path):
    (tmp_path / "train.csv").write_text("text,Battery\npin tốt,Superb\n", encoding="utf-8")
    with pytest.raises(DataError, match="train.csv:2: unknown polarity"):
        main(TINY + ["--data-root", str(tmp_path), "--out", str(tmp_path / "run")])


def test_split_too_small_for_a_batch_names_the_split(tmp_path):
    root = tmp_path / "reviews"
    root.mkdir()
    (root / "train.csv").write_text("text,Battery\npin tốt,Positive\npin kém,Negative\n", encoding="utf-8")
    (root / "val.csv").write_text("text,Battery\n", encoding="utf-8")  # header only
    (root / "test.csv").write_text("text,Battery\npin ổn,Neutral\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"val split \(.*val\.csv\): 0 reviews"):
        main(TINY + ["--data-root", str(root), "--out", str(tmp_path / "run")])
    (root / "val.csv").write_text("text,Battery\npin ổn,Neutral\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train split \(.*train\.csv\): 2 reviews make no full batch of "
                                        r"--batch-size 16"):
        main(TINY + ["--data-root", str(root), "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()  # refused before a run folder was taken
