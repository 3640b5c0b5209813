"""deepfake_effnet_lstm end to end: what `train.evaluate` reports, in which mode it runs, which
parameters the training losses reach, and where augmentation happens.

Metric tests feed a stub detector whose P(fake) per (video, clip) is fixed by a table through the
real index reader, split, dataset, loader and `evaluate` exactly as `main()` builds and calls
them, so every reported number is known by construction and written out below by hand."""

import math

import pytest
import torch
import torch.nn as nn

from common.checkpoint import load_run_checkpoint
from deepfake_effnet_lstm import data as D
from deepfake_effnet_lstm import model as M
from deepfake_effnet_lstm import train as T
from tests.fixtures_deepfake_effnet_lstm import TINY_ARGS, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)

# the real detector on the synthetic videos, as small as it runs: 16 px frames, LSTM width 8
SMALL = [*TINY_ARGS, "--image-size", "16", "--lstm-hidden", "8", "--device", "cpu"]
FRAMES_PER_VIDEO = 8  # frames on disk per fixture video
# The validation split: three real and two fake videos, two evaluation clips each, P(fake) per clip.
VAL_PROBS = {
    "r0": (0.15, 0.95),  # mean 0.55: a real video called fake
    "r1": (0.30, 0.74),  # mean 0.52: a real video called fake
    "r2": (0.05, 0.25),  # mean 0.15
    "f0": (0.60, 0.36),  # mean 0.48: a fake video called real
    "f1": (0.65, 0.85),  # mean 0.75
}
VAL_LABELS = {"r0": "real", "r1": "real", "r2": "real", "f0": "fake", "f1": "fake"}




def _fixture(root):
    """Index with a split column: train 3 real + 1 fake (class weights 2/3 and 2), the validation
    videos above, a small test split. Returns the CSV row order (red channel of a frame = 10 x row)."""
    videos = [{"video": f"t{i}", "label": "fake" if i == 3 else "real", "split": "train"} for i in range(4)]
    videos += [{"video": v, "label": VAL_LABELS[v], "split": "val"} for v in VAL_PROBS]
    videos += [{"video": "s0", "label": "real", "split": "test"}, {"video": "s1", "label": "fake", "split": "test"}]
    write_dataset(root, videos, frames=FRAMES_PER_VIDEO, size=8)
    return [v["video"] for v in videos]


def _cfg(argv):
    """The configuration exactly as main() builds it."""
    return T.config_from(T.build_parser().parse_args(argv))


def _datasets(cfg):
    """The splits as main() builds them; the class weights go into cfg, as main() puts them."""
    datasets, class_weights, info = T.make_datasets(cfg.data, cfg.run.seed)
    cfg.class_weights = class_weights
    return datasets, class_weights, info


def _evaluate(model, dataset, cfg):
    """(metrics, labels, P(fake)) of a split, through the loader, score and evaluate main() uses."""
    loader = T.eval_loader(dataset, cfg)
    scores = T.score(model, loader, cfg)
    return T.evaluate(model, loader, cfg), scores["label"], scores["p_fake"]


class TableDetector(nn.Module):
    """Stands in for DeepfakeDetector with evaluate()'s call interface, model(frames) -> logits.

    The video of a sequence is read from its frames (red = 10 x CSV row, green = 10 x frame index,
    see write_dataset), the clip from its first frame index; P(fake) comes from `probs` and is
    returned as 2 logits (log(1-p), log p), or as 1 logit (logit p). It records the mode of
    every call."""

    def __init__(self, probs, row_names, first_frame_to_clip, num_logits=2):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))  # so the stub has parameters like a model
        self.probs, self.row_names, self.first_frame_to_clip = probs, row_names, first_frame_to_clip
        self.num_logits, self.modes = num_logits, []

    def forward(self, frames):
        self.modes.append(self.training)
        pixel = (D.denormalize(frames[:, 0])[:, :2, 0, 0] * 255 / 10).round().long()  # [B, (row, frame)]
        p = torch.tensor([self.probs[self.row_names[row]][self.first_frame_to_clip[frame]]
                          for row, frame in pixel.tolist()], dtype=torch.float64)
        if self.num_logits == 1:
            return torch.logit(p).float().unsqueeze(1)  # [B, 1]
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1).float()  # [B, 2]


