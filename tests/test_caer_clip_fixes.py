"""caer_clip fixes: each test shows the symptom on the baseline behaviour (reproduced inline) and its
absence with the fixed code. The test names carry the fix IDs of FIXES.md."""

import math

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


def test_caer_lsr_batch_without_last_class():
    """CAER-LSR through total_loss, the loss of every training step, with the loss settings main()
    runs by default (label smoothing 0.1). The baseline's one-hot was max(label) + 1 wide: a batch
    without the last class raised a shape error, and a batch with it spread the smoothing mass over
    C - 1 classes. The classification term must be torch's label-smoothed cross-entropy."""
    loss_cfg = caer_train.config_from(caer_train.build_parser().parse_args([])).loss
    assert loss_cfg.cls_loss == "lsr" and not loss_cfg.use_ldl
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(5, 8, generator=g), dim=-1)  # 5 class text features
    for target in (torch.tensor([0, 1, 1, 0, 1, 0]),  # classes 2-4 absent from the batch
                   torch.tensor([0, 1, 2, 3, 4, 4]),  # every class present
                   torch.tensor([3])):  # a batch of one
        logits = torch.randn(len(target), 5, generator=g)
        out = {"logits": logits, "text": text, "handcrafted": text.flip(0), "handcrafted_mean": text}
        _, parts, _ = caer_losses.total_loss(out, target, target, 1.0, 0, 1.0, loss_cfg)
        torch.testing.assert_close(parts["cls"], F.cross_entropy(logits, target, label_smoothing=loss_cfg.smoothing))


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


# The smallest main() run: 2 training steps of 4 clips, 2 frames each.
TINY_RUN = ["--synthetic-train", "8", "--synthetic-val", "2", "--synthetic-test", "2", "--batch-size", "4",
            "--epochs", "1", "--num-frames", "2", "--moco-queue", "0"]


def test_caer_mixup_plumb_every_flag_reaches_its_config(tmp_path, monkeypatch):
    parser = caer_train.build_parser()
    # Baseline: the loss config was built field by field without mixup/LDL settings.
    args = parser.parse_args(["--mixup-alpha", "0.4", "--ldl", "--ldl-warmup", "3"])
    old = caer_losses.LossConfig(cls_loss=args.cls_loss, w_dc=args.w_dc)
    assert old.mixup_alpha == 0.0 and old.use_ldl != args.use_ldl and old.ldl_warmup != 3
    # Fixed: every flag of a config section, set to a non-default value, lands in the section that reads it;
    # the shared run flags (common.lifecycle.run_args) are the only others.
    run_flags = {"out", "resume", "overwrite", "seed", "device", "amp", "workers", "log_interval", "ckpt_interval",
                 "keep_checkpoints", "compile"}
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help" and a.dest not in run_flags]
    assert len(actions) > 50
    for action in actions:
        for argv, value in _non_default_argvs(action):
            cfg = caer_train.config_from(parser.parse_args(argv))
            sections = [s for s in (cfg.model, cfg.loss, cfg.data, cfg.train) if hasattr(s, action.dest)]
            assert len(sections) == 1, f"{action.dest} must belong to exactly one config section"
            assert getattr(sections[0], action.dest) == value, argv
    # ... and main() trains with them: the loss section total_loss receives carries the flags' values.
    seen = []
    real_total_loss = caer_train.total_loss

    def recording_total_loss(out, y_a, y_b, lam, epoch, progress, loss_cfg, *rest):
        seen.append(loss_cfg)
        return real_total_loss(out, y_a, y_b, lam, epoch, progress, loss_cfg, *rest)

    monkeypatch.setattr(caer_train, "total_loss", recording_total_loss)
    monkeypatch.setattr(caer_train, "save_confusion", lambda *args: None)  # not under test; spares matplotlib
    caer_train.main(TINY_RUN + ["--mixup-alpha", "0.4", "--ldl", "--ldl-warmup", "3", "--max-iters", "1",
                                "--out", str(tmp_path / "run")])
    assert len(seen) == 1
    assert (seen[0].mixup_alpha, seen[0].use_ldl, seen[0].ldl_warmup) == (0.4, True, 3)


