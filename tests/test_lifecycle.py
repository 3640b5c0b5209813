"""One run lifecycle for all four programs (common/lifecycle.py, common/cli.py), driven through each
project's real train.py: torchrun over several epochs with the final test, re-runs into a used
folder, kills between any two writes, preemption signals, damaged checkpoints, bad arguments and
a full disk.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from common.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_model_state,
    load_optimizer_state,
    load_run_checkpoint,
    save_atomic,
)
from common.lifecycle import Run, State
from common.runtime import ConfigMismatchError, RunDirError
from tests.run_helpers import ENV, REPO, TINY, assert_same_run, log_rows, ok, script, train

HOOKS = str(REPO / "tests" / "scripts" / "lifecycle_hooks.py")


@dataclass
class Spec:
    tiny: list[str]  # a run of a few seconds on the synthetic default, with its final test
    three_epochs: list[str]  # added for the torchrun run: at least 3 epochs
    val_row: tuple[str, str]  # (column, value) that marks a validation row in log.csv ('*': any value)
    bad_args: list[tuple[list[str], str]]  # (arguments, the flag the parse error must name)


COMMON_BAD = [(["--batch-size", "0"], "--batch-size"), (["--epochs", "0"], "--epochs"), (["--lr", "-0.01"], "--lr"),
              (["--log-interval", "0"], "--log-interval"), (["--ckpt-interval", "-1"], "--ckpt-interval"),
              (["--grad-clip", "-1"], "--grad-clip"), (["--val-interval", "0"], "--val-interval"),
              (["--warmup-steps", "-1"], "--warmup-steps"), (["--max-iters", "0"], "--max-iters"),
              (["--device", "tpu9"], "--device"),
              (["--seed", str(2**64)], "--seed"), (["--workers", "100000"], "--workers")]

SPECS: dict[str, Spec] = {
    "caer_clip": Spec(
        tiny=[*TINY["caer_clip"], "--epochs", "2"],
        three_epochs=["--epochs", "3"], val_row=("val_uar", "*"),
        bad_args=COMMON_BAD + [(["--lr-image", "0"], "--lr-image"), (["--num-frames", "0"], "--num-frames"),
                               (["--val-fraction", "1.5"], "--val-fraction")]),
    "dual_cross_attention": Spec(
        tiny=[*TINY["dual_cross_attention"], "--log-interval", "4"],
        three_epochs=["--epochs", "3"], val_row=("val_top1", "*"),
        bad_args=COMMON_BAD + [(["--accum-steps", "0"], "--accum-steps"), (["--top-ratio", "1.5"], "--top-ratio")]),
    "deepfake_effnet_lstm": Spec(
        tiny=[*TINY["deepfake_effnet_lstm"], "--max-iters", "8", "--test"],
        three_epochs=["--epochs", "3", "--max-iters", "100"], val_row=("split", "val"),
        bad_args=COMMON_BAD + [(["--frames", "0"], "--frames"), (["--val-fraction", "2"], "--val-fraction")]),
    "visobert_multitask": Spec(
        tiny=TINY["visobert_multitask"],
        three_epochs=["--epochs", "3"], val_row=("split", "val"),
        bad_args=COMMON_BAD + [(["--max-len", "0"], "--max-len"), (["--w-con", "-1"], "--w-con")]),
}
PROJECTS = list(SPECS)


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """One uninterrupted tiny run per project (ckpt every step), shared by the resume tests."""
    made = {}

    def get(project):
        if project not in made:
            out = tmp_path_factory.mktemp(project) / "reference"
            ok(train(project, [*SPECS[project].tiny, "--ckpt-interval", "1", "--out", str(out)]))
            made[project] = out
        return made[project]

    return get


# ----------------------------------------------------------------------------- torchrun


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS)
def test_torchrun_three_epochs_and_final_test_match_one_process_evaluation(project, tmp_path):
    """2 processes, 3 epochs, final test on best.pt: exit 0 (train.py checks the replicas hold
    identical parameters at the end), and the test metrics equal a one-process evaluation of best.pt.
    Before: rank 1 read best.pt while rank 0 was writing it and the ranks tested different weights."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script(project),
           *SPECS[project].tiny, *SPECS[project].three_epochs, "--device", "cpu", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=ENV, cwd=REPO)
    ok(result)
    results = json.loads((out / "results.json").read_text())
    assert results["best"]["epoch"] >= 0 and len({r[1] for r in log_rows(out)[1:]}) >= 3  # 3 epochs logged
    single = importlib.import_module(f"{project}.train").evaluate_checkpoint(str(out / "best.pt"), "test", "cpu")
    assert set(single) == set(results["test"])
    for key, value in single.items():
        assert value == pytest.approx(results["test"][key], abs=1e-6, nan_ok=True), key


