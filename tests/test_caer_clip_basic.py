"""caer_clip: shapes of the CLIP towers, the model and the data, and a few-step run of train.py."""

import importlib.util
import json

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
