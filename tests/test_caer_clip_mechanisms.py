"""Each mechanism of caer_clip reaches what it should, as in the originals: every test
perturbs or removes the mechanism and fails when it is inert. caer_clip/README.md, "Mechanisms",
names the original's file and line for each."""

import json

import pytest
import torch
import torch.nn.functional as F

from caer_clip import data as caer_data
from caer_clip import losses as caer_losses
from caer_clip import train as caer_train
from caer_clip.model import TemporalModel
from tests.fixtures_caer_clip import clip_batch, tiny_model, write_frames


def unnormalised(x: torch.Tensor) -> torch.Tensor:
    """CLIP-normalised (..., 3, S, S) back to [0, 1] pixels."""
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (caer_data.CLIP_MEAN, caer_data.CLIP_STD))
    return x * std + mean


# ----------------------------------------------------------------------------- context crop


def test_context_letterbox_keeps_the_frame_edge_and_the_hands(tmp_path):
    """A white object at x 40..200 of a 1280x720 frame (no body box: the whole frame is the context) and
    white hands at the bottom of a tall body box both reach the context input. A centre square crop
    cut 280 px off each side of the frame and the lower 40% of the body box."""
    write_frames(tmp_path / "test" / "wide", 2, size=(720, 1280), colour=(90, 90, 90), box=(40, 300, 200, 400),
                 box_colour=(250, 250, 250))
    write_frames(tmp_path / "test" / "tall", 2, size=(400, 300), colour=(90, 90, 90), box=(100, 360, 200, 400),
                 box_colour=(250, 250, 250))
    (tmp_path / "test.txt").write_text("test/wide 2 1\ntest/tall 2 1\n")
    faces = {f"test/{c}": {f"{i}.jpg": [0, 0, 40, 40] for i in (1, 2)} for c in ("wide", "tall")}
    (tmp_path / "face_boxes.json").write_text(json.dumps(faces))
    (tmp_path / "body.json").write_text(json.dumps({"test/wide": None, "test/tall": [100, 0, 200, 400]}))
    cfg = caer_data.DataConfig(data_root=str(tmp_path), train_list="test.txt", val_list="test.txt",
                               body_boxes="body.json", allow_missing_boxes=True)
    _, _, test = caer_data.build_datasets(cfg, num_frames=2, image_size=64, seed=0)
    for index in (0, 1):
        _, context, _, _ = test[index]
        assert unnormalised(context).amin(dim=1).amax() > 0.85, test.records[index].key  # white pixels kept
    wide = unnormalised(test[0][1])[0, 0]  # first frame, red channel (64, 64)
    assert wide[:14].abs().max() < 0.02 and wide[-14:].abs().max() < 0.02  # the letterbox's black bars


# ----------------------------------------------------------------------------- temporal models


def order_change(model, face, context) -> float:
    """Mean |logits(frames) - logits(frames reversed)| over the logits' standard deviation."""
    with torch.no_grad():
        logits = model(face, context)["logits"]
        reversed_logits = model(face.flip(1), context.flip(1))["logits"]
    return float((logits - reversed_logits).abs().mean() / logits.std())


@pytest.mark.parametrize("temporal", ["cls", "attn"])
def test_temporal_model_uses_frame_order(temporal):
    """Reversing the frames moves the logits of a fresh model: the position embedding (randn, as both
    originals) is large enough to matter. At 0.02 * randn the CLS model moved them by 0.04% of their
    spread; the attention pooling without a transformer and position embedding did not move them."""
    torch.manual_seed(0)
    model = tiny_model(temporal=temporal).eval()
    assert order_change(model, *clip_batch(batch=8)) > 0.01
    features = torch.randn(8, 4, 64) * 0.9  # the tiny CLIP's frame features have norm ~7.5
    temporal_model = TemporalModel(64, 4, temporal, 1, 8, 0.1).eval()
    out, shuffled = temporal_model(features), temporal_model(features[:, [2, 0, 3, 1]])
    assert ((out - shuffled).norm(dim=-1) / out.norm(dim=-1)).mean() > 0.02