def _stub(root, probs, num_logits=2):
    rows = _fixture(root)
    cfg = _cfg(["--data-root", str(root), "--frames", "2", "--image-size", "8", "--eval-clips", "2",
                "--batch-size", "3", "--device", "cpu", "--num-logits", str(num_logits)])
    datasets, class_weights, _ = _datasets(cfg)
    # the first frame of evaluation clip c of an 8-frame video, T = 2
    first_frame_to_clip = {D.sequence_frame_ids(FRAMES_PER_VIDEO, 2, (c + 0.5) / 2)[0]: c for c in range(2)}
    assert len(first_frame_to_clip) == 2
    model = TableDetector(probs, rows, first_frame_to_clip, num_logits)
    return model, datasets, class_weights, cfg


def test_evaluate_reports_hand_computed_sequence_and_video_metrics(tmp_path):
    """Every number evaluate() returns for the validation split (what validate() logs) against
    values worked out by hand: the class-weighted loss, accuracy / weighted precision / weighted F1
    at threshold 0.5, ROC-AUC and AP ranking P(fake), per sequence and per video, where a video's
    score is the MEAN P(fake) of its clips (batches of 3 cut videos in two on purpose)."""
    model, datasets, class_weights, cfg = _stub(tmp_path / "d", VAL_PROBS)
    torch.testing.assert_close(class_weights, torch.tensor([2 / 3, 2.0]))  # train: 3 real, 1 fake
    metrics, labels, probs = _evaluate(model, datasets["val"], cfg)

    # sample order: clip (0, 1) of r0, r1, r2, f0, f1; fake = 1
    assert labels.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    torch.testing.assert_close(probs, torch.tensor([0.15, 0.95, 0.30, 0.74, 0.05, 0.25, 0.60, 0.36, 0.65, 0.85]))
    # loss: sum_i w_{y_i} (-log p_i(y_i)) / sum_i w_{y_i}, w_real = 2/3, w_fake = 2
    real_nll = -(math.log(0.85) + math.log(0.05) + math.log(0.70) + math.log(0.26) + math.log(0.95) + math.log(0.75))
    fake_nll = -(math.log(0.60) + math.log(0.36) + math.log(0.65) + math.log(0.85))
    expected = {
        "loss": (2 / 3 * real_nll + 2 * fake_nll) / (6 * 2 / 3 + 4 * 2),
        # per sequence: called fake = {.95, .74 (real), .60, .65, .85 (fake)}
        "acc": 7 / 10,
        "precision": (6 * 4 / 5 + 4 * 3 / 5) / 10,  # real 4/5 (support 6), fake 3/5 (support 4)
        "f1": (6 * 8 / 11 + 4 * 2 / 3) / 10,  # real 2*4/(6+5), fake 2*3/(4+5)
        "roc_auc": 17 / 24,  # fakes above reals: .60 -> 4, .36 -> 4, .65 -> 4, .85 -> 5 of 6
        "ap": (1 / 2 + 1 / 2 + 3 / 5 + 4 / 6) / 4,  # precision where each fake is reached: .85, .65, .60, .36
        # per video, means r0 .55, r1 .52, r2 .15, f0 .48, f1 .75: called fake = r0, r1, f1
        "video_acc": 2 / 5,
        "video_precision": (3 * 1 / 2 + 2 * 1 / 3) / 5,  # real 1/2 (support 3), fake 1/3 (support 2)
        "video_f1": (3 * 2 / 5 + 2 * 2 / 5) / 5,  # real 2*1/(3+2), fake 2*1/(2+3)
        "video_roc_auc": 4 / 6,  # f0 .48 > r2 only, f1 .75 > all three
        "video_ap": (1 / 1 + 2 / 4) / 2,  # f1 first (1/1), f0 fourth (2/4)
    }
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-5), name
    assert set(metrics) <= set(T.LOG_COLUMNS)  # every reported number has its column in log.csv