# ----------------------------------------------------------------------------- run folders


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS)
def test_used_run_folder_is_never_silently_reused(project, tmp_path, reference_runs):
    """An explicit used --out is refused with the choices named and left untouched; the default
    --out moves on to the next free numbered folder. (--overwrite: the caer_clip test below.)"""
    used = reference_runs(project)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in used.iterdir())
    refused = train(project, [*SPECS[project].tiny, "--out", str(used)])
    assert refused.returncode != 0
    assert "--resume" in refused.stderr and "--overwrite" in refused.stderr and "RunDirError" in refused.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in used.iterdir()) == before  # nothing touched

    for _ in range(2):
        ok(train(project, [*SPECS[project].tiny, "--max-iters", "1"], cwd=tmp_path))
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [project, f"{project}-2"]


def test_caer_rerun_that_never_validates_does_not_score_a_stale_best(tmp_path):
    """caer_clip: a re-run stopping before its first validation scored the previous run's best.pt."""
    main = importlib.import_module("caer_clip.train").main
    tiny = SPECS["caer_clip"].tiny
    first = main([*tiny, "--out", str(tmp_path / "a")])
    assert (tmp_path / "a" / "best.pt").exists() and first["test"]
    with pytest.raises(RunDirError, match="--overwrite"):
        main([*tiny, "--max-iters", "1", "--out", str(tmp_path / "a")])
    again = main([*tiny, "--max-iters", "1", "--out", str(tmp_path / "a"), "--overwrite"])
    assert not (tmp_path / "a" / "best.pt").exists()  # nothing validated: no best.pt to score
    assert again["step"] == 1


def test_lock_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename,
                                                   "started": "earlier"}))
        args = _run_namespace(out=str(run_dir), resume=str(run_dir / "last.pt"))
        with pytest.raises(RunDirError, match=f"in use by process {sleeper.pid}"):
            Run("p", args, {}, "runs/p")
    finally:
        sleeper.kill()
        sleeper.wait()
    with Run("p", args, {}, "runs/p"):  # the holder is gone: a killed run's lock
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
    assert not (run_dir / ".lock").exists()


def _run_namespace(**kw):
    import argparse

    defaults = dict(out=None, resume=None, overwrite=False, keep_checkpoints=2)
    return argparse.Namespace(**{**defaults, **kw})


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a run folder"):
        Run("p", _run_namespace(out=str(tmp_path), overwrite=True), {}, "runs/p")
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- kills and resume


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS)
def test_sigkill_between_validation_row_and_checkpoint_then_resume(project, tmp_path, reference_runs):
    """Killed right after the first validation row reached log.csv, before the checkpoint after it
    (--ckpt-interval 1: the last checkpoint is at the epoch's last step). The resumed run's log is
    the uninterrupted run's, row for row; before, the validation row appeared twice."""
    spec = SPECS[project]
    args = [*spec.tiny, "--ckpt-interval", "1"]
    run = tmp_path / "killed"
    killed = train(project, [*args, "--out", str(run)], wrapper=[HOOKS, "kill-after-row", *spec.val_row])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ok(train(project, ["--resume", str(run / "last.pt")]))
    assert_same_run(reference_runs(project), run)


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS)
def test_sigterm_saves_and_resume_equals_uninterrupted_run(project, tmp_path, reference_runs):
    """Preemption: SIGTERM during step 3 finishes the step, writes last.pt (no interval checkpoint
    is due yet: before, dual_cross_attention left none), says how to resume and exits 143 with no
    .tmp and no lock left; `--resume last.pt` alone then ends as the uninterrupted run."""
    run = tmp_path / "preempted"
    stopped = train(project, [*SPECS[project].tiny, "--out", str(run)],  # default --ckpt-interval: > 3 steps
                     wrapper=[HOOKS, "signal-at", "3", "SIGTERM"])
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert "--resume" in stopped.stdout and (run / "last.pt").exists()
    assert load_run_checkpoint(run / "last.pt", project)["progress"]["step"] == 3
    assert not list(run.glob("*.tmp")) and not (run / ".lock").exists()
    ok(train(project, ["--resume", str(run / "last.pt")]))
    assert_same_run(reference_runs(project), run)