def test_attn_temporal_model_has_its_transformer():
    """--temporal attn is RAPT's attention pooling after a transformer: --temporal-layers and
    --temporal-heads act on it."""
    def parameters(**kw):
        return sum(p.numel() for p in TemporalModel(64, 4, "attn", dropout=0.0, **kw).parameters())
    assert parameters(layers=2, heads=8) > parameters(layers=1, heads=8)
    torch.manual_seed(0)
    one_head = TemporalModel(64, 4, "attn", 1, 1, 0.0).eval()
    torch.manual_seed(0)
    eight_heads = TemporalModel(64, 4, "attn", 1, 8, 0.0).eval()
    x = torch.randn(2, 4, 64)
    assert not torch.allclose(one_head(x), eight_heads(x))


# ----------------------------------------------------------------------------- MoCo


def filled_model(keys_per_class: int = 2):
    """A tiny model (queue of 16) whose queue holds `keys_per_class` momentum keys of each of 5 classes."""
    torch.manual_seed(0)
    model = tiny_model()
    labels = torch.arange(5).repeat(keys_per_class)
    model.enqueue(model(*clip_batch(batch=len(labels)))["key"], labels)
    return model


def test_moco_loss_trains_the_visual_path_and_the_prompts():
    """RAPT's MoCoRank ranks each video against its class text (the positive) and the queued video keys:
    the loss has a gradient to the visual head and to the prompt context. Comparing each clip with its
    own momentum key from the same detached features left it at 0 with the negatives masked."""
    model = filled_model()
    labels = torch.tensor([0, 1, 2])
    out = model(*clip_batch(batch=3))
    _, parts, weighted = caer_losses.total_loss(out, labels, labels, 1.0, 2, 2.0, caer_losses.LossConfig(),
                                                (model.queue, model.queue_labels), step=0)
    assert parts["moco"] > 0.1
    weighted["moco"].backward()
    for name, part in (("visual head", model.head.projection.weight), ("prompts", model.prompt_learner.ctx)):
        assert part.grad is not None and part.grad.abs().sum() > 0, name


def test_moco_queue_negatives_are_only_filled_slots_of_other_classes():
    """A queue of 16 holding 5 keys: only those of other classes are negatives (the 11 empty slots,
    random vectors in RAPT and MoCo, are none), against the class text as the positive."""
    model = filled_model(keys_per_class=1)
    assert int((model.queue_labels >= 0).sum()) == 5
    video = F.normalize(torch.randn(3, 64), dim=-1)
    text = F.normalize(torch.randn(5, 64), dim=-1)
    labels = torch.tensor([0, 3, 4])
    loss = caer_losses.moco_loss(video, text, model.queue, model.queue_labels, labels, 0.07)
    keys, key_labels = model.queue[:5], model.queue_labels[:5]
    expected = torch.stack([
        F.cross_entropy(torch.cat([(video[i] * text[y]).sum()[None], video[i] @ keys[key_labels != y].T]) / 0.07,
                        torch.tensor(0)) for i, y in enumerate(labels)]).mean()
    torch.testing.assert_close(loss, expected)


# ----------------------------------------------------------------------------- LDL


def test_ldl_target_follows_the_learned_prompts():
    """RAPT builds the LDL target from the learned prompt features (trainer.py:147-152): with the same
    logits, changing the prompt context changes the LDL loss. Frozen "a photo of {s}." features never did."""
    torch.manual_seed(0)
    model = tiny_model()
    labels = torch.tensor([0, 1, 2, 3])
    logits = torch.randn(4, 5)
    cfg = caer_losses.LossConfig(use_ldl=True, ldl_warmup=0)

    def ldl():
        out = {**model(*clip_batch(batch=4)), "logits": logits}
        return caer_losses.total_loss(out, labels, labels, 1.0, 0, 1.0, cfg)[1]["cls"]
    before = ldl()
    with torch.no_grad():
        model.prompt_learner.ctx.add_(torch.randn_like(model.prompt_learner.ctx))
    assert (ldl() - before).abs() > 1e-3


# ----------------------------------------------------------------------------- recipes