@pytest.mark.parametrize("num_logits", [2, 1])
def test_evaluate_orientation_fake_is_the_positive_class(tmp_path, num_logits):
    """P(fake) is the positive score and fake = 1, with 2 logits (softmax) and 1 logit (sigmoid):
    a detector that scores fakes high gets ROC-AUC / AP / accuracy 1, per sequence and per video;
    one that scores them low gets ROC-AUC 0 and accuracy 0."""
    high = {v: (0.9, 0.8) if VAL_LABELS[v] == "fake" else (0.1, 0.2) for v in VAL_PROBS}
    low = {v: (0.1, 0.2) if VAL_LABELS[v] == "fake" else (0.9, 0.8) for v in VAL_PROBS}
    model, datasets, class_weights, cfg = _stub(tmp_path / "d", high, num_logits)
    good = _evaluate(model, datasets["val"], cfg)[0]
    for name in ("acc", "roc_auc", "ap", "video_acc", "video_roc_auc", "video_ap"):
        assert good[name] == pytest.approx(1.0), name
    model.probs = low
    bad = _evaluate(model, datasets["val"], cfg)[0]
    for name in ("acc", "roc_auc", "video_acc", "video_roc_auc"):
        assert bad[name] == 0.0, name
    assert bad["loss"] > good["loss"]


def test_evaluate_runs_in_eval_mode_repeatably_and_returns_a_training_model():
    """evaluate() scores with dropout off and BatchNorm on running statistics: the real detector
    with dropout 0.5 gives the same result on a second call and the probabilities of the model in
    eval mode. It hands the model back in training mode, which train_one_epoch relies on (it calls
    train() only at the start of an epoch and validations happen mid-epoch), and leaves the global
    RNG (the dropout stream of training) where it was."""
    cfg = _cfg([*SMALL, "--dropout", "0.5"])
    datasets, class_weights, _ = _datasets(cfg)
    model = M.DeepfakeDetector(cfg.model)
    rng = torch.get_rng_state()
    first, labels, probs = _evaluate(model, datasets["val"], cfg)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(m.training for m in model.modules())
    second, _, probs_again = _evaluate(model, datasets["val"], cfg)
    assert first == second
    assert torch.equal(probs, probs_again)
    model.eval()
    loader = torch.utils.data.DataLoader(datasets["val"], batch_size=cfg.train.batch_size)
    with torch.no_grad():
        reference = torch.cat([M.fake_probability(model(batch["frames"])) for batch in loader])
    torch.testing.assert_close(probs, reference)


def test_evaluate_calls_the_model_in_eval_mode_only(tmp_path):
    """Every forward pass evaluate() makes sees model.training == False, and the model is back in
    training mode afterwards."""
    model, datasets, class_weights, cfg = _stub(tmp_path / "d", VAL_PROBS)
    T.evaluate(model, T.eval_loader(datasets["val"], cfg), cfg)
    assert model.modes == [False] * 4  # 10 sequences in batches of 3
    assert model.training


@pytest.mark.parametrize("attention,num_logits", [("gate", 2), ("cbam", 1)])
def test_training_step_moves_backbone_attention_lstm_and_head(tmp_path, monkeypatch, attention, num_logits):
    """One optimizer step of main() on the class-weighted CE (2 logits) or BCE (1 logit) loss
    changes every parameter tensor of the EfficientNet backbone, the attention module inside it,
    the LSTM and the head: the classification gradient reaches all of them (nothing is frozen)."""
    initial = {}

    class Recorded(M.DeepfakeDetector):
        def __init__(self, cfg):
            super().__init__(cfg)
            initial.update({n: p.detach().clone() for n, p in self.named_parameters()})

    monkeypatch.setattr(M, "DeepfakeDetector", Recorded)
    T.main([*SMALL, "--max-iters", "1", "--attention", attention, "--num-logits", str(num_logits),
            "--out", str(tmp_path / "run")])
    trained = load_run_checkpoint(tmp_path / "run" / "last.pt", T.PROJECT)["model"]
    unmoved = [name for name, before in initial.items() if torch.equal(trained[name], before)]
    assert unmoved == []
    parts = {name.split(".")[0] for name in initial}
    assert parts == {"features", "attention", "lstm", "head"}  # each part exists and was checked


