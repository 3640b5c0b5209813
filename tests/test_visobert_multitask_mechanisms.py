"""visobert_multitask: each mechanism of the original (hjsad1994/BERT @dc78076, multi_label/) reaches
what it should, and fails its test when it is removed or made inert. The table in
visobert_multitask/README.md ("Mechanisms") names the original's file and line for each one.

Losses are taken where the training step takes them (`compute_losses` with the settings
`config_from` builds from the command line); the schedule and the clipping through `main()`."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from common.checkpoint import load_run_checkpoint
from tests.run_helpers import VISOBERT_TINY_MODEL
from visobert_multitask import train as vsb_train
from visobert_multitask.data import ABSENT, NEGATIVE, NEUTRAL, POSITIVE
from visobert_multitask.losses import (
    compute_losses,
    original_alpha,
    positive_weights,
    soft_match_weights,
    supcon_multilabel,
)
from visobert_multitask.model import AspectSentimentModel

TINY = VISOBERT_TINY_MODEL
LABELS = torch.tensor([[POSITIVE, ABSENT, NEGATIVE], [POSITIVE, NEGATIVE, ABSENT], [ABSENT, NEUTRAL, NEGATIVE],
                       [NEGATIVE, ABSENT, ABSENT], [ABSENT, ABSENT, ABSENT], [POSITIVE, ABSENT, NEGATIVE]])


def _settings_and_model(*flags):
    """Settings as main() builds them from `flags`, and their model for 3 aspects (eval: no dropout)."""
    cfg = vsb_train.config_from(vsb_train.build_parser().parse_args([*TINY, "--dropout", "0", *flags]))
    model_cfg, _ = vsb_train.model_config(cfg, 40, LABELS.shape[1])
    torch.manual_seed(0)
    return cfg, AspectSentimentModel(model_cfg).eval()


def _batch(labels=LABELS) -> dict:
    ids = torch.randint(4, 40, (len(labels), 9), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool), "labels": labels}


def _focal_written_out(logits, targets, alpha, gamma):
    """FL = -alpha_t (1 - p_t)^gamma log p_t per (review, aspect), mean over reviews, then over aspects."""
    log_p = F.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]  # (N, A)
    per_slot = -alpha.gather(1, targets.T).T * (1 - log_p.exp()) ** gamma * log_p  # alpha[a, target[n, a]]
    return per_slot.mean(dim=0).mean()


def test_focal_is_averaged_over_aspects_so_the_weights_are_the_ratio():
    """train_multilabel_focal_contrastive.py:59-74 divides the summed per-aspect focal losses by the
    number of aspects, so `0.8 * focal + 0.2 * contrastive` (:80) is a 4:1 ratio. Summed, the focal
    term was A times heavier (40:1 with 10 aspects)."""
    cfg, model = _settings_and_model()
    batch = _batch()
    alpha = vsb_train.training_alpha({"train": batch_of(LABELS)})
    losses = compute_losses(model, batch, alpha, cfg.loss)
    logits, embeddings = model(batch["input_ids"], batch["attention_mask"], return_embeddings=True)
    torch.testing.assert_close(losses["focal"], _focal_written_out(logits, LABELS, alpha, cfg.loss.gamma))
    supcon = supcon_multilabel(embeddings, positive_weights(LABELS), cfg.loss.temperature)
    torch.testing.assert_close(losses["loss"], 0.8 * losses["focal"] + 0.2 * supcon)
    # The same reviews with every aspect listed twice: a mean does not move, a sum doubles.
    twice = _batch(torch.cat([LABELS, LABELS], dim=1))
    model_cfg, _ = vsb_train.model_config(cfg, 40, 6)
    wide = AspectSentimentModel(model_cfg).eval()
    with torch.no_grad():  # the wide classifier repeats the narrow one's rows: the same logits per copy
        state = model.state_dict()  # the last Linear's rows are (aspect, state) pairs, aspect-major
        state["classifier.3.weight"] = state["classifier.3.weight"].repeat(2, 1)
        state["classifier.3.bias"] = state["classifier.3.bias"].repeat(2)
        wide.load_state_dict(state)
    alpha_twice = alpha.repeat(2, 1)
    doubled = compute_losses(wide, twice, alpha_twice, cfg.loss)["focal"]
    torch.testing.assert_close(doubled, losses["focal"])


def batch_of(labels):
    """A split-like object holding only labels (training_alpha reads `.labels`)."""
    return type("Split", (), {"labels": labels})()


def test_focal_alpha_and_gamma_reach_the_training_loss():
    """utils.py:49-76 (FocalLoss: alpha_t (1-p_t)^gamma CE), alpha per aspect (train:65-67): the loss the
    step trains on is that formula; without alpha, or with gamma 0, it would be another number."""
    for flags in ([], ["--alpha-rule", "original"], ["--gamma", "0"]):
        cfg, model = _settings_and_model("--loss", "focal", *flags)
        alpha = vsb_train.training_alpha({"train": batch_of(LABELS)}, cfg.loss.alpha_power, cfg.loss.alpha_rule)
        batch = _batch()
        focal = compute_losses(model, batch, alpha, cfg.loss)["focal"]
        logits = model(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(focal, _focal_written_out(logits, LABELS, alpha, cfg.loss.gamma))
        without_alpha = _focal_written_out(logits, LABELS, torch.ones_like(alpha), cfg.loss.gamma)
        assert abs(focal - without_alpha) > 1e-3, flags  # alpha is not inert
        other_gamma = _focal_written_out(logits, LABELS, alpha, cfg.loss.gamma + 1.0)
        assert abs(focal - other_gamma) > 1e-3, flags  # gamma is not inert


def test_original_alpha_is_total_over_three_counts_per_aspect():
    """dataset_multilabel.py:98-123: per aspect, over Positive / Negative / Neutral with an unlabelled
    aspect read as Neutral (:109), alpha = total / (3 x count), a missing class counted once (:117)."""
    labels = torch.tensor([[ABSENT, ABSENT], [ABSENT, ABSENT], [ABSENT, ABSENT], [POSITIVE, ABSENT],
                           [POSITIVE, ABSENT], [NEGATIVE, ABSENT], [NEUTRAL, ABSENT], [ABSENT, ABSENT]])
    # aspect 0: 8 reviews; positive 2, negative 1, neutral 1 + 4 absent = 5
    # aspect 1: every review unlabelled: positive and negative missing (counted once), neutral 8
    expected = torch.tensor([[8 / 15, 8 / 6, 8 / 3, 8 / 15],  # absent, positive, negative, neutral
                             [8 / 24, 8 / 3, 8 / 3, 8 / 24]])
    torch.testing.assert_close(original_alpha(labels), expected)
    cfg, _ = _settings_and_model("--alpha-rule", "original")
    splits = {"train": batch_of(labels), "val": batch_of(labels[:1]), "test": batch_of(labels[:1])}
    alpha = vsb_train.training_alpha(splits, cfg.loss.alpha_power, cfg.loss.alpha_rule)
    torch.testing.assert_close(alpha, expected)
    # --alpha-power 1 is not that rule: 4 states, absent a class of its own, normalised to mean 1.
    cfg, _ = _settings_and_model("--alpha-power", "1")
    power_one = vsb_train.training_alpha(splits, cfg.loss.alpha_power, cfg.loss.alpha_rule)
    assert not torch.allclose(power_one, expected)


def _soft_match_written_out(embeddings, labels, base_weight, temperature):
    """model_multilabel_contrastive_v2.py:43-99, anchor by anchor, on the original's classes
    (0 positive, 1 negative, 2 neutral; unlabelled = neutral)."""
    original = {ABSENT: 2, POSITIVE: 0, NEGATIVE: 1, NEUTRAL: 2}
    classes = [[original[int(s)] for s in row] for row in labels]
    n, aspects = labels.shape
    z = F.normalize(embeddings, dim=-1)
    exp_sim = torch.exp(z @ z.T / temperature)
    total = 0.0
    for i in range(n):
        weighted, others = 0.0, 0.0
        for j in range(n):
            if j == i:
                continue
            w = sum((classes[i][a] == classes[j][a]) * (1 + (classes[i][a] != 2) * (classes[j][a] != 2))
                    for a in range(aspects)) / (aspects * 2.0) + base_weight
            weighted = weighted + w * exp_sim[i, j]
            others = others + exp_sim[i, j]
        total = total - torch.log(weighted / others)
    return total / n


def test_soft_match_contrastive_is_the_originals_loss():
    """`--contrastive original`: the original's soft-match loss (v2.py:54-99) with its base weight 0.1
    (config_multi.yaml:137) at temperature 0.1 (:136, train:327), as the training step computes it."""
    cfg, model = _settings_and_model("--contrastive", "original")
    assert (cfg.loss.temperature, cfg.loss.con_base_weight) == (0.1, 0.1)
    assert vsb_train.config_from(vsb_train.build_parser().parse_args(TINY)).loss.temperature == 0.07  # SupCon's
    # Hand-computed weights, 2 aspects: reviews 0 and 1 share an opinion (2 / 4), 0 and 2 an unmentioned
    # aspect read as neutral (1 / 4), 1 and 2 nothing; 0.1 on every pair, 0 on the diagonal.
    three = torch.tensor([[POSITIVE, ABSENT], [POSITIVE, NEGATIVE], [ABSENT, ABSENT]])
    torch.testing.assert_close(soft_match_weights(three, 0.1),
                               torch.tensor([[0.0, 0.6, 0.35], [0.6, 0.0, 0.1], [0.35, 0.1, 0.0]]))
    batch = _batch()
    alpha = vsb_train.training_alpha({"train": batch_of(LABELS)})
    losses = compute_losses(model, batch, alpha, cfg.loss)
    _, embeddings = model(batch["input_ids"], batch["attention_mask"], return_embeddings=True)
    torch.testing.assert_close(losses["supcon"], _soft_match_written_out(embeddings, LABELS, 0.1, 0.1))
    torch.testing.assert_close(losses["loss"], 0.8 * losses["focal"] + 0.2 * losses["supcon"])
    # Neither the base weight nor the matches are inert: each moves the loss.
    for other in (["--con-base-weight", "0.5"], ["--temperature", "0.5"]):
        cfg_other, _ = _settings_and_model("--contrastive", "original", *other)
        assert abs(compute_losses(model, batch, alpha, cfg_other.loss)["supcon"] - losses["supcon"]) > 1e-3, other
    shuffled = _batch(LABELS[torch.tensor([4, 2, 3, 0, 5, 1])])
    assert abs(compute_losses(model, shuffled, alpha, cfg.loss)["supcon"] - losses["supcon"]) > 1e-4


def _log_rows(path):
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "train"]


RUN = [*TINY, "--synthetic-train", "64", "--synthetic-val", "16", "--synthetic-test", "16", "--batch-size", "16",
       "--log-interval", "1", "--keep-checkpoints", "0"]


def test_warmup_cosine_schedule_is_what_the_steps_use(tmp_path):
    """train:354-362: cosine with 6% linear warm-up over the run's steps (get_cosine_schedule_with_warmup).
    The lr logged at each step of a real run is that function of the step; a constant lr fails."""
    results = vsb_train.main([*RUN, "--epochs", "2", "--lr", "0.01", "--warmup-steps", "3",
                              "--out", str(tmp_path / "run")])
    logged = [float(r["lr"]) for r in _log_rows(tmp_path / "run" / "log.csv")]
    total = results["step"]
    assert total == 8 and len(logged) == total, (total, logged)
    expected = [0.01 * (s + 1) / 3 if s < 3 else 0.01 * 0.5 * (1 + math.cos(math.pi * (s - 3) / (total - 3)))
                for s in range(total)]
    assert logged == pytest.approx(expected, rel=1e-4)  # log.csv keeps 6 significant digits


def test_gradient_clipping_reaches_the_update(tmp_path):
    """train:122 clips the gradient norm at 1.0 before every step. A run clipped to 1e-9 must end with
    other weights than the same run unclipped (an inert clip leaves them equal)."""
    finals = []
    for clip in ("1e-9", "0"):
        vsb_train.main([*RUN, "--max-iters", "3", "--grad-clip", clip, "--out", str(tmp_path / clip)])
        finals.append(load_run_checkpoint(tmp_path / clip / "last.pt", "visobert_multitask")["model"])
    moved = [(finals[0][k] - finals[1][k]).abs().max().item() for k in finals[0]]
    assert max(moved) > 1e-4
