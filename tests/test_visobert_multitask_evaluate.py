"""visobert_multitask end to end: what `train.evaluate` reports, in which mode it runs, and which
parameters each training loss term reaches.

Metric tests feed a stub model whose logits per review are fixed by a table through the real CSV
reader, tokenizer, dataset, evaluation loader and `evaluate` exactly as `main()` builds and calls
them, so every reported number is known by construction and written out below by hand.

There is no text augmentation in this project (token ids are computed once per review and no
token is dropped or replaced), so there is no training-only augmentation to check here."""

import math

import pytest
import torch
import torch.nn as nn

from common.runtime import EpochSampler, autocast_dtype, make_loader
from visobert_multitask import train as T
from visobert_multitask.data import build_tokenizer, encode_reviews, eval_loader, make_collate
from visobert_multitask.losses import compute_losses

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)

CPU = torch.device("cpu")
NAMES = {1: "Positive", 2: "Negative", 3: "Neutral"}
# Validation reviews: per aspect (true state, predicted state, best sentiment state).
# States: 0 absent, 1 positive, 2 negative, 3 neutral. The "best sentiment" is the argmax of the
# three sentiment logits; it differs from the prediction only where the prediction is "absent".
VAL = {
    #           BATTERY       CAMERA
    "one":   ((1, 1, 1), (0, 0, 1)),  # battery found, right sentiment
    "two":   ((2, 0, 2), (3, 3, 3)),  # battery missed (sentiment logits still right)
    "three": ((0, 3, 3), (2, 2, 2)),  # battery called present but absent
    "four":  ((3, 1, 1), (0, 0, 2)),  # battery found, wrong sentiment
    "five":  ((0, 0, 3), (1, 0, 3)),  # camera missed, and wrong sentiment logits
    "six":   ((1, 2, 2), (0, 0, 1)),  # battery found, wrong sentiment
}


def _slot_logits(predicted: int, sentiment: int) -> torch.Tensor:
    logits = torch.zeros(4)
    logits[predicted] = 5.0
    if predicted == 0:
        logits[sentiment] = 2.0  # the runner-up: what "sentiment given presence" reads
    return logits


def _write_split(path, reviews, aspects):
    lines = ["text," + ",".join(aspects)]
    for word, slots in reviews.items():
        lines.append(f"review {word}," + ",".join(NAMES.get(slot[0], "") for slot in slots))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class TableModel(nn.Module):
    """Stands in for AspectSentimentModel with evaluate()'s call interface,
    model(input_ids, attention_mask) -> (B, A, S) logits, looked up by the review's token ids.
    It records the mode of every call."""

    def __init__(self, logits_by_ids):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))  # so the stub has parameters like a model
        self.logits_by_ids, self.modes = logits_by_ids, []

    def forward(self, input_ids, attention_mask):
        self.modes.append(self.training)
        return torch.stack([self.logits_by_ids[tuple(ids[keep].tolist())]
                            for ids, keep in zip(input_ids, attention_mask)])


def _evaluate_stub(root, reviews, aspects):
    """Data, tokenizer and evaluation loader as main() builds them; evaluate() as validate() calls it."""
    root.mkdir()
    for split in ("train", "val", "test"):  # the word vocabulary comes from train: the same texts
        _write_split(root / f"{split}.csv", reviews, aspects)
    cfg = T.config_from(T.build_parser().parse_args(["--data-root", str(root), "--device", "cpu"]))
    splits = T.build_data(cfg)
    assert splits["train"].aspects == tuple(aspects)
    cfg.aspects, cfg.dtype = splits["train"].aspects, autocast_dtype(CPU, cfg.run.amp)
    tokenizer = build_tokenizer(cfg.encoder.encoder, texts=splits["train"].texts)
    # batches of 4 for 6 reviews: two batches, so results are gathered across batches
    loader = eval_loader(encode_reviews(splits["val"], tokenizer, cfg.data.max_len), tokenizer.pad_id, 4,
                         cfg.run.workers, cfg.run.seed)
    table = {tuple(tokenizer.encode(f"review {word}", cfg.data.max_len)):
             torch.stack([_slot_logits(predicted, sentiment) for _, predicted, sentiment in slots])
             for word, slots in reviews.items()}
    model = TableModel(table)
    metrics = T.evaluate(model, loader, cfg)
    return metrics, model


