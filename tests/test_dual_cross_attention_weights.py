"""DCAL pretrained weights at another image size: a 224 px checkpoint loaded at 448 px must be the
model its own library builds at 448 px. torchvision resamples the position embeddings in
torchvision/models/vision_transformer.py interpolate_embeddings (bicubic, align_corners=True), timm
in timm/layers/pos_embed.py resample_abs_pos_embed with its defaults (bicubic, antialias=True).
Small random ViT/16s (no downloads): 448 px is a 28x28 grid, as in the paper."""

from collections import OrderedDict

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from dual_cross_attention.model import DCAL, DCALConfig, load_pretrained, resample_pos_embed

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)

WIDTH, DEPTH, HEADS, PATCH, CLASSES = 64, 2, 2, 16, 10


def dcal(image_size: int) -> DCAL:
    cfg = DCALConfig(image_size=image_size, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
                     num_classes=CLASSES, drop_path=0.0, glca=False, pwca=False)
    return DCAL(cfg).eval()


def torchvision_vit(image_size: int) -> VisionTransformer:
    return VisionTransformer(image_size=image_size, patch_size=PATCH, num_layers=DEPTH, num_heads=HEADS,
                             hidden_dim=WIDTH, mlp_dim=4 * WIDTH, num_classes=CLASSES).eval()


def timm_vit(timm, image_size: int = 224, **kw):
    return timm.create_model("vit_tiny_patch16_224", img_size=image_size, embed_dim=WIDTH, depth=DEPTH,
                             num_heads=HEADS, num_classes=CLASSES, **kw).eval()


def torchvision_224_state() -> dict:
    torch.manual_seed(0)
    state = torchvision_vit(224).state_dict()
    # unit-scale position embeddings and head: a resampling difference shows in the logits
    # (torchvision zero-initialises the head, which would make every logit 0)
    state["encoder.pos_embedding"] = torch.randn_like(state["encoder.pos_embedding"])
    state["heads.head.weight"] = torch.randn_like(state["heads.head.weight"])
    return state


def timm_224_state(timm) -> dict:
    torch.manual_seed(0)
    state = timm_vit(timm, pretrained=False).state_dict()
    state["pos_embed"] = torch.randn_like(state["pos_embed"])
    state["head.weight"] = torch.randn_like(state["head.weight"])
    return state


def test_torchvision_weights_resample_pos_embed_as_interpolate_embeddings_at_448():
    state = torchvision_224_state()
    model = dcal(448)
    info = load_pretrained(model, state)
    expected = interpolate_embeddings(448, PATCH, OrderedDict(state))["encoder.pos_embedding"]
    assert info["source"] == "torchvision" and info["pos_embed"] == "197 -> 785 tokens"
    torch.testing.assert_close(model.pos_embed.detach(), expected, atol=1e-6, rtol=0)


def test_timm_weights_resample_pos_embed_as_timm_default_at_448():
    timm = pytest.importorskip("timm", reason="timm is optional: pip install timm")
    state = timm_224_state(timm)
    model = dcal(448)
    info = load_pretrained(model, state)
    expected = timm.layers.resample_abs_pos_embed(state["pos_embed"], new_size=(28, 28))  # timm's defaults
    assert info["source"] == "timm" and info["pos_embed"] == "197 -> 785 tokens"
    torch.testing.assert_close(model.pos_embed.detach(), expected, atol=1e-6, rtol=0)


def test_the_two_libraries_resample_differently():
    """Why the source matters: at 14 -> 28 the two rules (and bicubic without either flag) are
    different embeddings, by far more than float error; each keeps CLS and is the identity at 14."""
    pos = torch.randn(1, 1 + 14 * 14, WIDTH)
    tv, tm = resample_pos_embed(pos, 28, "torchvision"), resample_pos_embed(pos, 28, "timm")
    plain = torch.cat([pos[:, :1], torch.nn.functional.interpolate(
        pos[:, 1:].transpose(1, 2).reshape(1, WIDTH, 14, 14), size=28, mode="bicubic"
    ).flatten(2).transpose(1, 2)], dim=1)
    for a, b in ((tv, tm), (tv, plain), (tm, plain)):
        assert (a - b).abs().max() > 0.05
    for out in (tv, tm):
        assert out.shape == (1, 1 + 28 * 28, WIDTH) and torch.equal(out[:, 0], pos[:, 0])
        assert resample_pos_embed(pos, 14, "timm") is pos and resample_pos_embed(pos, 14, "torchvision") is pos
    with pytest.raises(ValueError, match="unknown weight source"):
        resample_pos_embed(pos, 28, "jax")


def assert_same_model_at_448(reference: torch.nn.Module, state: dict) -> None:
    """Our model at 448 px, loaded from the 224 px `state` by load_pretrained, gives the reference's logits."""
    model = dcal(448)
    load_pretrained(model, state)
    images = torch.randn(2, 3, 448, 448)
    with torch.no_grad():
        expected, ours = reference(images), model(images)["sa"]
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_torchvision_224_weights_at_448_give_torchvisions_own_448_model():
    """Our model at 448 px equals torchvision's VisionTransformer(image_size=448) loaded from the same
    224 px weights through torchvision's interpolate_embeddings."""
    state = torchvision_224_state()
    reference = torchvision_vit(448)
    reference.load_state_dict(interpolate_embeddings(448, PATCH, OrderedDict(state)))
    assert_same_model_at_448(reference, state)


def test_timm_224_weights_at_448_give_timms_own_448_model(tmp_path):
    """Our model at 448 px equals timm's create_model(img_size=448) that loads the same 224 px file
    through timm's own pretrained loader (its checkpoint filter resamples the position embeddings)."""
    timm = pytest.importorskip("timm", reason="timm is optional: pip install timm")
    state = timm_224_state(timm)
    torch.save(state, tmp_path / "vit_224.pth")
    reference = timm_vit(timm, 448, pretrained=True,
                         pretrained_cfg_overlay=dict(file=str(tmp_path / "vit_224.pth"), num_classes=CLASSES))
    torch.testing.assert_close(reference.head.weight.detach(), state["head.weight"])  # the file was loaded
    assert_same_model_at_448(reference, state)
