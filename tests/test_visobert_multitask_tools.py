"""visobert_multitask bench.py and visualize.py: measured numbers, real module shapes, matplotlib optional."""

import sys

import pytest

from visobert_multitask import bench, visualize

SMALL = ["--batch-size", "4", "--seq-len", "8", "--iters", "1"]


@pytest.mark.slow
def test_bench_reports_both_steps_for_the_tiny_config(capsys):
    results = bench.main(["--configs", "tiny", "--warmup", "0", "--no-compile", *SMALL])  # compile: minutes
    r = results["tiny"]
    assert r["one_ms"] > 0 and r["two_ms"] > 0 and r["ratio"] == pytest.approx(r["one_ms"] / r["two_ms"])
    assert r["one_tok_s"] > 0 and "ratio" in capsys.readouterr().out
    assert r["fused_over_plain"] > 0 and r["foreach_over_plain"] > 0


@pytest.mark.slow
def test_visualize_records_real_shapes_and_writes_pictures(tmp_path):
    pytest.importorskip("matplotlib", reason="the pictures need matplotlib")
    out = visualize.main(["--out", str(tmp_path), *SMALL])
    shapes = dict((name, shape) for name, _, shape in out["records"])
    assert shapes["encoder.layers.1"] == (4, 8, 128) and shapes["logits"] == (4, 10, 4)
    assert shapes["embeddings"] == (4, 256)
    assert set(out["times"]) == {"encoder", "heads", "losses", "backward", "optimizer step"}
    assert all(ms > 0 for ms in out["times"].values())
    # one measurement in both pictures. The timeline's stages add up to the bar chart's one-pass
    # step (they were two measurements: 47.0 ms on one picture, 72.0 ms on the other, for one run).
    assert sum(out["times"].values()) == pytest.approx(out["comparison"]["one_ms"], rel=1e-9)
    assert out["comparison"]["ratio"] == pytest.approx(out["comparison"]["one_ms"] / out["comparison"]["two_ms"])
    for path in out["files"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_visualize_without_matplotlib_prints_the_numbers(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = visualize.main(["--out", str(tmp_path / "figs"), *SMALL])
    printed = capsys.readouterr().out
    assert out["files"] == [] and "pip install matplotlib" in printed
    assert sum(out["times"].values()) == pytest.approx(out["comparison"]["one_ms"], rel=1e-9)
    assert f"one-pass step {out['comparison']['one_ms']:.1f} ms (the stages above)" in printed
    assert "encoder.layers.0" in printed and "optimizer step" in printed and "two-pass step" in printed
    assert not (tmp_path / "figs").exists()


@pytest.mark.slow
def test_visualize_reads_a_train_checkpoint(tmp_path, monkeypatch, capsys):
    """visualize.py --checkpoint takes the model config and weights from a train.py run checkpoint."""
    from common.checkpoint import CheckpointError
    from visobert_multitask.train import main as train

    train(["--synthetic-train", "32", "--synthetic-val", "8", "--synthetic-test", "8", "--hidden", "32", "--layers",
           "1", "--heads", "2", "--intermediate", "64", "--batch-size", "16", "--epochs", "1", "--device", "cpu",
           "--out", str(tmp_path / "run")])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = visualize.main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "figs"), *SMALL])
    shapes = dict((name, shape) for name, _, shape in out["records"])
    assert shapes["encoder.layers.0"] == (4, 8, 32) and "encoder.layers.1" not in shapes
    # without --batch-size / --seq-len the measured step has the run's shape (batch 16, max-len 64),
    # and the text says so; it said "32 x 32 tokens" for any checkpoint.
    capsys.readouterr()
    out = visualize.main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "figs"),
                          "--iters", "1"])
    shapes = dict((name, shape) for name, _, shape in out["records"])
    assert shapes["encoder.layers.0"] == (16, 64, 32) and "batch 16 x 64 tokens" in out["source"]
    (tmp_path / "bare.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="bare.pt"):
        visualize.main(["--checkpoint", str(tmp_path / "bare.pt"), *SMALL])


def test_no_tool_imports_train_py():
    """The tools stand beside the loop: predict, bench, visualize and ablate import model.py, data.py,
    losses.py and common/, never train.py (whose helpers may then be renamed freely)."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "visobert_multitask"
    for tool in ("predict.py", "bench.py", "visualize.py", "ablate.py"):
        tree = ast.parse((folder / tool).read_text(encoding="utf-8"))
        imported = set()  # every dotted name the tool imports: `from a import b` counts as a and a.b
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        assert "visobert_multitask.train" not in imported, tool