def test_second_signal_exits_at_once(tmp_path):
    """A second SIGINT does not wait for the step: the handler raises SystemExit(130)."""
    with Run("p", _run_namespace(out=str(tmp_path / "r")), {}, "runs/p") as run:
        run.open(["step"], 1)
        os.kill(os.getpid(), signal.SIGINT)
        assert run.should_stop()
        with pytest.raises(SystemExit) as exited:
            os.kill(os.getpid(), signal.SIGINT)
        assert exited.value.code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS)
def test_resuming_a_finished_run_adds_no_rows(project, tmp_path, reference_runs):
    run = tmp_path / "finished"
    shutil.copytree(reference_runs(project), run)
    before = log_rows(run)
    ok(train(project, ["--resume", str(run / "last.pt")]))
    assert log_rows(run) == before


def test_torn_last_log_line_is_dropped_and_rows_kept_by_count(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "log.csv").write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\n4,0.")  # killed mid-row
    checkpoint = {"progress": {"step": 2, "log_rows": 2}, "model": {}, "optimizer": None, "scaler": None,
                  "best": {"metric": "", "mode": "max", "value": None, "step": -1, "epoch": -1}, "rng": [], "extra": {}}
    with Run("p", _run_namespace(out=str(run_dir), resume=str(run_dir / "last.pt")), {}, "runs/p", checkpoint) as run:
        run.restore(State(torch.nn.Module(), optimizer=None, scaler=None))
        run.open(["step", "loss"], 1)
        run.log({"step": 3, "loss": 0.25})
        with pytest.raises(KeyError, match="acc"):
            run.log({"step": 4, "acc": 0.5})  # fixed columns
    assert (run_dir / "log.csv").read_text() == "step,loss\n1,0.5\n2,0.4\n3,0.25\n"


# ----------------------------------------------------------------------------- damaged checkpoints


def _good_checkpoint(project: str) -> dict:
    return {"format": CHECKPOINT_FORMAT, "project": project, "args": {}, "config": {}, "model": {},
            "optimizer": None, "scaler": None, "progress": {"step": 0}, "best": {}, "rng": [], "extra": {}}


