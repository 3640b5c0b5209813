"""--compile (common.runtime.compile_model) through each project's real train.py: a few compiled
training steps log the eager steps' losses, and a run saved with --compile resumes exactly with it
and continues without it.

Inductor, torch.compile's default backend, writes and builds C++ kernels: 50 to 200 s per tiny model on
a loaded 2-core CPU (each README's bench). So dual_cross_attention alone goes through inductor, in its
own processes (its drop path off: inductor draws random numbers with its own kernels, not eager's).
visobert_multitask, and dual_cross_attention with gradient checkpointing, go through `aot_eager` in
this process: the same graph capture (dynamo) and traced backward (AOT autograd), run with eager
kernels. caer_clip and deepfake_effnet_lstm go through `eager`: dynamo's graph capture alone (AOT
autograd's trace of EfficientNet-B0 took 150 s of this file's 6 min). Both keep eager's dropout draws.
"""

from __future__ import annotations

import functools
import importlib
import shutil
import signal

import pytest
import torch

from tests.run_helpers import assert_same_run, log_rows, ok, train, weights
from tests.test_lifecycle import HOOKS, SPECS

try:  # inductor needs a C++ compiler for CPU kernels
    from torch._inductor.cpp_builder import get_cpp_compiler

    get_cpp_compiler()
except Exception as e:  # noqa: BLE001  (any reason inductor cannot build is a reason to skip)
    pytest.skip(f"torch.compile's inductor cannot run here: {type(e).__name__}: {e}", allow_module_level=True)

pytestmark = pytest.mark.slow
STEPS = ["--max-iters", "3", "--log-interval", "1"]  # a few logged steps (overrides a spec's --max-iters)
DCAL = [*SPECS["dual_cross_attention"].tiny, "--drop-path", "0", "--ckpt-interval", "1"]


def train_losses(run_dir) -> list[float]:
    header, *rows = log_rows(run_dir)
    loss, split = header.index("loss"), header.index("split") if "split" in header else None
    return [float(r[loss]) for r in rows if r[loss] and (split is None or r[split] == "train")]


@pytest.fixture(scope="module")
def dcal_compiled(tmp_path_factory):
    """dual_cross_attention with --compile (inductor), a checkpoint every step: the reference of both tests."""
    out = tmp_path_factory.mktemp("dcal") / "compiled"
    ok(train("dual_cross_attention", [*DCAL, "--compile", "--out", str(out)]))
    return out


@pytest.mark.parametrize("project,backend,flags", [
    ("caer_clip", "eager", SPECS["caer_clip"].tiny),
    ("deepfake_effnet_lstm", "eager", SPECS["deepfake_effnet_lstm"].tiny),
    ("visobert_multitask", "aot_eager", SPECS["visobert_multitask"].tiny),
    ("dual_cross_attention", "aot_eager", [*DCAL, "--grad-checkpoint"])])  # checkpointed blocks traced by dynamo
def test_compiled_steps_log_the_eager_losses(project, backend, flags, tmp_path, monkeypatch):
    main = importlib.import_module(f"{project}.train").main
    main([*flags, *STEPS, "--out", str(tmp_path / "eager")])
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    torch._dynamo.reset()
    main([*flags, *STEPS, "--compile", "--out", str(tmp_path / "compiled")])
    eager, compiled = train_losses(tmp_path / "eager"), train_losses(tmp_path / "compiled")
    assert len(eager) >= 3 and compiled == pytest.approx(eager, rel=1e-4)


def test_compiled_steps_log_the_eager_losses_inductor(tmp_path, dcal_compiled):
    ok(train("dual_cross_attention", [*DCAL, "--out", str(tmp_path / "eager")]))
    eager, compiled = train_losses(tmp_path / "eager"), train_losses(dcal_compiled)
    assert len(eager) >= 3 and compiled == pytest.approx(eager, rel=1e-4)


def test_run_saved_with_compile_resumes_exactly_with_it_and_continues_without(tmp_path, dcal_compiled):
    """Stopped at step 3 (SIGTERM), `--resume last.pt --compile` ends bit-identical to the uninterrupted
    compiled run; `--resume last.pt` alone (--compile is not taken from a checkpoint) runs eager to the
    end on the same weights' keys."""
    run = tmp_path / "stopped"
    stopped = train("dual_cross_attention", [*DCAL, "--compile", "--ckpt-interval", "0", "--out", str(run)],
                    wrapper=[HOOKS, "signal-at", "3", "SIGTERM"])
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    shutil.copytree(run, tmp_path / "eager")
    ok(train("dual_cross_attention", ["--resume", str(run / "last.pt"), "--compile"]))
    assert_same_run(dcal_compiled, run)
    ok(train("dual_cross_attention", ["--resume", str(tmp_path / "eager" / "last.pt")]))
    assert weights(tmp_path / "eager" / "last.pt").keys() == weights(dcal_compiled / "last.pt").keys()
    assert len(log_rows(tmp_path / "eager")) == len(log_rows(dcal_compiled))