def test_caer_mixup_target_is_label_of_mixed_sample(tmp_path, monkeypatch):
    """CAER-MIXUP-TARGET in a run of main() with --mixup-alpha: for every training step, the loss
    receives as second target (y_b) of each clip the label of the clip that was mixed into it. The
    baseline passed the permutation index, a class id unrelated to the mixed-in clip. The partner
    of each clip is read off the model's actual inputs: the j with mixed[i] = lam*x[i] + (1-lam)*x[j]."""
    real_make_loader, real_build, real_total_loss = (caer_train.runtime.make_loader, caer_train.build_model_and_data,
                                                      caer_train.total_loss)
    last_batch, model_inputs, steps = {}, {}, []

    class RecordingLoader:  # the loader main() builds, keeping the clips it yields (before mixup)
        def __init__(self, *args, **kwargs):
            self.loader = real_make_loader(*args, **kwargs)
            self.sampler = self.loader.sampler

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for batch in self.loader:
                last_batch["clips"] = batch
                yield batch

    def build_recording(*args, **kwargs):  # what the model is called with in training
        model, splits = real_build(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: model_inputs.update(mixed=inputs) if m.training else None)
        return model, splits

    def total_loss_recording(out, y_a, y_b, lam, *args, **kwargs):
        steps.append((last_batch["clips"], model_inputs["mixed"], y_a.clone(), y_b.clone(), lam))
        return real_total_loss(out, y_a, y_b, lam, *args, **kwargs)

    monkeypatch.setattr(caer_train.runtime, "make_loader", RecordingLoader)
    monkeypatch.setattr(caer_train, "build_model_and_data", build_recording)
    monkeypatch.setattr(caer_train, "total_loss", total_loss_recording)
    monkeypatch.setattr(caer_train, "save_confusion", lambda *args: None)  # not under test; spares matplotlib
    caer_train.main(TINY_RUN + ["--mixup-alpha", "0.4", "--out", str(tmp_path / "run")])
    assert len(steps) == 2
    for (face, context, labels, _), (mixed_face, mixed_context), y_a, y_b, lam in steps:
        assert 0.0 < lam < 1.0 and torch.equal(y_a, labels)
        candidates = lam * face[:, None] + (1 - lam) * face[None, :]  # (B, B, T, C, H, W): clip i mixed with clip j
        error = (candidates - mixed_face[:, None]).flatten(2).abs().amax(dim=-1)  # (B, B)
        partner = error.argmin(dim=1)
        assert error.min(dim=1).values.max() < 1e-5, "a model input is no mix of two clips of its batch"
        # the same partner and lam for the context stream
        torch.testing.assert_close(mixed_context, lam * context + (1 - lam) * context[partner])
        assert torch.equal(y_b, labels[partner]), \
            f"y_b {y_b.tolist()}, labels of the mixed-in clips {labels[partner].tolist()}"


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


def test_caer_train_mode_trainable_parts_train_frozen_parts_stay_eval(tmp_path, monkeypatch):
    """CAER-TRAIN-MODE: the baseline called model.eval() after construction and never train() in the
    loop, so dropout was never on. In a run of main() that validates after every step, every
    training forward runs with the trainable parts in training mode (dropout on) and the frozen
    CLIP text tower and momentum head in eval; validation forwards run with everything in eval."""
    model = tiny_model()  # build_model hands back a model ready to train, frozen parts in eval
    assert model.head.training and model.prompt_learner.training and not model.clip.transformer.training
    real_build, modes = caer_train.build_model_and_data, []

    def build_recording(*args, **kwargs):
        model, splits = real_build(*args, **kwargs)

        def record(module, inputs):
            modes.append((module.training, module.head.face_temporal.training, module.prompt_learner.training,
                          module.clip.transformer.training, module.key_head.training))

        model.register_forward_pre_hook(record)
        return model, splits

    monkeypatch.setattr(caer_train, "build_model_and_data", build_recording)
    monkeypatch.setattr(caer_train, "save_confusion", lambda *args: None)  # not under test; spares matplotlib
    caer_train.main(TINY_RUN + ["--synthetic-train", "12", "--moco-queue", "16", "--val-interval", "1",
                                "--out", str(tmp_path / "run")])
    training = [m for m in modes if m[0]]
    assert len(training) == 3 and len(modes) > 3  # 3 training steps, validations in between
    assert all(m == (True, True, True, False, False) for m in training), training
    assert all(not any(m) for m in modes if not m[0])


