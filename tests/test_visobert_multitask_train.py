"""visobert_multitask/train.py end to end: smoke run, run folder, exact resume, config mismatch."""

import csv
import json

import pytest
import torch

from common.runtime import ConfigMismatchError, DataError
from visobert_multitask.train import main

TINY = ["--synthetic-train", "96", "--synthetic-val", "32", "--synthetic-test", "32", "--hidden", "32", "--layers", "1",
        "--heads", "2", "--intermediate", "64", "--batch-size", "16", "--log-interval", "2", "--device", "cpu"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_smoke_run_writes_run_folder_and_summary(tmp_path):
    summary = main(TINY + ["--epochs", "1", "--out", str(tmp_path / "run")])
    run = tmp_path / "run"
    assert {"config.json", "log.csv", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "config.json").read_text())["model"]["hidden"] == 32
    log = rows(run / "log.csv")
    assert {r["split"] for r in log} == {"train", "val", "test"}
    assert "step" in log[0] and not any("time" in k for k in log[0])
    assert summary["run_dir"] == str(run) and "score" in summary["val"] and "score" in summary["test"]


@pytest.mark.slow
def test_exact_resume_mid_epoch_equals_uninterrupted_run(tmp_path):
    args = TINY + ["--epochs", "2", "--ckpt-interval", "3"]
    main(args + ["--out", str(tmp_path / "full")])
    stopped = main(args + ["--out", str(tmp_path / "cut"), "--stop-after", "9"])  # 6 batches/epoch: mid epoch 1
    assert stopped["stopped"] and stopped["step"] == 9
    main(args + ["--out", str(tmp_path / "cut"), "--resume", str(tmp_path / "cut" / "last.pt")])
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    resumed = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert full["step"] == resumed["step"] == 12
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert rows(tmp_path / "full" / "log.csv") == rows(tmp_path / "cut" / "log.csv")


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
