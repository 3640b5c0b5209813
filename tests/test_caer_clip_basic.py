"""caer_clip: shapes of the CLIP towers, the model and the data, and a few-step run of train.py."""

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from caer_clip.clip import CLIP, WordTokenizer, tiny_config
from caer_clip.data import DataConfig, SyntheticClips
from caer_clip.train import evaluate_checkpoint, main
from tests.fixtures_caer_clip import TINY_TRAIN, clip_batch, tiny_model


def test_clip_towers_shapes():
    cfg = tiny_config()
    model = CLIP(cfg)
    tokens = WordTokenizer(["a face", "a room"], cfg.context_length, cfg.vocab_size)(["a face", "a room"])
    assert tokens.shape == (2, cfg.context_length)
    assert model.encode_image(torch.randn(3, 3, 32, 32)).shape == (3, cfg.embed_dim)
    assert model.encode_text(tokens).shape == (2, cfg.embed_dim)


def test_text_encoder_is_causal():
    """A word after position i must not change the features read at i (causal mask)."""
    cfg = tiny_config()
    model = CLIP(cfg).eval()
    embeds = model.token_embedding(torch.randint(2, 50, (1, cfg.context_length)))
    changed = embeds.clone()
    changed[:, 10:] += 1.0
    tokens = torch.zeros(1, cfg.context_length, dtype=torch.long)
    tokens[0, 5] = cfg.vocab_size - 1  # EOT at position 5
    torch.testing.assert_close(model.encode_text_embeddings(embeds, tokens),
                               model.encode_text_embeddings(changed, tokens))


@pytest.mark.parametrize("temporal,use_context", [("cls", True), ("attn", False)])
def test_model_output_shapes(temporal, use_context):
    model = tiny_model(temporal=temporal, use_context=use_context)
    face, context = clip_batch(batch=3)
    out = model(face, context)
    assert out["logits"].shape == (3, 5)
    assert out["video"].shape == (3, 64)
    assert out["text"].shape == out["handcrafted"].shape == (5, 64)
    torch.testing.assert_close(out["video"].norm(dim=-1), torch.ones(3))


def test_synthetic_sample_shapes():
    data = SyntheticClips(5, DataConfig(), num_frames=4, image_size=32, train=True, seed=0, split_seed=1)
    face, context, label, fallbacks = data[3]
    assert face.shape == context.shape == (4, 3, 32, 32)
    assert label == 3 and fallbacks == 0


@pytest.mark.slow
def test_train_smoke_writes_run_folder(tmp_path):
    summary = main(TINY_TRAIN + ["--out", str(tmp_path / "run")])
    run = tmp_path / "run"
    for name in ("config.json", "log.csv", "last.pt", "best.pt", "confusion_test.csv"):
        assert (run / name).is_file(), name
    if importlib.util.find_spec("matplotlib") is not None:
        assert (run / "confusion_test.png").is_file()
    assert json.loads((run / "config.json").read_text())["train"]["batch_size"] == 4
    assert 0.0 <= summary["test"]["uar"] <= 1.0 and summary["step"] == 5
    assert set(summary) >= {"run_dir", "step", "best", "val", "test"}
    assert evaluate_checkpoint(run / "best.pt", "test") == summary["test"]  # the final test scored best.pt


def test_model_files_copy_alone_and_tools_do_not_import_train(tmp_path):
    """model.py and clip.py copied into an empty folder build the model and run a forward there, with
    `common` unimportable; their imports are torch, torchvision, einops, numpy, the standard library and
    each other (open_clip only inside the functions that load its weights). No tool imports train.py."""
    project = Path(__file__).resolve().parents[1] / "caer_clip"
    allowed = {"torch", "torchvision", "einops", "numpy", "caer_clip", "__future__", *sys.stdlib_module_names}
    (tmp_path / "caer_clip").mkdir()
    for name in ("model.py", "clip.py"):
        shutil.copy(project / name, tmp_path / "caer_clip" / name)
        tree = ast.parse((project / name).read_text())
        for node in ast.walk(tree):
            names = [node.module] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            lazy = node not in tree.body  # inside a function
            assert all(n.split(".")[0] in allowed | ({"open_clip"} if lazy else set()) for n in names), (name, names)
            assert not any(n.startswith("caer_clip.") and n not in ("caer_clip.clip", "caer_clip.model")
                           for n in names), (name, names)
    script = textwrap.dedent("""
        import sys
        sys.modules["common"] = None  # not importable in the copy
        import torch
        from caer_clip.clip import CLIP, WordTokenizer, tiny_config
        from caer_clip.model import ModelConfig, build_model
        model = build_model(ModelConfig(num_classes=2, moco_queue=8), CLIP(tiny_config()),
                            WordTokenizer(["a calm face", "a smiling face", "x", "a photo of ."]),
                            [["a calm face"], ["a smiling face"]])
        assert model(torch.randn(2, 4, 3, 32, 32), torch.randn(2, 4, 3, 32, 32))["logits"].shape == (2, 2)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for tool in ("predict.py", "bench.py", "ablate.py", "plots.py"):
        tree = ast.parse((project / tool).read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "caer_clip.train" not in modules and "train" not in modules, tool


@pytest.mark.parametrize("moco_queue", [0, 8])
def test_caer_bench_step_breakdown_runs_with_and_without_moco(moco_queue, capsys):
    """CAER-BENCH-QUEUE: bench.py's training step at the default model (no MoCo queue) raised
    AttributeError on model.queue, so the bench never reached its step breakdown."""
    from caer_clip.bench import step_breakdown
    from caer_clip.model import ModelConfig

    texts = ["a calm face", "a smiling face", "x", "a photo of ."]
    step_breakdown("tiny", ModelConfig(num_frames=2, moco_queue=moco_queue), CLIP(tiny_config()),
                   WordTokenizer(texts, tiny_config().context_length, tiny_config().vocab_size), 2,
                   torch.device("cpu"), 1)
    assert "ms/step" in capsys.readouterr().out
