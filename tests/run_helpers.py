"""What the suites that drive a real train.py in its own process share (tests/test_lifecycle.py,
tests/test_reliability.py and the projects' suites): the tiny synthetic run of each project, the
command, its environment, and what two runs must have in common to count as the same run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# A run of a few seconds on each project's synthetic default; a suite appends what it needs (the last
# value of a flag wins).
TINY = {
    "caer_clip": ["--synthetic-train", "20", "--synthetic-val", "10", "--synthetic-test", "10", "--batch-size", "4",
                  "--epochs", "1", "--moco-queue", "16"],
    "dual_cross_attention": ["--synthetic-train", "64", "--synthetic-val", "32", "--synthetic-test", "32",
                             "--synthetic-classes", "4", "--image-size", "16", "--embed-dim", "32", "--depth", "2",
                             "--heads", "2", "--batch-size", "8", "--epochs", "2"],
    "deepfake_effnet_lstm": ["--synthetic-train", "8", "--synthetic-val", "4", "--synthetic-test", "4",
                             "--synthetic-frames", "4", "--frames", "2", "--image-size", "32", "--batch-size", "2",
                             "--eval-clips", "1", "--no-overlays", "--no-tensorboard", "--log-interval", "2"],
    "visobert_multitask": ["--synthetic-train", "128", "--synthetic-val", "32", "--synthetic-test", "32",
                           "--hidden", "32", "--layers", "1", "--heads", "2", "--intermediate", "64", "--epochs", "2",
                           "--batch-size", "32", "--log-interval", "2"],
}
VISOBERT_TINY_MODEL = ["--hidden", "32", "--layers", "1", "--heads", "2", "--intermediate", "64", "--max-len", "16",
                       "--device", "cpu"]  # the model alone, for suites that build it from the parser


def script(project: str) -> str:
    return str(REPO / project / "train.py")


def train(project: str, args: list[str], wrapper: list[str] | None = None, cwd=REPO,
          timeout: float = 300) -> subprocess.CompletedProcess:
    """`python [wrapper] <project>/train.py args`, one thread, output captured."""
    cmd = [sys.executable, *(wrapper or []), script(project), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def log_rows(run_dir: Path) -> list[list[str]]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.reader(f))


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_run(reference: Path, run: Path) -> None:
    """Same final weights, same log.csv row for row, same test results, nothing left over."""
    wa, wb = weights(reference / "last.pt"), weights(run / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"final weights differ at {k}"
    assert log_rows(run) == log_rows(reference), "log rows duplicated, missing or different after resume"
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (reference, run))
    assert ra.get("test") == rb.get("test") and ra.get("val") == rb.get("val")
    assert not list(run.glob("*.tmp")) and not (run / ".lock").exists()
