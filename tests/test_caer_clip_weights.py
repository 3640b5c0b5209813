"""caer_clip: open_clip models load with their own activation and head counts, or are refused.

A state_dict holds neither: open_clip/model.py builds QuickGELU only for `quick_gelu` configs (the
'-quickgelu' names; open_clip/pretrained.py marks the tags trained with it, OpenAI's among them) and
vision_cfg.width // vision_cfg.head_width, text_cfg.heads heads. Tiny random open_clip models from
model configs registered for these tests (no downloads)."""

import json

import pytest
import torch

from caer_clip.clip import clip_from_state_dict
from caer_clip.import_open_clip import load_open_clip

open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is optional: pip install open_clip_torch")

VISION = dict(image_size=32, layers=2, width=64, patch_size=8)
TEXT = dict(context_length=16, vocab_size=64, width=64, heads=1, layers=2)
CONFIGS = {  # every model has width 64, so the OpenAI rule (width // 64 = 1 head) is right where heads are 1
    "caer-test-gelu": dict(embed_dim=32, vision_cfg=VISION, text_cfg=TEXT),  # open_clip's default: nn.GELU
    "caer-test-quickgelu": dict(embed_dim=32, quick_gelu=True, vision_cfg=VISION, text_cfg=TEXT),
    "caer-test-heads-quickgelu": dict(embed_dim=32, quick_gelu=True, vision_cfg={**VISION, "head_width": 16},
                                      text_cfg={**TEXT, "heads": 4}),  # 4 heads of 16 in both towers
    "caer-test-width96": dict(embed_dim=32, vision_cfg={**VISION, "width": 96, "head_width": 32},
                              text_cfg={**TEXT, "width": 96, "heads": 3}),  # 3 heads of 32; 96 // 64 = 1
    "caer-test-avgpool": dict(embed_dim=32, vision_cfg={**VISION, "pool_type": "avg"}, text_cfg=TEXT),
    "caer-test-lastpool": dict(embed_dim=32, vision_cfg=VISION, text_cfg={**TEXT, "pool_type": "last"}),
    "caer-test-bidirectional": dict(embed_dim=32, vision_cfg=VISION, text_cfg={**TEXT, "no_causal_mask": True}),
    "caer-test-tanh-gelu": dict(embed_dim=32, vision_cfg={**VISION, "act_kwargs": {"approximate": "tanh"}},
                                text_cfg={**TEXT, "act_kwargs": {"approximate": "tanh"}}),
}


@pytest.fixture(scope="module", autouse=True)
def registered_configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, cfg in CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


def inputs():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    tokens = torch.randint(1, 63, (2, 16), generator=generator)
    tokens[0, 5:], tokens[1, 9:] = 0, 0
    tokens[0, 5], tokens[1, 9] = 63, 63  # EOT, the largest id
    return images, tokens


def saved_reference(name, tmp_path):
    """A random open_clip model and the file of its weights (loaded back with pretrained=<file>)."""
    torch.manual_seed(0)
    reference = open_clip.create_model(name, pretrained=None).eval()
    path = tmp_path / f"{name}.pt"
    torch.save(reference.state_dict(), path)
    return reference, str(path)


def max_feature_difference(ours, reference):
    images, tokens = inputs()
    with torch.no_grad():
        return max((ours.encode_image(images) - reference.encode_image(images)).abs().max().item(),
                   (ours.encode_text(tokens) - reference.encode_text(tokens)).abs().max().item())


@pytest.mark.parametrize("name, quick_gelu, heads", [
    ("caer-test-gelu", False, 1), ("caer-test-quickgelu", True, 1), ("caer-test-heads-quickgelu", True, 4)])
def test_load_open_clip_reads_activation_and_heads_and_matches_open_clip(name, quick_gelu, heads, tmp_path):
    reference, path = saved_reference(name, tmp_path)
    ours = load_open_clip(name, pretrained=path).eval()
    images, tokens = inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), reference.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_text(tokens), reference.encode_text(tokens), atol=1e-5, rtol=1e-5)
    assert (ours.cfg.quick_gelu, ours.cfg.vision_heads, ours.cfg.transformer_heads) == (quick_gelu, heads, heads)


