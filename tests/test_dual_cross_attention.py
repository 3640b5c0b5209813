"""DCAL model and train.py: shapes, gradients, smoke run."""

import csv

import pytest
import torch

from dual_cross_attention.model import DCAL, derangement
from dual_cross_attention.train import main
from tests.fixtures_dual_cross_attention import tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)


def test_forward_shapes_all_branches():
    model = DCAL(tiny_cfg())
    out = model(torch.randn(4, 3, 16, 16), partner=derangement(4), need_rollout=True)
    assert out["sa"].shape == out["glca"].shape == out["pwca"].shape == (4, 5)
    assert out["rollout"].shape == (4, 17, 17)


def test_plain_vit_has_no_extra_branches():
    model = DCAL(tiny_cfg(glca=False, pwca=False))
    out = model(torch.randn(2, 3, 16, 16))
    assert set(out) == {"sa"} and model.loss_weighting is None
    assert not any(name.startswith("glca") for name, _ in model.named_parameters())


def test_derangement_has_no_fixed_point():
    for n in (2, 3, 7, 16):
        for seed in range(5):
            partner = derangement(n, generator=torch.Generator().manual_seed(seed))
            assert sorted(partner.tolist()) == list(range(n))
            assert (partner != torch.arange(n)).all()
    with pytest.raises(ValueError):
        derangement(1)


def test_every_parameter_gets_a_gradient():
    model = DCAL(tiny_cfg())
    out = model(torch.randn(4, 3, 16, 16), partner=derangement(4))
    y = torch.randint(0, 5, (4,))
    losses = [torch.nn.functional.cross_entropy(out[k], y) for k in ("sa", "glca", "pwca")]
    model.loss_weighting(losses).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_train_smoke_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    summary = main(["--synthetic-train", "64", "--synthetic-val", "32", "--synthetic-test", "32", "--batch-size", "16",
                    "--epochs", "1", "--out", str(out), "--log-interval", "1", "--synthetic-classes", "4",
                    "--pretrained", "none"])
    # the split sizes are printed at the start, as the other three projects do
    assert "data: synthetic fine-grained set: train 64, val 32, test 32 images, 4 classes" in capsys.readouterr().out
    assert {"config.json", "log.csv", "last.pt", "best.pt", "results.json"} <= {p.name for p in out.iterdir()}
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert rows[0]["step"] == "1" and rows[-1]["val_top1"] != ""
    assert 0.0 <= summary["val"]["top1"] <= 1.0 and 0.0 <= summary["test"]["top1"] <= 1.0 and summary["step"] == 4
