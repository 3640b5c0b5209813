"""Each visobert_multitask fix: its symptom on the baseline behaviour, and its absence after the fix.

The baseline behaviour is reproduced here (the old lines, computed inline or kept as `_baseline_*`)."""

from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F

from visobert_multitask.data import ABSENT, NEGATIVE, NEUTRAL, POSITIVE, synthetic_splits
from visobert_multitask.losses import (
    NUM_STATES,
    aspect_focal_loss,
    focal_alpha,
    positive_weights,
    predicted_states,
    supcon_multilabel,
    training_targets,
)
from visobert_multitask.model import AspectSentimentModel, ModelConfig, hf_key_map, load_hf_encoder
from visobert_multitask.train import aspect_metrics, compute_losses, inflated_f1, training_alpha


def _baseline_supcon_per_anchor(embeddings, weights, temperature=0.07):
    """The baseline's SupCon before the mean: each anchor's loss divided by its positive count."""
    self_mask = torch.eye(embeddings.shape[0], dtype=torch.bool)
    logits = (embeddings @ embeddings.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = (logits - torch.logsumexp(logits, dim=1, keepdim=True)).masked_fill(self_mask, 0.0)
    pos = weights.masked_fill(self_mask, 0.0)
    return -(pos * log_prob).sum(dim=1) / pos.sum(dim=1)


def test_vsb_supcon_no_positive_anchor_is_skipped_not_nan():
    """VSB-SUPCON-NO-POSITIVE: one anchor without a positive made the baseline loss NaN."""
    embeddings = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    weights = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.5, 0.0], [0.0, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    baseline = _baseline_supcon_per_anchor(embeddings, weights)
    assert torch.isnan(baseline.mean())  # anchor 3 shares nothing with the rest of the batch
    fixed = supcon_multilabel(embeddings, weights)
    torch.testing.assert_close(fixed, baseline[:3].mean())  # the anchors that have a positive
    fixed.backward()
    assert torch.isfinite(embeddings.grad).all()
    lonely = supcon_multilabel(embeddings, torch.eye(4))  # no anchor has a positive
    assert lonely.item() == 0.0 and lonely.requires_grad
    full = torch.ones(4, 4)  # every anchor has positives: the fix changes nothing
    torch.testing.assert_close(supcon_multilabel(embeddings, full), _baseline_supcon_per_anchor(embeddings, full).mean())


def test_vsb_absent_state_not_mentioned_is_not_neutral():
    """VSB-ABSENT-STATE: the baseline trained "aspect not mentioned" and "neutral opinion" as one class."""
    labels = torch.tensor([[ABSENT, POSITIVE, ABSENT], [NEUTRAL, POSITIVE, ABSENT], [ABSENT, ABSENT, NEGATIVE]])
    baseline_targets = torch.where(labels == ABSENT, torch.full_like(labels, NEUTRAL), labels) - 1
    assert baseline_targets[0, 0] == baseline_targets[1, 0]  # no battery mention == "battery is so-so"
    targets = training_targets(labels)
    assert NUM_STATES == 4 and ModelConfig().num_states == 4
    assert targets[0, 0] != targets[1, 0]
    assert torch.equal(predicted_states(F.one_hot(targets, NUM_STATES).float()), labels)  # "absent" can be predicted
    # SupCon positives: the baseline rule made reviews 0 and 2 (no aspect in common) positives,
    # because they agree on the slots neither mentions.
    baseline_weights = (baseline_targets[:, None, :] == baseline_targets[None, :, :]).float().mean(dim=-1)
    assert baseline_weights[0, 2] > 0.3
    weights = positive_weights(targets)
    assert weights[0, 2] == 0.0 and weights[0, 1] == 0.5 and weights[1, 1] == 1.0  # Jaccard of present pairs
    assert positive_weights(torch.zeros(2, 3, dtype=torch.long)).sum() == 0  # no aspects: no positive


def _random_labels(n=300, aspects=4, present_rate=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randint(1, 4, (n, aspects), generator=g)
    return torch.where(torch.rand(n, aspects, generator=g) < present_rate, states, torch.zeros_like(states))


def test_vsb_honest_f1_model_that_detects_nothing_no_longer_scores_high():
    """VSB-HONEST-F1: the baseline's selection metric (absent = neutral, weighted F1 averaged over
    aspects) gives ~0.7 to a model that never detects an aspect; the fixed score gives it ~0."""
    labels = _random_labels()
    silent = F.one_hot(torch.zeros_like(labels), NUM_STATES).float() * 5  # always "absent"
    baseline_score = inflated_f1(labels, predicted_states(silent))
    assert baseline_score > 0.65
    metrics = aspect_metrics(labels, silent, ["A", "B", "C", "D"])
    assert metrics["det_f1"] == 0.0 and metrics["score"] < 0.4
    assert metrics["f1_inflated"] == baseline_score  # still reported, and labelled inflated
    perfect = aspect_metrics(labels, F.one_hot(labels, NUM_STATES).float(), ["A", "B", "C", "D"])
    assert perfect["det_f1"] == perfect["sent_f1"] == perfect["score"] == 1.0
    assert [row["support"] for row in perfect["per_aspect"]] == (labels != ABSENT).sum(0).tolist()


def test_honest_f1_agrees_with_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="cross-check needs scikit-learn")
    labels = _random_labels(seed=1)
    logits = torch.randn(*labels.shape, NUM_STATES, generator=torch.Generator().manual_seed(2))
    metrics = aspect_metrics(labels, logits, ["A", "B", "C", "D"])
    pred = logits.argmax(-1)
    detection = [sklearn_metrics.f1_score((labels[:, a] > 0).numpy(), (pred[:, a] > 0).numpy()) for a in range(4)]
    assert metrics["det_f1"] == pytest.approx(sum(detection) / 4)
    present = labels > 0
    sentiment = sklearn_metrics.f1_score(labels[present].numpy(), (logits[..., 1:].argmax(-1) + 1)[present].numpy(),
                                         average="macro")
    assert metrics["sent_f1"] == pytest.approx(sentiment)


def _mlm_checkpoint(cfg):
    """An HF-named encoder state dict without a pooler, like an XLM-R masked-LM checkpoint."""
    source = AspectSentimentModel(cfg)
    own = source.encoder.state_dict()
    return {hf: own[ours].clone() for ours, hf in hf_key_map(cfg).items()}, source


def test_vsb_cls_token_sentence_vector_comes_from_the_checkpoint_not_a_random_pooler():
    """VSB-CLS-TOKEN: with pooler_output, two runs loading the same pretrained checkpoint fed the
    heads different random tanh projections (the pooler is untrained); the first token's hidden
    state is fixed by the checkpoint alone."""
    cfg = ModelConfig(vocab_size=40, hidden=32, layers=1, heads=2, intermediate=64, max_positions=20, num_aspects=3)
    checkpoint, source = _mlm_checkpoint(cfg)
    ids = torch.randint(4, 40, (4, 10))
    mask = torch.ones_like(ids, dtype=torch.bool)
    vectors, baseline_vectors = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = AspectSentimentModel(cfg).eval()
        load_hf_encoder(model.encoder, checkpoint)
        baseline_pooler = torch.nn.Linear(32, 32)  # the baseline's pooler: whatever the seed drew
        with torch.no_grad():
            vectors.append(model.sentence_vector(ids, mask))
            baseline_vectors.append(torch.tanh(baseline_pooler(model.encoder(ids, mask)[:, 0])))
    assert F.cosine_similarity(*baseline_vectors).mean() < 0.5  # seed noise, not pretrained features
    torch.testing.assert_close(vectors[0], vectors[1])
    with torch.no_grad():
        torch.testing.assert_close(vectors[0], source.eval().encoder(ids, mask)[:, 0])
    assert not any("pooler" in name for name, _ in model.named_parameters())
    # A checkpoint that does carry a pooler loads, and its pooler is reported as unused.
    with_pooler = {**checkpoint, "pooler.dense.weight": torch.zeros(32, 32), "pooler.dense.bias": torch.zeros(32)}
    assert load_hf_encoder(model.encoder, with_pooler) == ["pooler.dense.bias", "pooler.dense.weight"]


def test_vsb_alpha_train_split_only_training_labels_set_focal_alpha():
    """VSB-ALPHA-TRAIN-SPLIT: the baseline's alpha moved when validation/test labels changed."""
    splits = synthetic_splits(200, 50, 50, seed=0)
    before = training_alpha(splits)

    def baseline_alpha():
        return focal_alpha(torch.cat([training_targets(s.labels) for s in splits.values()]), NUM_STATES)

    baseline_before = baseline_alpha()
    splits["test"].labels[:, 0] = NEGATIVE  # a different test set
    assert not torch.allclose(baseline_alpha(), baseline_before)  # test labels leak into training
    torch.testing.assert_close(training_alpha(splits), before)
    torch.testing.assert_close(before, focal_alpha(training_targets(splits["train"].labels), NUM_STATES))
    # Inverse frequency, mean 1 per aspect: the rare states weigh more than "absent".
    assert before.shape == (10, NUM_STATES) and (before[:, ABSENT] < before[:, NEUTRAL]).all()
    torch.testing.assert_close(before.mean(dim=1), torch.ones(10))


def test_vsb_one_pass_both_losses_from_a_single_encoder_pass():
    """VSB-ONE-PASS: the baseline ran the encoder once per loss (2 passes per step)."""
    cfg = ModelConfig(vocab_size=40, hidden=32, layers=1, heads=2, intermediate=64, max_positions=20, num_aspects=3)
    model = AspectSentimentModel(cfg).eval()  # no dropout, so both ways compute the same numbers
    passes = []
    model.encoder.register_forward_hook(lambda *_: passes.append(1))
    labels = torch.tensor([[1, 0, 2], [1, 0, 0], [0, 3, 2], [1, 0, 2]])
    batch = {"input_ids": torch.randint(4, 40, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.bool),
             "labels": labels}
    alpha = focal_alpha(training_targets(labels), NUM_STATES)
    args = Namespace(loss="both", w_focal=0.8, w_con=0.2, gamma=2.0, temperature=0.07)
    targets = training_targets(labels)
    # The baseline step, written out.
    logits = model(batch["input_ids"], batch["attention_mask"])
    focal = aspect_focal_loss(logits, targets, alpha)
    _, embeddings = model(batch["input_ids"], batch["attention_mask"], return_embeddings=True)
    baseline_total = 0.8 * focal + 0.2 * supcon_multilabel(embeddings, positive_weights(targets))
    assert len(passes) == 2
    passes.clear()
    losses = compute_losses(model, batch, alpha, args)
    assert len(passes) == 1
    torch.testing.assert_close(losses["loss"], baseline_total)
    for mode in ("focal", "contrastive"):
        passes.clear()
        compute_losses(model, batch, alpha, Namespace(**{**vars(args), "loss": mode}))
        assert len(passes) == 1, mode