def recipe_config(argv):
    parser = caer_train.build_parser()
    args = parser.parse_args(argv)
    applied = caer_train.apply_recipe(args, caer_train.cli.explicit_dests(parser, argv))
    return caer_train.config_from(args), applied


def test_clip_caer_recipe_is_clip_caers_training():
    """--data-root without --recipe: CLIP-CAER's train.sh / main.py, cross-entropy alone (no label
    smoothing, MI, DC, MoCo, mixup, LDL, adapter or gradient clipping), ViT-B/32, logit scale 100, its
    own class descriptor sentences; every value with the file of the original it comes from."""
    cfg, applied = recipe_config(["--data-root", "somewhere"])
    assert cfg.train.recipe == "clip-caer" and cfg.model.clip == "openai:ViT-B-32"
    assert cfg.loss.cls_loss == "ce" and not cfg.loss.use_ldl and cfg.loss.mixup_alpha == 0
    assert cfg.loss.w_mi == cfg.loss.w_dc == cfg.loss.w_moco == 0 and cfg.model.moco_queue == 0
    assert cfg.model.adapter_ratio == 0 and cfg.train.grad_clip == 0 and cfg.model.logit_scale == 100
    assert cfg.data.class_text == "clip-caer" and cfg.model.temporal == "cls" and cfg.train.optimizer == "sgd"
    assert (cfg.train.lr, cfg.train.lr_image, cfg.train.lr_prompt, cfg.train.lr_proj) == (1e-2, 1e-5, 1e-3, 1e-5)
    assert all(".py" in src or ".sh" in src for _, src in applied.values())
    descriptors = caer_data.class_descriptors(cfg.data)
    assert list(descriptors) == list(caer_data.CLASS_DESCRIPTORS["raer"])
    assert descriptors["fatigue"] == ["Mouth opens in a yawn, eyelids droop, head tilts forward, eyes lock on "
                                      "learning material, or hand writing"]


def test_rapt_clip_recipe_is_rapt_clips_training():
    cfg, applied = recipe_config(["--data-root", "somewhere", "--recipe", "rapt-clip", "--epochs", "3"])
    assert cfg.train.epochs == 3 and "epochs" not in applied  # what the command line gives stays
    assert cfg.model.clip == "openai:ViT-B-16" and cfg.model.temporal == "attn" and cfg.train.optimizer == "adamw"
    assert cfg.model.logit_scale == pytest.approx(1 / 0.07) and cfg.loss.use_ldl and cfg.loss.mixup_alpha == 0.2
    assert (cfg.loss.w_mi, cfg.loss.w_dc, cfg.loss.aux_delay, cfg.loss.aux_warmup) == (0.1, 0.1, 5.0, 10.0)
    assert cfg.model.moco_queue == 0 and cfg.train.grad_clip == 1.0 and cfg.data.balanced_sampler
    assert all(".py" in src or ".sh" in src for _, src in applied.values())
    synthetic, applied = recipe_config([])
    assert applied == {} and synthetic.train.recipe == "none" and synthetic.train.batch_size == 16


def test_recipe_keeps_a_logit_scale_the_tiny_clip_can_train_at():
    """--data-root --clip tiny: CLIP-CAER's scale 100 put every clip in one class (UAR 0.0 after an
    epoch); the recipe keeps 20 for the random tiny CLIP and says so."""
    cfg, applied = recipe_config(["--data-root", "somewhere", "--clip", "tiny"])
    assert cfg.model.logit_scale == 20.0 and "tiny" in applied["logit_scale"][1]
    cfg, _ = recipe_config(["--data-root", "somewhere", "--clip", "tiny", "--logit-scale", "100"])
    assert cfg.model.logit_scale == 100.0  # given on the command line: kept


def test_aux_ramp_waits_then_ramps_as_rapt():
    """RAPT's get_loss_weight (utils/utils.py:14-21) at warm-up 5, ramp 10: 0 before epoch 5, then linear."""
    assert [caer_losses.aux_ramp(e, 10.0, 5.0) for e in (0, 4.9, 5, 10, 15, 20)] == [0, 0, 0, 0.5, 1, 1]