def test_attention_loss_trains_the_attention_and_the_backbone_below_it_only():
    """The attention mask loss (train_one_epoch's second term) reaches the attention module and
    the backbone stages up to the attention stage, and nothing after it: not the later stages, the
    LSTM or the head, which only the classification loss trains."""
    cfg = _cfg(SMALL)
    datasets, _, _ = _datasets(cfg)
    stage = cfg.model.attention_stage
    model = M.DeepfakeDetector(cfg.model)
    batch = next(iter(torch.utils.data.DataLoader(datasets["train"], batch_size=2)))
    _, attention_map = model(batch["frames"], return_attention=True)
    loss = M.attention_loss(attention_map, batch["mask"])
    names, params = zip(*model.named_parameters())
    grads = dict(zip(names, torch.autograd.grad(loss, params, allow_unused=True)))
    reached = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
    below = {n for n in names if n.startswith("attention.")
             or (n.startswith("features.") and int(n.split(".")[1]) <= stage)}
    assert reached == below


def test_augmentation_happens_in_training_only():
    """As train.py builds the splits: a training sequence is redrawn every epoch (set_epoch), while
    validation and test sequences are the plain frames at every epoch and on every draw, whatever
    --augment says. Each video has exactly T frames, so the frame offset cannot vary and any change
    of a training item is the augmentation."""
    tiny = [*TINY_ARGS, "--synthetic-frames", "4", "--frames", "4"]
    augmented, _, _ = _datasets(_cfg(tiny))
    plain, _, _ = _datasets(_cfg([*tiny, "--no-augment"]))
    item = lambda ds, epoch, i: (ds.set_epoch(epoch), ds[i]["frames"])[1]
    for i in range(len(augmented["train"])):
        assert not torch.allclose(item(augmented["train"], 0, i), item(augmented["train"], 1, i)), i
        assert not torch.allclose(item(augmented["train"], 1, i), item(plain["train"], 1, i)), i
        torch.testing.assert_close(item(plain["train"], 0, i), item(plain["train"], 1, i))
    for split in ("val", "test"):
        for i in range(len(augmented[split])):
            reference = item(plain[split], 0, i)
            for epoch in (0, 1, 7):
                torch.testing.assert_close(item(augmented[split], epoch, i), reference)
                torch.testing.assert_close(item(augmented[split], epoch, i), reference)  # a second draw


def test_training_loop_redraws_training_sequences_every_epoch(tmp_path, monkeypatch):
    """Inside main()'s loop a training sequence drawn in epoch 0 and again in epoch 1 is a new
    draw (the loop moves the dataset to each epoch), while the validations at the end of epoch 0
    and at the last step score identical validation sequences."""
    seen = []
    real_getitem = D.VideoSequenceDataset.__getitem__

    def recording_getitem(self, index):
        item = real_getitem(self, index)
        seen.append((self.train, self.epoch, index, item["frames"]))
        return item

    monkeypatch.setattr(D.VideoSequenceDataset, "__getitem__", recording_getitem)
    # 4 training videos in batches of 2: epoch 0 is steps 1-2 (validated at its end), step 3 is in epoch 1
    T.main([*SMALL, "--synthetic-train", "4", "--max-iters", "3", "--out", str(tmp_path / "run")])
    train, val = {}, {}
    for is_train, epoch, index, frames in seen:
        if is_train:
            train.setdefault(index, {})[epoch] = frames
        else:
            val.setdefault(index, []).append(frames)
    twice = [index for index, by_epoch in train.items() if set(by_epoch) == {0, 1}]
    assert len(twice) == 2  # the one batch of epoch 1
    for index in twice:
        assert not torch.allclose(train[index][0], train[index][1]), index
    assert len(val) == 4 and all(len(draws) == 2 for draws in val.values())  # two validations
    for draws in val.values():
        torch.testing.assert_close(draws[0], draws[1])