def test_evaluate_reports_hand_computed_detection_and_sentiment_scores(tmp_path):
    """Every score evaluate() returns (det_f1, sent_f1, f1_inflated go to log.csv, score picks
    best.pt) against values worked out by hand: detection F1 of "present" per aspect, macro over
    aspects; sentiment macro F1 over all present slots POOLED across aspects (not a mean of the
    per-aspect values), read from the sentiment logits even where the model said "absent"; the
    original's inflated number (absent = neutral, weighted F1 per aspect, mean over aspects)."""
    metrics, model = _evaluate_stub(tmp_path / "reviews", VAL, ["BATTERY", "CAMERA"])
    # BATTERY detection: present {one, two, four, six}, predicted {one, three, four, six}: 2*3/(4+4)
    # CAMERA detection: present {two, three, five}, predicted {two, three}: 2*2/(3+2)
    det = (6 / 8 + 4 / 5) / 2
    # Present slots (true -> sentiment read): B one 1->1, B two 2->2, B four 3->1, B six 1->2,
    # C two 3->3, C three 2->2, C five 1->3. Per class F1 = 2 TP / (support + predicted):
    # positive 2*1/(3+2), negative 2*2/(2+3), neutral 2*1/(2+2)
    sent = (2 / 5 + 4 / 5 + 2 / 4) / 3
    # Inflated (absent -> neutral): BATTERY F1 pos 1/2 (support 2), neg 0 (1), neu 2/3 (3);
    # CAMERA pos 0 (1), neg 1 (1), neu 8/9 (4); weighted by support, mean over the two aspects.
    inflated = ((2 * 1 / 2 + 1 * 0 + 3 * 2 / 3) / 6 + (1 * 0 + 1 * 1 + 4 * 8 / 9) / 6) / 2
    expected = {"det_f1": det, "sent_f1": sent, "f1_inflated": inflated, "score": (det + sent) / 2}
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-9), name
    # Per aspect: sentiment macro F1 over that aspect's present slots.
    battery, camera = metrics["per_aspect"]
    assert battery == pytest.approx({"aspect": "BATTERY", "det_f1": 6 / 8, "support": 4,
                                     "sent_f1": (2 * 1 / 4 + 2 * 1 / 3 + 0) / 3})  # pos, neg, neu
    assert camera == pytest.approx({"aspect": "CAMERA", "det_f1": 4 / 5, "support": 3,
                                    "sent_f1": (0 + 2 * 1 / 2 + 2 * 1 / 3) / 3})
    assert set(T._log_metrics(metrics)) == {"det_f1", "sent_f1", "f1_inflated"}
    assert T.scores(metrics) == pytest.approx(expected, abs=1e-9)  # results["val"] / results["test"]
    assert model.modes == [False, False]  # both batches scored in eval mode
    assert model.training  # and handed back ready to train


def test_evaluate_aspect_never_present_in_the_split(tmp_path):
    """An aspect no validation review mentions, correctly predicted absent everywhere: its row
    has support 0 and sentiment F1 NaN (nothing to score); it still counts in the detection macro
    average with F1 0 (no true and no predicted positive: zero_division 0, as scikit-learn), and
    it does not change the pooled sentiment F1."""
    reviews = {word: (*slots, (0, 0, 1)) for word, slots in VAL.items()}
    metrics, _ = _evaluate_stub(tmp_path / "reviews", reviews, ["BATTERY", "CAMERA", "PRICE"])
    price = metrics["per_aspect"][2]
    assert price["aspect"] == "PRICE" and price["support"] == 0 and price["det_f1"] == 0.0
    assert math.isnan(price["sent_f1"])
    assert metrics["det_f1"] == pytest.approx((6 / 8 + 4 / 5 + 0) / 3, abs=1e-9)
    assert metrics["sent_f1"] == pytest.approx((2 / 5 + 4 / 5 + 2 / 4) / 3, abs=1e-9)
    # inflated: PRICE is neutral == neutral everywhere, weighted F1 1
    inflated = ((2 * 1 / 2 + 3 * 2 / 3) / 6 + (1 + 4 * 8 / 9) / 6 + 1) / 3
    assert metrics["f1_inflated"] == pytest.approx(inflated, abs=1e-9)


TINY = ["--synthetic-train", "64", "--synthetic-val", "40", "--synthetic-test", "8", "--hidden", "32",
        "--layers", "2", "--heads", "2", "--intermediate", "64", "--batch-size", "16", "--device", "cpu"]


