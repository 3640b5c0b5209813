"""gpu_check.py on the CPU (--dry-run), and the --amp modes it relies on."""

import pytest
import torch

import gpu_check
from common.runtime import autocast_dtype, make_grad_scaler


def test_dry_run_parses_every_command_with_its_own_parser(tmp_path):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "parsed" in line]
    assert len(rows) == len(gpu_check.PROJECTS) * len(gpu_check.KINDS)
    for project in gpu_check.PROJECTS:
        assert f"{project}/train.py --amp fp16" in report and f"{project}/bench.py" in report
        assert f"{project}-compile --overwrite --compile" in report  # the bf16 demo compiled (optimiser fused)
    assert "--nproc_per_node=" in report


def test_dry_run_names_the_step_whose_flags_a_script_refuses(tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.BENCH_FLAGS, "dual_cross_attention", ["--no-such-flag"])
    with pytest.raises(SystemExit, match="dual_cross_attention bench: .*refused by its parser"):
        gpu_check.main(["--dry-run", "--only", "dual_cross_attention", "--skip", "torchrun", "--out", str(tmp_path)])


def test_without_cuda_a_real_run_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path)])
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.parametrize("bf16_supported", [True, False])
def test_amp_modes_pick_the_dtype_asked_for(monkeypatch, bf16_supported):
    """--amp auto / bf16 / fp16 / --no-amp on a (pretended) CUDA device; CPU is always fp32."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    cuda = torch.device("cuda")
    assert autocast_dtype(cuda, "fp16") is torch.float16
    assert autocast_dtype(cuda, "auto") is autocast_dtype(cuda, True)
    assert autocast_dtype(cuda, "auto") is (torch.bfloat16 if bf16_supported else torch.float16)
    assert autocast_dtype(cuda, "off") is None and autocast_dtype(cuda, False) is None
    assert autocast_dtype(torch.device("cpu"), "fp16") is None
    if bf16_supported:
        assert autocast_dtype(cuda, "bf16") is torch.bfloat16
    else:
        with pytest.raises(RuntimeError, match="--amp fp16"):
            autocast_dtype(cuda, "bf16")
    with pytest.raises(ValueError, match="expected one of"):
        autocast_dtype(cuda, "fp8")
    assert make_grad_scaler(torch.device("cpu"), torch.float16).is_enabled()
    assert not make_grad_scaler(torch.device("cpu"), torch.bfloat16).is_enabled()


def test_amp_flag_values_reach_the_run_args():
    from visobert_multitask.train import build_parser

    parser = build_parser()
    assert [parser.parse_args(a).amp for a in ([], ["--amp"], ["--amp", "fp16"], ["--no-amp"])] == \
        ["auto", "auto", "fp16", "off"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--amp", "fp8"])
