"""visobert_multitask model: shapes, gradients, XLM-R layout against transformers, key map."""

import pytest
import torch

from visobert_multitask.model import AspectSentimentModel, ModelConfig, hf_key_map, load_hf_encoder

TINY = dict(vocab_size=50, hidden=32, layers=2, heads=4, intermediate=64, max_positions=34, num_aspects=5,
            head_hidden=24, proj_dim=16)


def batch(b=3, t=12, vocab=50, pad=1):
    ids = torch.randint(4, vocab, (b, t))
    ids[:, 0] = 0
    lengths = torch.tensor([t, t - 4, 5])[:b]
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return ids.masked_fill(~mask, pad), mask


def test_shapes_and_unit_embeddings():
    model = AspectSentimentModel(ModelConfig(**TINY))
    ids, mask = batch()
    logits, emb = model(ids, mask, return_embeddings=True)
    assert logits.shape == (3, 5, model.cfg.num_states) and emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert model(ids, mask).shape == logits.shape


def test_padding_does_not_change_real_tokens():
    """Positions count real tokens only, and padded keys are masked: extra padding is invisible."""
    model = AspectSentimentModel(ModelConfig(**TINY)).eval()
    ids, mask = batch()
    padded_ids = torch.cat([ids, torch.ones(3, 6, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 6, dtype=torch.bool)], dim=1)
    h = model.encoder(ids, mask)
    h_padded = model.encoder(padded_ids, padded_mask)[:, :12]
    torch.testing.assert_close(h[mask], h_padded[mask])


def test_every_parameter_gets_a_gradient():
    model = AspectSentimentModel(ModelConfig(**TINY))
    ids, mask = batch()
    logits, emb = model(ids, mask, return_embeddings=True)
    (logits.square().mean() + emb.sum()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


def _hf_model(add_pooler=True):
    transformers = pytest.importorskip("transformers", reason="the XLM-R comparison needs transformers")
    config = transformers.XLMRobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=64, max_position_embeddings=34, type_vocab_size=1,
                                           pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
                                           attn_implementation="eager")
    return transformers.XLMRobertaModel(config, add_pooling_layer=add_pooler).eval()


@pytest.mark.slow  # importing transformers takes seconds
def test_matches_transformers_xlmr_hidden_states_with_padding():
    hf = _hf_model()
    model = AspectSentimentModel(ModelConfig(**TINY)).eval()
    skipped = load_hf_encoder(model.encoder, hf.state_dict())
    assert not set(skipped) - {"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"}
    ids, mask = batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        ours = model.encoder(ids, mask)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_key_map_rejects_unknown_missing_and_misshaped_keys():
    model = AspectSentimentModel(ModelConfig(**TINY))
    state = {hf: torch.randn_like(model.encoder.state_dict()[ours]) for ours, hf in hf_key_map(model.cfg).items()}
    load_hf_encoder(model.encoder, {"roberta." + k: v for k, v in state.items()})  # prefixed names load
    torch.testing.assert_close(model.encoder.embeddings.word.weight, state["embeddings.word_embeddings.weight"])
    with pytest.raises(KeyError, match="unexpected.*classifier.dense.weight"):
        load_hf_encoder(model.encoder, {**state, "classifier.dense.weight": torch.zeros(2, 2)})
    with pytest.raises(KeyError, match="missing.*encoder.layer.1.output.dense.bias"):
        load_hf_encoder(model.encoder, {k: v for k, v in state.items() if k != "encoder.layer.1.output.dense.bias"})
    with pytest.raises(ValueError, match="shape mismatch: embeddings.word.weight"):
        load_hf_encoder(model.encoder, {**state, "embeddings.word_embeddings.weight": torch.zeros(7, 32)})


def test_pretrained_encoder_offline_fails_with_a_clear_message(monkeypatch):
    """`--encoder NAME` with no internet and no cache: a RuntimeError that says what to do."""
    import sys
    import types

    def offline(name):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {name}")

    fake = types.SimpleNamespace(AutoModel=types.SimpleNamespace(from_pretrained=offline))
    monkeypatch.setitem(sys.modules, "transformers", fake)
    from visobert_multitask.model import fetch_pretrained
    with pytest.raises(RuntimeError, match=r"(?s)could not fetch encoder .uitnlp/visobert.*local Hugging Face cache"):
        fetch_pretrained("uitnlp/visobert")
    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed
    with pytest.raises(ImportError, match="pip install transformers sentencepiece"):
        fetch_pretrained("uitnlp/visobert")