def _real_setup(argv):
    """Configuration, data, tokenizer, training loader and model as main() builds them."""
    cfg = T.config_from(T.build_parser().parse_args(argv))
    splits = T.build_data(cfg)
    cfg.aspects, cfg.dtype = splits["train"].aspects, autocast_dtype(CPU, cfg.run.amp)
    tokenizer = build_tokenizer(cfg.encoder.encoder, texts=splits["train"].texts)
    datasets = {k: encode_reviews(s, tokenizer, cfg.data.max_len) for k, s in splits.items()}
    sampler = EpochSampler(len(datasets["train"]), cfg.train.batch_size, shuffle=True, seed=cfg.run.seed)
    loader = make_loader(datasets["train"], sampler, cfg.run.workers, cfg.run.seed, 0, make_collate(tokenizer.pad_id))
    T.fill_recipe(cfg, sampler.batches_per_epoch())
    cfg.model, _ = T.model_config(cfg, len(tokenizer), len(cfg.aspects))
    return cfg, splits, datasets, tokenizer, loader, T.AspectSentimentModel(cfg.model)


def test_evaluate_runs_in_eval_mode_repeatably_and_returns_a_training_model():
    """evaluate() scores with every dropout off (encoder 0.3, attention 0.3, head 0.3): a second
    call gives the same scores, predict_split() (its logits) gives the same logits twice and the
    logits of the model in eval mode. The model comes back in training mode: train_one_epoch never
    calls train() itself, so a model left in eval mode would train without dropout after the first
    validation."""
    cfg, splits, datasets, tokenizer, _, model = _real_setup([*TINY, "--dropout", "0.3"])
    assert model.cfg.dropout == model.cfg.attention_dropout == 0.3 and model.cfg.head_dropout > 0
    loader = eval_loader(datasets["val"], tokenizer.pad_id)
    first = T.evaluate(model, loader, cfg)
    assert model.training and all(m.training for m in model.modules())
    second = T.evaluate(model, loader, cfg)
    assert repr(first) == repr(second)  # exact, NaN rows of aspects without support included
    logits, labels = T.predict_split(model, loader, cfg)
    logits_again, _ = T.predict_split(model, loader, cfg)
    assert torch.equal(logits, logits_again)
    assert model.training
    model.eval()
    with torch.no_grad():
        reference = torch.cat([model(b["input_ids"], b["attention_mask"]) for b in loader])
    torch.testing.assert_close(logits, reference)
    assert torch.equal(labels, splits["val"].labels)


# Which parameter groups each term of compute_losses must reach, per --loss mode (the design in
# losses.compute_losses and model.heads: one encoder pass feeds both heads; focal trains the
# classifier and the encoder, SupCon the projection and the encoder; with --loss contrastive the
# classifier is an online probe on detached sentence vectors, so its loss never reaches the encoder).
REACH = {
    "both": {"focal": {"encoder", "classifier"}, "supcon": {"encoder", "projection"},
             "loss": {"encoder", "classifier", "projection"}},
    "focal": {"focal": {"encoder", "classifier"}, "loss": {"encoder", "classifier"}},
    "contrastive": {"supcon": {"encoder", "projection"}, "probe": {"classifier"},
                    "loss": {"encoder", "classifier", "projection"}},
}


@pytest.mark.parametrize("mode,contrastive", [(mode, "supcon") for mode in REACH] + [("both", "original"),
                                                                                      ("contrastive", "original")])
def test_each_loss_term_moves_exactly_its_parameters(mode, contrastive):
    """Each term compute_losses() returns (one forward pass of a training batch, as
    train_one_epoch computes it) back-propagated alone: every parameter tensor of the groups it
    is meant to train gets a nonzero gradient, and no parameter of the other groups gets any.
    The same for the original's soft-match contrastive loss (`--contrastive original`)."""
    cfg, splits, _, _, loader, model = _real_setup([*TINY, "--loss", mode, "--contrastive", contrastive])
    alpha = T.training_alpha(splits, cfg.loss.alpha_power)
    batch = next(iter(loader))
    losses = compute_losses(model, batch, alpha, cfg.loss)
    assert set(losses) == set(REACH[mode])
    if "supcon" in losses:
        assert losses["supcon"] > 0  # the batch has positive pairs: the term is not a zero placeholder
    names, params = zip(*model.named_parameters())
    group_of = {n: n.split(".")[0] for n in names}
    assert set(group_of.values()) == {"encoder", "classifier", "projection"}
    for term, loss in losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        reached = {n for n, g in zip(names, grads) if g is not None and g.abs().sum() > 0}
        expected = {n for n in names if group_of[n] in REACH[mode][term]}
        assert reached == expected, (term, sorted(expected - reached)[:5], sorted(reached - expected)[:5])