def _damaged(tmp_path: Path, project: str) -> list[tuple[str, Path, str]]:
    """(case, file, what the error must say) for each kind of unusable checkpoint."""
    def write(name, data):
        path = tmp_path / name
        path.write_bytes(data) if isinstance(data, bytes) else torch.save(data, path)
        return path

    other = "dual_cross_attention" if project != "dual_cross_attention" else "caer_clip"
    full = write("full.pt", {**_good_checkpoint(project), "model": {"w": torch.zeros(1000)}})
    truncated = write("truncated.pt", full.read_bytes()[: full.stat().st_size // 2])
    missing = dict(_good_checkpoint(project))
    del missing["optimizer"], missing["rng"]
    return [
        ("zero bytes", write("zero.pt", b""), "empty file"),
        ("truncated", truncated, "truncated or damaged"),
        ("garbage", write("garbage.pt", b"\x00\x01not a checkpoint at all" * 10), "not a PyTorch checkpoint"),
        ("another project", write("other.pt", _good_checkpoint(other)), f"written by '{other}'"),
        ("bare state_dict", write("bare.pt", torch.nn.Linear(2, 2).state_dict()), "bare state_dict"),
        ("missing keys", write("missing.pt", missing), r"missing keys \['optimizer', 'rng'\]"),
        ("not a dict", write("list.pt", [1, 2, 3]), "holds a list"),
    ]


@pytest.mark.parametrize("project", PROJECTS)
def test_damaged_or_foreign_checkpoint_is_refused_naming_the_file(project, tmp_path):
    """Each unusable file gives one CheckpointError naming it, through the real main(); before:
    EOFError, PytorchStreamReader errors, UnpicklingError, AttributeError, KeyError."""
    main = importlib.import_module(f"{project}.train").main
    for case, path, words in _damaged(tmp_path, project):
        with pytest.raises(CheckpointError, match=words) as caught:
            main([*SPECS[project].tiny, "--resume", str(path)])
        assert path.name in str(caught.value), case
    assert not (tmp_path / "config.json").exists()  # nothing written next to a refused checkpoint


@pytest.mark.parametrize("project", PROJECTS)
def test_other_model_shape_or_config_on_resume_is_refused_before_writing(project, tmp_path, reference_runs):
    """A checkpoint whose weights do not fit the model gives the shapes; a resume that changes an
    architecture flag is a ConfigMismatchError, and config.json is left as it was."""
    run = tmp_path / "run"
    shutil.copytree(reference_runs(project), run)
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.ndim >= 1)
    state["model"][name] = torch.zeros(*[s + 1 for s in state["model"][name].shape])
    torch.save(state, run / "reshaped.pt")
    config_before = (run / "config.json").read_text()
    with pytest.raises(CheckpointError, match=rf"reshaped\.pt.*other shapes.*{name}"):
        importlib.import_module(f"{project}.train").main(["--resume", str(run / "reshaped.pt")])
    assert (run / "config.json").read_text() == config_before


def test_model_and_optimizer_state_errors_name_the_file():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = model.state_dict()
    del state["1.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"x\.pt: .*missing 1\.bias.*unexpected extra\.weight"):
        load_model_state(model, state, "x.pt")
    two_groups = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[1].parameters()}], lr=0.1)
    one_group = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match=r"x\.pt: other optimiser layout.*\[2, 2\].*\[4\]"):
        load_optimizer_state(one_group, two_groups.state_dict(), "x.pt")


def test_caer_resume_with_image_encoder_frozen_is_a_config_mismatch(tmp_path, reference_runs):
    """Switching --freeze-image-encoder on at resume failed inside torch ('different number of
    parameter groups'); it is an explicit configuration change now."""
    run = tmp_path / "run"
    shutil.copytree(reference_runs("caer_clip"), run)
    with pytest.raises(ConfigMismatchError, match="freeze_image_encoder"):
        importlib.import_module("caer_clip.train").main(["--resume", str(run / "last.pt"), "--freeze-image-encoder"])


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("project", PROJECTS)
def test_bad_arguments_are_refused_at_parse_time(project, capsys):
    """Before: ZeroDivisionError, a silent default, a negative lr trained, `--epochs 0` reporting
    -1.0 / nan / a missing file."""
    main = importlib.import_module(f"{project}.train").main
    for argv, flag in SPECS[project].bad_args:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2, argv
        assert f"argument {flag}: must be" in capsys.readouterr().err, argv


@pytest.mark.parametrize("project", PROJECTS)
def test_help_shows_defaults_and_no_test_only_flags(project, capsys):
    with pytest.raises(SystemExit):
        importlib.import_module(f"{project}.train").main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--grad-clip", "--val-interval", "--warmup-steps", "--max-iters", "--batch-size", "--amp",
                 "--out", "--resume", "--overwrite", "--keep-checkpoints"):
        assert flag in text, flag
    for gone in ("--interrupt-after", "--stop-after", "--clip-grad", "--eval-interval", "--warmup-iters",
                 "--warmup-epochs", "--warmup-frac"):
        assert gone not in text, gone
    assert "(default: " in text


# ----------------------------------------------------------------------------- disk space


