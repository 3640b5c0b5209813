"""common/runtime.py: RNG, checks, sampler and distributed helpers (checkpoints: test_lifecycle.py)."""

import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from caer_clip.train import loss_shares
from common.checkpoint import load_model_state, load_optimizer_state, save_atomic
from common.cli import check_resume_config
from common.runtime import (
    ConfigMismatchError,
    DataError,
    EpochSampler,
    NonFiniteLossError,
    check_finite,
    decay_param_groups,
    rng_state,
    sample_generator,
    set_rng_state,
)

REPO = Path(__file__).resolve().parents[1]


def _model_and_optimizer():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_roundtrip_restores_parameters_optimizer_and_rng(tmp_path):
    model, opt = _model_and_optimizer()
    seed_draws = (random.random(), np.random.rand(), torch.rand(1))  # advance all streams
    del seed_draws
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7, "rng": rng_state(),
             "config": {"width": 8}}
    save_atomic(tmp_path / "last.pt", state)
    expected_next = (random.random(), np.random.rand(), torch.rand(3))

    model2, opt2 = _model_and_optimizer()
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)
    load_model_state(model2, loaded["model"], "last.pt")
    load_optimizer_state(opt2, loaded["optimizer"], "last.pt")
    set_rng_state(loaded["rng"])
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for sa, sb in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert loaded["step"] == 7 and loaded["config"] == {"width": 8}
    got_next = (random.random(), np.random.rand(), torch.rand(3))
    assert got_next[0] == expected_next[0] and got_next[1] == expected_next[1]
    assert torch.equal(got_next[2], expected_next[2])


def test_config_mismatch_names_the_differing_keys_nested_or_flat():
    saved = {"model": {"num_classes": 5, "width": 64}, "train": {"lr": 0.1}}
    with pytest.raises(ConfigMismatchError, match="num_classes: checkpoint=5 now=7"):
        check_resume_config({"config": saved}, {"model": {"num_classes": 7, "width": 64}, "train": {"lr": 0.1}},
                            ["num_classes", "model.width"], "last.pt")
    check_resume_config({"config": saved}, {"model": {"num_classes": 5, "width": 64}, "train": {"lr": 0.2}},
                        ["num_classes", "model.width"], "last.pt")  # the lr may change


def test_check_finite_names_the_bad_component():
    check_finite({"ce": torch.tensor(1.0), "dc": torch.tensor(0.5)})
    with pytest.raises(NonFiniteLossError, match=r"dc=nan") as err:
        check_finite({"ce": torch.tensor(1.0), "dc": torch.tensor(float("nan")), "mi": torch.tensor(2.0)}, step=12)
    assert "ce" not in str(err.value) and "step 12" in str(err.value)
    with pytest.raises(NonFiniteLossError, match="mi=inf"):
        check_finite({"mi": torch.tensor(float("inf"))})


def test_loss_balance_monitor_warns_when_auxiliary_swamps_main():
    """Seed 000: an auxiliary loss weighted 5 stays far above CE; the monitor says so."""
    monitor = {"streak": {}, "warned": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            loss_shares({"ce": 1.6, "dc": 5 * 0.9}, monitor, main="ce", patience=3)
        assert not caught
        shares = loss_shares({"ce": 1.6, "dc": 5 * 0.9}, monitor, main="ce", patience=3)
    assert len(caught) == 1 and "'dc'" in str(caught[0].message)
    assert shares["share_dc"] == pytest.approx(4.5 / 6.1)
    balanced = {"streak": {}, "warned": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(10):
            loss_shares({"ce": 1.6, "dc": 0.1}, balanced, main="ce", patience=3)
    assert not caught


def test_epoch_sampler_deterministic_sharded_and_resumable():
    full = list(EpochSampler(11, 2, seed=5, drop_last=True).__iter__())
    assert len(full) == 10 and len(set(full)) == 10
    s = EpochSampler(11, 2, seed=5)
    s.set_epoch(0)
    assert list(s) == full
    s.set_epoch(0, start_batch=2)
    assert list(s) == full[4:]
    s.set_epoch(1)
    assert list(s) != full
    shards = [list(EpochSampler(11, 2, seed=5, rank=r, world_size=2)) for r in range(2)]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1])
    evals = [list(EpochSampler(11, 4, shuffle=False, rank=r, world_size=2, drop_last=False)) for r in range(2)]
    assert sorted(evals[0] + evals[1]) == list(range(11))
    with pytest.raises(DataError, match="empty"):
        EpochSampler(0, 2)


def test_sample_generator_depends_only_on_seed_epoch_index():
    a = torch.rand(3, generator=sample_generator(1, 2, 3))
    assert torch.equal(a, torch.rand(3, generator=sample_generator(1, 2, 3)))
    assert not torch.equal(a, torch.rand(3, generator=sample_generator(1, 2, 4)))


def test_decay_param_groups_excludes_norms_biases_and_tokens():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = torch.nn.Parameter(torch.zeros(1, 4, 8))
            self.proj = torch.nn.Linear(8, 8)
            self.norm = torch.nn.LayerNorm(8)
            self.loss_weights = torch.nn.Parameter(torch.zeros(3))

    decay, no_decay = decay_param_groups(Tiny(), 0.05)
    assert [p.shape for p in decay["params"]] == [torch.Size([8, 8])]
    assert len(no_decay["params"]) == 5 and no_decay["weight_decay"] == 0.0


@pytest.mark.slow
def test_distributed_helpers_under_torchrun(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "scripts" / "dist_check.py"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted(report["indices"]) == sorted(set(report["indices"])) and len(report["indices"]) == 12
    assert report["gathered"] == [0.0, 1.0, 2.0, 10.0, 11.0]
    assert report["mean"] == pytest.approx(0.5)
    assert report["params_equal"] and report["divergence_detected"]
    assert (tmp_path / "rank0_was_main.txt").read_text() == "True"
    assert (tmp_path / "rank1_was_main.txt").read_text() == "False"
    for rank in (0, 1):  # destroy_process_group joined gloo's threads (see setup_distributed)
        threads = json.loads((tmp_path / f"rank{rank}_threads.json").read_text())
        assert not [t for t in threads if "gloo" in t], threads


def test_model_field_comments_become_help_with_checks_attached_by_the_caller(tmp_path, monkeypatch):
    """A copyable model file declares plain fields with a comment each (no common.cli import);
    add_args turns the comment, continued lines included, into --help and attaches the checks."""
    import argparse
    import importlib.util

    from common.cli import add_args, at_least, from_args

    source = tmp_path / "copied_model.py"
    source.write_text(
        "from dataclasses import dataclass\n\n\n@dataclass\nclass ModelConfig:\n"
        "    depth: int = 12  # transformer blocks\n"
        "    mode: str = \"gate\"  # where the map comes from:\n"
        "                        # the gate or none (10% of the width)\n"
        "    # a comment of its own, not the help of `mode`\n"
        "    derived: int = 0\n")
    spec = importlib.util.spec_from_file_location("copied_model", source)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "copied_model", module)  # as an import would
    spec.loader.exec_module(module)
    parser = argparse.ArgumentParser()
    add_args(parser, module.ModelConfig, "model", checks={"depth": at_least(1), "mode": ["gate", "none"]},
             exclude=["derived"])
    text = " ".join(parser.format_help().split())  # argparse wraps long help
    assert "transformer blocks (default: 12)" in text
    assert "where the map comes from: the gate or none (10% of the width)" in text
    assert "--derived" not in text
    assert from_args(module.ModelConfig, parser.parse_args(["--depth", "3"])).depth == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--depth", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "cbam"])