def test_caer_lr_rule_is_explicit():
    """CAER-LR-RULE: the baseline multiplied every lr by batch / 20 without saying so. The same
    scaling through param_groups with the rule spelled out (linear, reference batch 20) turns the
    0.01 given for batch 8 into 0.004; the default rule leaves the lrs as given."""
    model = tiny_model()
    baseline = caer_model.param_groups(model, caer_train.base_lrs(caer_train.TrainConfig(
        batch_size=8, lr=0.01, lr_rule="linear", lr_ref_batch=20), world_size=1), weight_decay=1e-4)
    assert {round(g["base_lr"], 12) for g in baseline if g["name"] == "temporal"} == {0.004}
    cfg = caer_train.config_from(caer_train.build_parser().parse_args(["--batch-size", "8", "--lr", "0.01"])).train
    groups = caer_model.param_groups(model, caer_train.base_lrs(cfg, world_size=1), cfg.weight_decay)
    assert {g["base_lr"] for g in groups if g["name"] == "temporal"} == {0.01}
    linear = caer_model.param_groups(model, caer_train.base_lrs(caer_train.TrainConfig(
        batch_size=16, lr=0.01, lr_rule="linear", lr_ref_batch=8), world_size=2), weight_decay=1e-4)
    assert {g["base_lr"] for g in linear if g["name"] == "temporal"} == {0.04}


def test_caer_nonfinite_raises_naming_component():
    model = tiny_model()
    out = model(*clip_batch(batch=2))
    out["logits"] = out["logits"] * float("nan")
    y = torch.tensor([0, 1])
    # CAER-NONFINITE: the baseline turned the NaN loss into 0 (zero gradients); now the run stops naming it.
    with pytest.raises(NonFiniteLossError, match="loss_cls"):
        caer_losses.total_loss(out, y, y, 1.0, 0, 1.0, caer_losses.LossConfig(use_ldl=False))


def test_caer_balanced_sampler_counts_sum_and_no_empty_class():
    """CAER-BALANCED-SAMPLER: the baseline's floor(100 * w) gave the rare class 0 samples at power 2
    (its share is 1/8182) and 33 + 33 + 33 = 99 at power 0. One sample per class with data, the
    other 97 by largest remainder: power 2 gives 96.03 / 0.96 / 0.01 -> 97 / 2 / 1; power 0 gives
    32.33 each -> 34 / 33 / 33 (the tie goes to the first class)."""
    labels = [0] * 90 + [1] * 9 + [2] * 1
    sampler = caer_data.ClassBalancedSampler(labels, batch_size=4, power=2.0)
    assert sampler.class_counts() == {0: 97, 1: 2, 2: 1}
    balanced = caer_data.ClassBalancedSampler(labels, batch_size=4, power=0.0)
    assert balanced.class_counts() == {0: 34, 1: 33, 2: 33}
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
    # The draw of (seed 3, epoch 1), pinned; EpochSampler's path shards it and skips the batches done before a resume.
    pinned = caer_data.ClassBalancedSampler([0] * 7 + [1] * 3 + [2] * 2, 2, 0.0, seed=3, rank=1, world_size=2)
    pinned.set_epoch(1)
    assert list(pinned) == [1, 3, 9, 11, 8, 11]
    pinned.set_epoch(1, start_batch=1)
    assert list(pinned) == [9, 11, 8, 11] and pinned.batches_per_epoch() == 3


def test_caer_shapes_wrong_logit_shape_raises():
    """CAER-SHAPES: the baseline's reshape(-1, C) turned a (B, T, C) or (B*P, C) product into a batch
    of the wrong size; class_logits accepts video (B, D) and text (C, D) only."""
    video, text = torch.randn(2, 4, 8), torch.randn(5, 8)  # a stray time axis
    with pytest.raises(ValueError, match="expected video"):
        caer_model.class_logits(video, text, 20.0)
    with pytest.raises(ValueError, match="expected video"):  # per-prompt text features (C, P, D)
        caer_model.class_logits(video[:, 0], torch.randn(5, 2, 8), 20.0)
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
    # CAER-FRAME-SORT: the baseline's text sort gave 1, 10, 11, 12, 2, ...
    assert caer_data.list_frames(folder, "test") == [f"{i}.jpg" for i in range(1, 13)]


def test_caer_sampling_spans_the_whole_clip_in_training():
    # CAER-SAMPLING: the baseline always trained on frames 0..15 of a 30-frame clip.
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
    """CAER-SAME-AUG: the baseline drew the context's flip apart from the face's, so the face was
    mirrored relative to its context half the time. Flip only (no rotation), the same frames in both
    streams: whatever augment does, the two outputs must be equal, and some seeds must flip."""
    data = caer_data.SyntheticClips(1, caer_data.DataConfig(rotate_degrees=0.0), 2, 16, True, 0, 1)
    frames = torch.rand(2, 3, 16, 16)
    flipped = 0
    for seed in range(12):
        face, context = data.augment(frames, frames.clone(), torch.Generator().manual_seed(seed))
        torch.testing.assert_close(face, context)
        flipped += torch.equal(face, frames.flip(-1))
    assert 0 < flipped < 12