def test_failed_save_leaves_no_tmp_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic(path, {"step": 1})

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_atomic(path, {"step": 2})
    monkeypatch.undo()
    assert not (tmp_path / "last.pt.tmp").exists()
    assert torch.load(path, weights_only=True)["step"] == 1


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs of a given size (root only: mount needs it)."""
    mounts = []

    def make(megabytes: float) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root")
        target = tmp_path / f"tmpfs{len(mounts)}"
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(megabytes * 1024)}k", "tmpfs", str(target)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(target)
        return target

    yield make
    for target in mounts:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_disk_full_during_a_save_is_said_in_words(small_tmpfs):
    disk = small_tmpfs(1)
    save_atomic(disk / "last.pt", {"w": torch.zeros(16_000)})  # 64 kB
    with pytest.raises(RunDirError, match=r"last\.pt failed .*disk is full.*previous last\.pt is kept"):
        save_atomic(disk / "last.pt", {"w": torch.zeros(1_000_000)})  # 4 MB on a 1 MB disk
    assert sorted(p.name for p in disk.iterdir()) == ["last.pt"]
    assert torch.load(disk / "last.pt", weights_only=True)["w"].numel() == 16_000


@pytest.mark.slow
def test_nearly_full_disk_stops_a_training_run_with_words_and_no_tmp(small_tmpfs, tmp_path):
    """dual_cross_attention on a disk with room for about two checkpoints: the start-up check
    passes, a later save is refused before writing, the previous checkpoint stays loadable."""
    tiny = [*SPECS["dual_cross_attention"].tiny, "--embed-dim", "128", "--depth", "4"]  # ~10 MB checkpoints
    probe = tmp_path / "probe"
    ok(train("dual_cross_attention", [*tiny, "--max-iters", "1", "--out", str(probe)]))
    size_mb = (probe / "last.pt").stat().st_size / 2**20
    assert size_mb > 4, "the margins below need checkpoints of several MB"
    disk = small_tmpfs(2.6 * size_mb + 1.2)
    run = disk / "run"
    result = train("dual_cross_attention", [*tiny, "--ckpt-interval", "1", "--out", str(run)])
    assert result.returncode != 0
    assert "RunDirError" in result.stderr and "MB are free" in result.stderr, result.stderr[-2000:]
    assert not list(run.glob("*.tmp"))
    load_run_checkpoint(run / "last.pt", "dual_cross_attention")  # the previous one, intact


# ----------------------------------------------------------------------------- edges found in review


def _resumed(step: int, world_size: int = 1) -> dict:
    return {"progress": {"step": step, "log_rows": 0, "world_size": world_size}, "config": {"seed": 0},
            "model": {}, "optimizer": None,
            "scaler": None, "best": {"metric": "", "mode": "max", "value": 0.5, "step": step, "epoch": 0},
            "rng": [], "extra": {}}


def test_overwrite_deletes_the_old_run_only_once_the_new_one_has_started(tmp_path, reference_runs):
    """caer_clip with --overwrite and a wrong --data-root: the DataError comes before anything of
    the old run is deleted (it was deleted first, and the empty folder removed)."""
    run = tmp_path / "run"
    shutil.copytree(reference_runs("caer_clip"), run)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(Exception, match="nowhere"):
        importlib.import_module("caer_clip.train").main(
            [*SPECS["caer_clip"].tiny, "--out", str(run), "--overwrite", "--data-root", str(tmp_path / "nowhere")])
    assert sorted(p.name for p in run.iterdir()) == before


def test_resume_into_another_used_folder_is_refused(tmp_path):
    source, other = tmp_path / "a", tmp_path / "b"
    for folder, seed in ((source, 0), (other, 7)):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"seed": seed}))
    with pytest.raises(RunDirError, match="already holds a run"):
        Run("p", _run_namespace(out=str(other), resume=str(source / "last.pt")), {}, "runs/p", _resumed(3))
    with Run("p", _run_namespace(resume=str(source / "last.pt")), {}, "runs/p", _resumed(3)) as run:
        assert run.dir == source  # --out left unset: the checkpoint's own folder


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    with pytest.raises(ConfigMismatchError, match="written by 2 process.*torchrun --nproc_per_node 2"):
        Run("p", _run_namespace(out=str(tmp_path), resume=str(tmp_path / "last.pt")), {}, "runs/p", _resumed(3, 2))
    assert not (tmp_path / ".lock").exists()


def test_resuming_an_older_periodic_checkpoint_drops_the_abandoned_branch(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    for step in (100, 200, 300):
        torch.save({"step": step}, run_dir / f"step{step:07d}.pt")
    torch.save({"best": {"step": 300}}, run_dir / "best.pt")
    resumed = _resumed(200)
    with Run("p", _run_namespace(out=str(run_dir), resume=str(run_dir / "step0000200.pt")), {}, "runs/p",
             resumed) as run:
        run.restore(State(torch.nn.Module(), optimizer=None, scaler=None))
        run.open(["step"], 1)
        assert run.best["value"] is None  # its best.pt was from the abandoned branch
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["step0000100.pt", "step0000200.pt"]


def test_the_lifecycle_docstring_example_runs(tmp_path, monkeypatch):
    """common/lifecycle.py opens with a whole run; it must run as written."""
    import common.lifecycle as lifecycle

    doc = lifecycle.__doc__
    block = doc[doc.index("    import argparse"):doc.index("\nWhat it keeps")]
    monkeypatch.chdir(tmp_path)
    exec("\n".join(line[4:] for line in block.splitlines()), {})
    rows = (tmp_path / "runs" / "demo" / "log.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,loss" and len(rows) == 4
    assert {"best.pt", "last.pt", "results.json", "config.json"} <= {p.name for p in (tmp_path / "runs/demo").iterdir()}


def test_a_damaged_best_pt_stops_a_step_resume_before_anything_is_deleted(tmp_path):
    """Resuming step<N>.pt must know whether best.pt is from a later step; a damaged best.pt is an
    error naming it, and the later step<M>.pt is still there (it was deleted before the read)."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    for step in (100, 200, 300):
        torch.save({"step": step}, run_dir / f"step{step:07d}.pt")
    (run_dir / "best.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match="best.pt"):
        with Run("p", _run_namespace(out=str(run_dir), resume=str(run_dir / "step0000200.pt")), {}, "runs/p",
                 _resumed(200)) as run:
            run.open(["step"], 1)
    assert (run_dir / "step0000300.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS)
def test_a_stop_signal_during_the_final_test_is_not_swallowed(project, tmp_path):
    """SIGTERM as the final test begins: the test finishes, results.json is written, a line says
    so, and the exit status is 143 (before: exit 0, as if nothing had happened)."""
    run = tmp_path / "r"
    stopped = train(project, [*SPECS[project].tiny, "--out", str(run)], wrapper=[HOOKS, "signal-at-test", "SIGTERM"])
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert "SIGTERM received during the final test" in stopped.stdout
    assert (run / "results.json").is_file() and not (run / ".lock").exists()


@pytest.mark.parametrize("project", PROJECTS)
def test_a_device_this_machine_lacks_is_one_error_before_anything_is_written(project, tmp_path):
    """`--device cuda:99`: a DeviceError naming the device and the count (run_cli prints it as one
    line), raised before the run folder exists; the flag itself parses, so a GPU machine's command
    line can be checked anywhere (gpu_check.py --dry-run)."""
    from common.runtime import DeviceError

    main = importlib.import_module(f"{project}.train").main
    with pytest.raises(DeviceError, match="cuda:99 asked for, but this machine has"):
        main([*SPECS[project].tiny, "--device", "cuda:99", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_a_better_validation_replaces_best_pt_and_a_worse_one_does_not(tmp_path, monkeypatch):
    """Through caer_clip's real main(): validation UAR 0.5, 0.7, 0.6 over three epochs (a stand-in for
    evaluate() with known scores). best.pt must hold epoch 1's weights (0.7 replaced 0.5; 0.6 did not
    replace 0.7), and the final test scores it. With the comparison reversed, best.pt would stay at
    epoch 0 (or move to epoch 2)."""
    from caer_clip import train as caer_train

    real_evaluate, scripted, seen = caer_train.evaluate, iter([0.5, 0.7, 0.6]), []

    def scripted_evaluate(model, loader, cfg):
        metrics = real_evaluate(model, loader, cfg)
        if len(seen) < 3:  # the three validations; then the final test, as it is
            seen.append(next(scripted))
            metrics = {**metrics, "uar": seen[-1], "war": seen[-1]}
        return metrics

    monkeypatch.setattr(caer_train, "evaluate", scripted_evaluate)
    run = tmp_path / "r"
    results = caer_train.main([*SPECS["caer_clip"].tiny, "--epochs", "3", "--out", str(run)])
    assert results["best"]["value"] == 0.7 and results["best"]["epoch"] == 1
    best = load_run_checkpoint(run / "best.pt", "caer_clip")
    assert best["best"]["value"] == 0.7 and best["progress"]["step"] == results["best"]["step"]
    steps = [int(r[0]) for r in log_rows(run)[1:] if r[log_rows(run)[0].index("val_uar")]]
    assert best["progress"]["step"] == steps[1]  # the second validation's step, not the first or the third