@pytest.mark.parametrize("name", ["caer-test-gelu", "caer-test-heads-quickgelu"])
def test_openai_rules_would_load_these_models_silently_wrong(name, tmp_path):
    """The symptom: OpenAI's rules (QuickGELU, width // 64 heads) accept these state_dicts without
    a complaint, and the features are not open_clip's."""
    reference, path = saved_reference(name, tmp_path)
    openai_rules = clip_from_state_dict(reference.state_dict()).eval()
    assert max_feature_difference(openai_rules, reference) > 1e-3
    assert max_feature_difference(load_open_clip(name, pretrained=path).eval(), reference) < 1e-5


@pytest.mark.parametrize("name, reason", [
    ("caer-test-avgpool", "image pooling 'avg'"), ("caer-test-lastpool", "text pooling 'last'"),
    ("caer-test-bidirectional", "bidirectional"), ("caer-test-tanh-gelu", "image MLP activation")])
def test_what_cannot_be_loaded_correctly_is_refused(name, reason, tmp_path):
    """Changes of function that the key and shape checks cannot see."""
    _, path = saved_reference(name, tmp_path)
    with pytest.raises(ValueError, match=f"cannot load this open_clip model correctly: {reason}"):
        load_open_clip(name, pretrained=path)


def test_a_quickgelu_tag_loads_with_quickgelu_whatever_the_model_name(tmp_path, monkeypatch):
    """open_clip registers OpenAI's weights under non-QuickGELU names too (ViT-B-16 'openai'), and its
    create_model builds nn.GELU there with a warning. The tag decides; a QuickGELU model with weights
    trained with GELU is refused."""
    assert open_clip.get_pretrained_cfg("ViT-B-16", "openai")["quick_gelu"]
    assert not open_clip.get_model_config("ViT-B-16").get("quick_gelu", False)
    _, path = saved_reference("caer-test-gelu", tmp_path)
    registry = open_clip.pretrained._PRETRAINED  # a local 'tag' in place of a download
    monkeypatch.setitem(registry, "caer-test-gelu", {"openai": {"file": path, "quick_gelu": True}})
    monkeypatch.setitem(registry, "caer-test-quickgelu", {"gelu_trained": {"file": path, "quick_gelu": False}})
    torch.manual_seed(0)
    reference = open_clip.create_model("caer-test-gelu", pretrained=path, force_quick_gelu=True).eval()
    ours = load_open_clip("caer-test-gelu", "openai").eval()
    assert max_feature_difference(ours, reference) < 1e-5
    assert ours.cfg.quick_gelu
    with pytest.raises(ValueError, match="trained with GELU"):
        load_open_clip("caer-test-quickgelu", "gelu_trained")


def test_openai_state_dict_with_width_off_the_64_rule_is_refused(tmp_path):
    """OpenAI's head count is width // 64; a state_dict whose width is no multiple of 64 is not an
    OpenAI model, and its heads cannot be known from the tensors: refused, while the open_clip model
    itself loads with its 3 heads."""
    reference, path = saved_reference("caer-test-width96", tmp_path)
    with pytest.raises(ValueError, match="not a multiple of OpenAI's head width 64"):
        clip_from_state_dict(reference.state_dict())
    ours = load_open_clip("caer-test-width96", pretrained=path).eval()
    assert max_feature_difference(ours, reference) < 1e-5
    assert (ours.cfg.vision_heads, ours.cfg.transformer_heads) == (3, 3)


def test_clip_openai_name_reads_openais_own_file_by_openais_rules(tmp_path, monkeypatch):
    """`--clip openai:ViT-B-16` fetches the file at OpenAI's address that open_clip lists for the name (as
    CLIP-CAER main.py:205 clip.load does) and reads it as OpenAI's archives: width // 64 heads, QuickGELU
    (open_clip marks every 'openai' tag quick_gelu); the tokenizer is that model's BPE. No download here."""
    from caer_clip.clip import load_clip

    reference, path = saved_reference("caer-test-quickgelu", tmp_path)  # width 64: OpenAI's rule gives 1 head
    fetched = []
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_url", lambda url: fetched.append(url) or path)
    ours, tokenizer = load_clip("openai:ViT-B-16", [])
    assert fetched == [open_clip.get_pretrained_cfg("ViT-B-16", "openai")["url"]] and "openaipublic" in fetched[0]
    assert ours.cfg.quick_gelu and max_feature_difference(ours.eval(), reference) < 1e-5
    assert tokenizer(["a photo of a face."]).shape == (1, 77)
    with pytest.raises(ValueError, match="lists no OpenAI weights for 'ViT-X-99'"):
        load_clip("openai:ViT-X-99", [])