def test_caer_clip_norm_inputs_are_standardised():
    data = caer_data.SyntheticClips(2, caer_data.DataConfig(), 2, 16, False, 0, 1)
    face, context, _, _ = data[0]
    frame = data.frames[0][caer_data.sample_indices(len(data.frames[0]), 2, False, torch.Generator())[0]]
    raw = caer_data.crop_resize(frame, (0, 0, 48, 48), 16, letterbox=True)
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


class _FixedPredictions(torch.nn.Module):
    """Stands in for the CLIP-CAER model in evaluate(): the predicted class is written in the face
    tensor's first value, so the confusion matrix is known by construction."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # evaluate() reads the device off the parameters

    def forward(self, face, context):
        return {"logits": F.one_hot(face[:, 0, 0, 0, 0].long(), self.num_classes).float()}


def test_caer_uar_all_classes_counts_classes_absent_from_the_split():
    """CAER-UAR-ALL-CLASSES through evaluate(): classes 3 and 4 have no clip in this split. Recall
    over all 5 classes is (1 + 1 + 0.5 + 0 + 0) / 5 = 0.5; the baseline's mean over the classes
    present gave (1 + 1 + 0.5) / 3 = 0.833."""
    labels, preds = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 1, 1, 2, 3])
    face = preds.float().view(6, 1, 1, 1, 1).expand(6, 2, 3, 4, 4).contiguous()
    batches = [(face[:4], face[:4], labels[:4], torch.zeros(4, dtype=torch.long)),
               (face[4:], face[4:], labels[4:], torch.tensor([1, 0]))]
    cfg = caer_train.config_from(caer_train.build_parser().parse_args([]))  # synthetic data: 5 classes
    metrics = caer_train.evaluate(_FixedPredictions(5), batches, cfg)
    assert metrics["uar"] == pytest.approx(0.5)
    assert metrics["war"] == pytest.approx(5 / 6) and metrics["fallbacks"] == 1
    expected = np.zeros((5, 5), dtype=int)
    expected[0, 0], expected[1, 1], expected[2, 2], expected[2, 3] = 2, 2, 1, 1
    np.testing.assert_array_equal(metrics["confusion"], expected)


def test_caer_moco_queue_masks_same_label_negatives():
    """MoCoRank (RAPT utils/loss.py:129-154): each video against its class text and the queued video keys.
    Keys of the video's own class are not negatives; keys of other classes stay negatives."""
    torch.manual_seed(0)
    video = F.normalize(torch.randn(4, 16), dim=-1)
    text = F.normalize(video + 0.5 * torch.randn(4, 16), dim=-1)  # class c's text near video c
    labels = torch.tensor([0, 1, 2, 3])
    same = video.repeat(8, 1)  # queue full of clips of the same classes, identical to the videos
    others = F.normalize(torch.randn(32, 16), dim=-1)
    queue, queue_labels = torch.cat([same, others]), torch.cat([labels.repeat(8), torch.full((32,), 4)])
    fixed = caer_losses.moco_loss(video, text, queue, queue_labels, labels, 0.07)
    naive = caer_losses.moco_loss(video, text, queue, torch.full_like(queue_labels, 9), labels, 0.07)  # no mask
    expected = torch.stack([F.cross_entropy(torch.cat([(video[i] * text[i]).sum()[None],
                                                       video[i] @ queue[queue_labels != labels[i]].T]) / 0.07,
                                            torch.tensor(0)) for i in range(4)])
    assert naive > fixed + 1.0
    torch.testing.assert_close(fixed, expected.mean())


def test_caer_adapter_residual_keeps_clip_features():
    torch.manual_seed(0)
    adapter = caer_model.Adapter(64, 4, 0.2)
    x = torch.randn(8, 64)
    # Baseline: the adapter output replaced the features.
    assert F.cosine_similarity(adapter.net(x), x).mean() < 0.5
    assert F.cosine_similarity(adapter(x), x).min() > 0.9
    torch.testing.assert_close(adapter(x), x + 0.2 * adapter.net(x))
