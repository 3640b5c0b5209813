"""caer_clip fixes: each test shows the symptom on the baseline behaviour (reproduced inline) and its
absence with the fixed code. The test names carry the fix IDs of FIXES.md."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caer_clip import data as caer_data
from caer_clip import losses as caer_losses
from caer_clip import model as caer_model
from caer_clip import train as caer_train
from common.runtime import DataError, NonFiniteLossError
from tests.fixtures_caer_clip import clip_batch, make_raer, tiny_model


def similar_class_text(num_classes=5, per_class=3, cosine=0.8, dim=64):
    """Mean of `per_class` unit prompt features per class, classes at cosine ~0.8 (as CLIP descriptors)."""
    g = torch.Generator().manual_seed(0)
    shared = F.normalize(torch.randn(dim, generator=g), dim=0)
    own = F.normalize(torch.randn(num_classes, 1, dim, generator=g), dim=-1)
    classes = F.normalize(math.sqrt(cosine) * shared + math.sqrt(1 - cosine) * own, dim=-1)
    noise = F.normalize(torch.randn(num_classes, per_class, dim, generator=g), dim=-1)
    prompts = F.normalize(classes + 0.3 * noise, dim=-1)
    return prompts.mean(dim=1)  # (C, D), norm < 1


def test_caer_ldl_norm_loss_is_not_tiny_at_chance():
    class_text = similar_class_text().requires_grad_(True)
    target = torch.arange(5)
    uniform_logits = torch.zeros(5, 5)
    # Baseline: raw similarity at temperature 1 -> q nearly uniform, KL ~0.01 at chance.
    q_old = F.softmax((class_text @ class_text.T)[target], dim=-1)
    kl_old = F.kl_div(F.log_softmax(uniform_logits, -1), q_old, reduction="batchmean")
    assert q_old.diagonal().max() < 0.3 and kl_old < 0.02
    # Fixed: the target peaks on the true class and chance predictions cost a lot.
    loss = caer_losses.semantic_ldl_loss(uniform_logits.requires_grad_(True), target, class_text, 0.1)
    assert loss > 0.3
    loss.backward()
    assert class_text.grad is None  # targets are detached from the prompts
    # Perfect predictions drive the loss towards zero.
    text = F.normalize(class_text.detach(), dim=-1)
    good_logits = torch.log(F.softmax((text @ text.T) / 0.1, dim=-1))
    assert caer_losses.semantic_ldl_loss(good_logits, target, class_text, 0.1) < 1e-4


def _baseline_lsr2(logits, target, smoothing):
    length = int(target.max()) + 1
    one_hot = torch.zeros(target.shape[0], length).scatter_(1, target.view(-1, 1), 1.0)
    smoothed = one_hot * (1 - smoothing) + (1 - one_hot) * smoothing / (length - 1)
    return (-smoothed * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def test_caer_lsr_batch_without_last_class():
    logits, target = torch.randn(6, 5), torch.tensor([0, 1, 1, 0, 1, 0])
    with pytest.raises(RuntimeError):
        _baseline_lsr2(logits, target, 0.1)
    cfg = caer_losses.LossConfig(cls_loss="lsr", smoothing=0.1, use_ldl=False)
    loss = caer_losses.classification_loss(logits, target, torch.randn(5, 8), 0, cfg)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, label_smoothing=0.1))
    one = caer_losses.classification_loss(logits[:1], target[:1], torch.randn(5, 8), 0, cfg)  # batch of one
    torch.testing.assert_close(one, F.cross_entropy(logits[:1], target[:1], label_smoothing=0.1))


def _non_default_argvs(action):
    """(argv, value it must set) for each way of setting `action` to a value other than its default."""
    if action.nargs == 0:  # --x / --no-x pairs and store_true/store_false: each option string on its own
        return [([o], not o.startswith("--no-")) for o in action.option_strings]
    if action.choices:
        value = [c for c in action.choices if c != action.default][0]
    elif action.nargs == "+":
        value = [7, 9]
    elif action.type.__name__ == "int":
        value = 7
    elif action.type.__name__ == "float":
        value = 0.123
    else:
        value = "value"
    return [([action.option_strings[0], *map(str, value if isinstance(value, list) else [value])], value)]


def test_caer_mixup_plumb_every_flag_reaches_its_config():
    parser = caer_train.build_parser()
    # Baseline: the loss config was built field by field without mixup/LDL settings.
    args = parser.parse_args(["--mixup-alpha", "0.4", "--ldl", "--ldl-warmup", "3"])
    old = caer_losses.LossConfig(cls_loss=args.cls_loss, w_dc=args.w_dc)
    assert old.mixup_alpha == 0.0 and old.use_ldl != args.use_ldl and old.ldl_warmup != 3
    # Fixed: every flag of a config section, set to a non-default value, lands in the section that reads it;
    # the shared run flags (common.lifecycle.run_args) are the only others.
    run_flags = {"out", "resume", "overwrite", "seed", "device", "amp", "workers", "log_interval", "ckpt_interval",
                 "keep_checkpoints"}
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help" and a.dest not in run_flags]
    assert len(actions) > 50
    for action in actions:
        for argv, value in _non_default_argvs(action):
            cfg = caer_train.configs_from(parser.parse_args(argv))
            sections = [s for s in (cfg.model, cfg.loss, cfg.data, cfg.train) if hasattr(s, action.dest)]
            assert len(sections) == 1, f"{action.dest} must belong to exactly one config section"
            assert getattr(sections[0], action.dest) == value, argv
    # ... and every config field is read somewhere in the project beyond its definition.
    source = "\n".join(p.read_text() for p in Path(caer_train.__file__).parent.glob("*.py"))
    for section in (cfg.model, cfg.loss, cfg.data, cfg.train):
        for name in vars(section):
            assert re.search(rf"\.{name}\b", source), f"config field {name} is never read"


def test_caer_mixup_target_is_label_of_mixed_sample():
    from common.mixup import mixup

    labels = torch.tensor([4, 4, 3, 3, 2, 2, 1, 0])
    face, context = torch.randn(8, 2, 3), torch.randn(8, 2, 3)
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    # Baseline: y_b was the permutation index itself, a class id unrelated to the mixed clip.
    y_b_old = perm
    assert not torch.equal(y_b_old, labels[perm])
    (mixed_face, mixed_context), y_a, y_b, lam = mixup([face, context], labels, 0.4, generator=g)
    assert torch.equal(y_a, labels) and torch.equal(y_b, labels[perm])
    torch.testing.assert_close(mixed_face, lam * face + (1 - lam) * face[perm])
    torch.testing.assert_close(mixed_context, lam * context + (1 - lam) * context[perm])
    assert "def _mixup_data" not in Path(caer_train.__file__).read_text()


def test_caer_ldl_warmup_uses_hard_labels_first():
    logits, target, class_text = torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), similar_class_text()
    cfg = caer_losses.LossConfig(cls_loss="ce", use_ldl=True, ldl_warmup=2)
    ldl = caer_losses.semantic_ldl_loss(logits, target, class_text, cfg.ldl_temperature)
    # Baseline: `if cfg.use_ldl` alone -> LDL from epoch 0.
    for epoch in (0, 1):
        torch.testing.assert_close(caer_losses.classification_loss(logits, target, class_text, epoch, cfg),
                                   F.cross_entropy(logits, target))
    torch.testing.assert_close(caer_losses.classification_loss(logits, target, class_text, 2, cfg), ldl)


def test_caer_loss_weights_dc_does_not_swamp_classification():
    torch.manual_seed(0)
    model = tiny_model()
    out = model(*clip_batch(batch=4))
    y = torch.arange(4)
    _, parts, _ = caer_losses.total_loss(out, y, y, 1.0, 0, 1.0, caer_losses.LossConfig())
    # Baseline: weight 5 at full strength from step 0 gives DC a pull on the prompt vectors of the
    # same order as the classification loss's.
    ctx = model.prompt_learner.ctx
    grad_dc = torch.autograd.grad(parts["dc"], ctx, retain_graph=True)[0].norm()
    grad_cls = torch.autograd.grad(parts["cls"], ctx, retain_graph=True)[0].norm()
    assert 5.0 * grad_dc > 0.3 * grad_cls
    # Fixed: weight 0.1 (a few percent of CE's pull), ramped in from 0 over the auxiliary warm-up.
    cfg = caer_losses.LossConfig()
    assert cfg.w_dc * grad_dc < 0.05 * grad_cls
    _, _, weighted = caer_losses.total_loss(out, y, y, 1.0, 0, 0.0, cfg)
    assert weighted["dc"] == 0 and weighted["mi"] == 0
    assert caer_losses.aux_ramp(0.5, 1.0) == 0.5 and caer_losses.aux_ramp(3.0, 1.0) == 1.0


def test_caer_train_mode_trainable_parts_train_frozen_parts_stay_eval():
    model = tiny_model()
    # Baseline: model.eval() after construction and no train() in the loop -> dropout never on.
    old = tiny_model().eval()
    assert not old.head.training
    assert model.head.training and model.prompt_learner.training
    assert not model.clip.transformer.training and not model.key_head.training
    model.eval()
    model.train()
    assert model.head.face_temporal.training
    assert not model.clip.transformer.training  # frozen text tower stays in eval
    assert re.search(r"ddp_model\.train\(\)", Path(caer_train.__file__).read_text())


def test_caer_lr_rule_is_explicit():
    model = tiny_model()
    cfg = caer_train.TrainConfig(batch_size=16, lr=0.01)
    # Baseline: every lr silently multiplied by batch / 20.
    assert cfg.lr * cfg.batch_size / 20 != cfg.lr
    groups = caer_train.param_groups(model, cfg, world_size=1)
    assert {g["base_lr"] for g in groups if g["name"] == "temporal"} == {0.01}
    linear = caer_train.param_groups(model, caer_train.TrainConfig(batch_size=16, lr=0.01, lr_rule="linear",
                                                                   lr_ref_batch=8), world_size=2)
    assert {g["base_lr"] for g in linear if g["name"] == "temporal"} == {0.04}


def test_caer_nonfinite_raises_naming_component():
    model = tiny_model()
    out = model(*clip_batch(batch=2))
    out["logits"] = out["logits"] * float("nan")
    y = torch.tensor([0, 1])
    # Baseline: nan_to_num turned the NaN loss into 0 with zero gradients.
    assert torch.nan_to_num(out["logits"].sum(), nan=0.0) == 0
    with pytest.raises(NonFiniteLossError, match="loss_cls"):
        caer_losses.total_loss(out, y, y, 1.0, 0, 1.0, caer_losses.LossConfig(use_ldl=False))


def test_caer_balanced_sampler_counts_sum_and_no_empty_class():
    labels = [0] * 90 + [1] * 9 + [2] * 1
    sampler = caer_data.ClassBalancedSampler(labels, batch_size=4, power=2.0)
    # Baseline: floor(n * w) -> the rare class gets zero samples.
    counts, n = np.bincount(labels), len(labels)
    w = counts.astype(float) ** 2 / (counts.astype(float) ** 2).sum()
    assert [int(n * x) for x in w] [2] == 0
    alloc = sampler.class_counts()
    assert sum(alloc.values()) == n and min(alloc.values()) >= 1
    balanced = caer_data.ClassBalancedSampler(labels, batch_size=4, power=0.0)
    assert sum(int(n * x) for x in [1 / 3] * 3) == 99  # baseline epoch came out short
    alloc = balanced.class_counts()
    assert sum(alloc.values()) == n and max(alloc.values()) - min(alloc.values()) <= 1
    # Deterministic per (seed, epoch); ranks take disjoint shards.
    balanced.set_epoch(1)
    first = list(balanced)
    balanced.set_epoch(1)
    assert list(balanced) == first and len(first) == 100
    ranks = [caer_data.ClassBalancedSampler(labels, 2, 0.0, seed=0, rank=r, world_size=2) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    shard0, shard1 = list(ranks[0]), list(ranks[1])
    assert sorted(shard0 + shard1) == sorted(first)


def test_caer_shapes_wrong_logit_shape_raises():
    video, text = torch.randn(2, 4, 8), torch.randn(5, 8)  # a stray time axis
    # Baseline: reshape(-1, C) turned (B, T, C) into a "batch" of B*T rows.
    assert (video @ text.T).reshape(-1, 5).shape == (8, 5)
    with pytest.raises(ValueError, match="expected video"):
        caer_model.class_logits(video, text, 20.0)
    assert caer_model.class_logits(video[:, 0], text, 20.0).shape == (2, 5)


def test_caer_box_keys_face_crop_uses_the_box(tmp_path):
    cfg = make_raer(tmp_path, clips_per_class=1, frames=3)
    train, _, _ = caer_data.build_datasets(cfg, num_frames=2, image_size=16, seed=0)
    rec = train.records[0]
    # Baseline: looked up the full frame path, which is never a key -> silently the full frame.
    assert train.face_boxes.get(str(rec.frames_dir / "1.jpg")) is None
    train.train = False
    face, context, _, fallbacks = train[0]
    assert fallbacks == 0
    assert (face[:, 1, 8, 8] > face[:, 0, 8, 8] + 0.5).all()  # centre of the face crop: the green box
    assert (context[:, 0, 1, 1] > context[:, 1, 1, 1] + 0.5).all()  # context corner: red background
    # A missing box is an error naming the clip, or a counted centre-crop fallback.
    train.face_boxes = {}
    with pytest.raises(DataError, match=rec.key):
        train[0]
    train.centre_crop_fallback = True
    assert train[0][3] == 2


def test_caer_frame_sort_is_natural(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(1, 13):
        (folder / f"{i}.jpg").write_bytes(b"")
    # Baseline: lexicographic order.
    assert sorted(p.name for p in folder.iterdir())[:3] == ["1.jpg", "10.jpg", "11.jpg"]
    assert caer_data.list_frames(folder, "test") == [f"{i}.jpg" for i in range(1, 13)]


def test_caer_sampling_spans_the_whole_clip_in_training():
    # Baseline: training always took frames 0..15 of a 30-frame clip.
    assert [min(i, 29) for i in range(16)] == list(range(16))
    seen = set()
    for seed in range(20):
        picks = caer_data.sample_indices(30, 16, True, torch.Generator().manual_seed(seed))
        assert len(picks) == 16 and picks == sorted(picks) and max(picks) < 30
        seen.update(picks)
    assert max(seen) >= 28 and len(seen) == 30
    centre = caer_data.sample_indices(30, 16, False, torch.Generator())
    assert centre[0] == 0 and centre[-1] == 29
    assert caer_data.sample_indices(3, 8, True, torch.Generator()) == sorted(
        caer_data.sample_indices(3, 8, True, torch.Generator()))


def test_caer_same_augmentation_for_face_and_context():
    data = caer_data.SyntheticClips(1, caer_data.DataConfig(), 2, 16, True, 0, 1)
    frames = torch.rand(2, 3, 16, 16)
    differs = 0
    for seed in range(12):
        # Baseline: a second draw for the context flip.
        g = torch.Generator().manual_seed(seed)
        torch.rand((), generator=g)
        flip_face = torch.rand((), generator=g).item() < 0.5
        flip_context = torch.rand((), generator=g).item() < 0.5
        differs += flip_face != flip_context
        face, context = data.augment(frames, frames.clone(), torch.Generator().manual_seed(seed))
        torch.testing.assert_close(face, context)
    assert differs > 0


def test_caer_clip_norm_inputs_are_standardised():
    data = caer_data.SyntheticClips(2, caer_data.DataConfig(), 2, 16, False, 0, 1)
    face, context, _, _ = data[0]
    frame = data.frames[0][caer_data.sample_indices(len(data.frames[0]), 2, False, torch.Generator())[0]]
    raw = caer_data.crop_resize(frame, (0, 0, 48, 48), 16, keep_aspect=True)
    # Baseline: raw [0, 1] pixels.
    assert raw.min() >= 0
    torch.testing.assert_close(context[0], caer_data.clip_normalise(raw))
    assert context.min() < 0


def test_caer_val_split_is_not_the_test_list(tmp_path):
    train, val, test = caer_data.build_datasets(caer_data.DataConfig(synthetic_train=10, synthetic_val=5,
                                                                     synthetic_test=5), 2, 16, 0)
    # Baseline: val = test, so the best epoch was picked on the test list.
    assert val is not test
    assert not any(torch.equal(a, b) for a in val.frames for b in test.frames if a.shape == b.shape)
    cfg = make_raer(tmp_path, clips_per_class=2)
    train, val, test = caer_data.build_datasets(cfg, 2, 16, 0)
    keys = [{r.key for r in d.records} for d in (train, val, test)]
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2]) and len(keys[1]) == 5
    assert sorted(val.labels) == [0, 1, 2, 3, 4]  # stratified


def test_caer_uar_all_classes_counts_classes_absent_from_the_split():
    labels = np.array([0, 0, 1, 1, 2, 2])  # classes 3 and 4 absent from this split
    preds = np.array([0, 0, 1, 1, 2, 3])
    old = np.mean([(preds[labels == c] == c).mean() for c in np.unique(labels)])
    assert old == pytest.approx(5 / 6)
    assert caer_train.uar(labels, preds, 5) == pytest.approx((1 + 1 + 0.5) / 5)
    model = tiny_model()
    batches = [(torch.randn(2, 4, 3, 32, 32), torch.randn(2, 4, 3, 32, 32), torch.tensor([0, 1]),
                torch.zeros(2, dtype=torch.long))]
    metrics = caer_train.evaluate(model, batches, torch.device("cpu"), None, 5)
    assert metrics["confusion"].shape == (5, 5) and metrics["uar"] <= 0.4


def test_caer_moco_queue_masks_same_label_negatives():
    torch.manual_seed(0)
    query = F.normalize(torch.randn(4, 16), dim=-1)
    key = F.normalize(query + 0.1 * torch.randn(4, 16), dim=-1)
    labels = torch.tensor([0, 1, 2, 3])
    same = query.repeat(8, 1)  # queue full of clips of the same classes, identical to the queries
    others = F.normalize(torch.randn(32, 16), dim=-1)
    queue = torch.cat([same, others])
    queue_labels = torch.cat([labels.repeat(8), torch.full((32,), 9)])
    from common.losses import info_nce
    naive = info_nce(query, key, queue, 0.07)  # baseline: no mask
    fixed = caer_losses.moco_loss(query, key, queue, queue_labels, labels, 0.07)
    expected = torch.stack([info_nce(query[i:i + 1], key[i:i + 1], torch.cat([same[labels.repeat(8) != labels[i]],
                                                                               others]), 0.07) for i in range(4)])
    assert naive > fixed + 1.0
    # Only the entries of the query's own class are masked, other classes stay negatives.
    torch.testing.assert_close(fixed, expected.mean())


def test_caer_adapter_residual_keeps_clip_features():
    torch.manual_seed(0)
    adapter = caer_model.Adapter(64, 4, 0.2)
    x = torch.randn(8, 64)
    # Baseline: the adapter output replaced the features.
    assert F.cosine_similarity(adapter.net(x), x).mean() < 0.5
    assert F.cosine_similarity(adapter(x), x).min() > 0.9
    torch.testing.assert_close(adapter(x), x + 0.2 * adapter.net(x))
