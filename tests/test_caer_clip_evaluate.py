"""caer_clip end to end: what evaluate() reports on inputs whose answer is known by construction,
evaluation without dropout (and training with it after a mid-epoch validation), which parameters
each loss term of total_loss trains, and augmentation in the training split only."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from caer_clip import train as caer_train
from caer_clip.losses import LossConfig, total_loss
from tests.fixtures_caer_clip import TINY_TRAIN, clip_batch, make_raer, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)

CPU = torch.device("cpu")
NUM_CLASSES = 5




def run_config(*flags: str):
    """The settings main() would run with for these flags."""
    return caer_train.config_from(caer_train.build_parser().parse_args(list(flags)))


# ----------------------------------------------------------------------------- reported metrics


class ScriptedModel(nn.Module):
    """Stands in for CAERModel with the call evaluate() makes, model(face, context) -> {"logits"}: each
    clip carries the class to predict in its first face pixel, so the logits are known exactly."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, face: torch.Tensor, context: torch.Tensor) -> dict:
        predicted = face[:, 0, 0, 0, 0].long()
        logits = self.scale * F.one_hot(predicted, self.num_classes).float() - 0.1 * context[:, 0, 0, 0, :1]
        return {"logits": logits}


def scripted_split(labels, predictions, fallbacks):
    """(face, context, label, fallbacks) samples in the dataset's format, tiny frames."""
    n = len(labels)
    face = torch.zeros(n, 2, 3, 4, 4)
    face[:, 0, 0, 0, 0] = torch.tensor(predictions, dtype=torch.float32)
    context = torch.rand(n, 2, 3, 4, 4)
    return torch.utils.data.TensorDataset(face, context, torch.tensor(labels), torch.tensor(fallbacks))


def test_evaluate_reports_hand_computed_uar_war_confusion_and_fallbacks():
    """evaluate(), through the loader main() builds, reports UAR as the mean recall over ALL five
    classes (class 3 is only predicted, class 4 absent from labels and predictions: both count
    with recall 0), WAR as plain accuracy, the full 5x5 confusion matrix and the summed box
    fallbacks, counting the clip of the last, partial batch too."""
    #             true 0: 2 of 3 right  true 1: 1 of 2  true 2: 3 of 4
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    predictions = [0, 0, 1, 1, 3, 2, 2, 0, 2]
    fallbacks = [0, 1, 0, 0, 2, 0, 0, 0, 4]
    cfg = run_config("--batch-size", "4")
    loader = caer_train.eval_loader(scripted_split(labels, predictions, fallbacks), cfg)  # 4 + 4 + 1
    metrics = caer_train.evaluate(ScriptedModel(NUM_CLASSES), loader, cfg)

    # recalls 2/3, 1/2, 3/4, 0, 0 over 5 classes: (8 + 6 + 9) / 12 / 5 = 23/60
    # (over the 3 classes present in the labels it would be 23/36; over the 4 seen anywhere 23/48)
    assert metrics["uar"] == pytest.approx(23 / 60)
    assert metrics["war"] == pytest.approx(6 / 9)
    assert metrics["fallbacks"] == 7
    expected_confusion = np.array([[2, 1, 0, 0, 0],
                                   [0, 1, 0, 1, 0],
                                   [1, 0, 3, 0, 0],
                                   [0, 0, 0, 0, 0],
                                   [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(metrics["confusion"], expected_confusion)
    assert caer_train.scores(metrics) == {"uar": pytest.approx(23 / 60), "war": pytest.approx(2 / 3)}


def test_evaluate_uar_weighs_classes_equally_war_weighs_clips():
    """Five clips of class 0 and one of each other class: all right gives UAR = WAR = 1 and a
    diagonal confusion matrix; the one clip of class 4 predicted as 0 costs UAR a whole class
    (4/5) but WAR one clip (8/9)."""
    labels = [0, 0, 0, 0, 0, 1, 2, 3, 4]
    cfg = run_config("--batch-size", "2")
    model = ScriptedModel(NUM_CLASSES)

    def evaluate(predictions):
        loader = caer_train.eval_loader(scripted_split(labels, predictions, [0] * 9), cfg)
        return caer_train.evaluate(model, loader, cfg)

    perfect = evaluate(labels)
    assert perfect["uar"] == 1.0 and perfect["war"] == 1.0
    np.testing.assert_array_equal(perfect["confusion"], np.diag([5, 1, 1, 1, 1]))
    metrics = evaluate(labels[:-1] + [0])
    assert metrics["uar"] == pytest.approx(4 / 5) and metrics["war"] == pytest.approx(8 / 9)
    assert metrics["confusion"][4].tolist() == [1, 0, 0, 0, 0] and metrics["confusion"][:, 0].sum() == 6


# ----------------------------------------------------------------------------- dropout and modes


def test_evaluate_runs_without_dropout_and_repeats_itself():
    """With dropout 0.5 in the temporal models, evaluate() sees exactly the logits of the model in
    eval mode, so a second call reports the same numbers and the same logits; the same model in
    train mode gives other logits (so dropout is live and would show)."""
    cfg = run_config("--dropout", "0.5", "--synthetic-val", "10", "--synthetic-train", "5",
                     "--synthetic-test", "5", "--batch-size", "4")
    model, splits = caer_train.build_model_and_data(cfg, CPU)
    assert model.head.training  # as main() receives it
    loader = caer_train.eval_loader(splits["val"], cfg)
    seen = []
    hook = model.register_forward_hook(lambda module, inputs, out: seen.append(out["logits"].detach().clone()))
    first = caer_train.evaluate(model, loader, cfg)
    first_logits, seen[:] = torch.cat(seen), []
    second = caer_train.evaluate(model, loader, cfg)
    second_logits = torch.cat(seen)
    hook.remove()

    assert (first["uar"], first["war"]) == (second["uar"], second["war"])
    np.testing.assert_array_equal(first["confusion"], second["confusion"])
    torch.testing.assert_close(first_logits, second_logits, rtol=0, atol=0)
    batches = list(loader)
    with torch.no_grad():
        model.eval()
        eval_logits = torch.cat([model(face, context)["logits"] for face, context, _, _ in batches])
        model.train()
        train_logits = torch.cat([model(face, context)["logits"] for face, context, _, _ in batches])
    torch.testing.assert_close(first_logits, eval_logits, rtol=0, atol=1e-6)
    assert (train_logits - eval_logits).abs().max() > 1e-3  # dropout 0.5 is live in train mode


def test_main_trains_with_dropout_and_validates_without_it_around_mid_epoch_validation(tmp_path, monkeypatch):
    """A run of main() validating after every step: every training forward of the temporal
    models runs with dropout on (train mode, also after a validation: evaluate() leaves the model
    in eval mode and the loop switches it back), every evaluation forward with dropout off."""
    calls = []
    build = caer_train.build_model_and_data

    def build_recording(cfg, device):
        model, splits = build(cfg, device)
        for module in model.head.modules():
            if isinstance(module, nn.Dropout):
                module.register_forward_pre_hook(
                    lambda m, inputs: calls.append((torch.is_grad_enabled(), m.training)))
        return model, splits

    monkeypatch.setattr(caer_train, "build_model_and_data", build_recording)
    caer_train.main(TINY_TRAIN + ["--val-interval", "1", "--dropout", "0.5", "--out", str(tmp_path / "run")])
    training = [mode for grad, mode in calls if grad]
    evaluation = [mode for grad, mode in calls if not grad]
    assert training and evaluation
    assert all(training), "a training step ran with dropout off"
    assert not any(evaluation), "an evaluation ran with dropout on"
    first_validation = next(i for i, (grad, _) in enumerate(calls) if not grad)
    assert any(grad for grad, _ in calls[first_validation:])  # training went on after a validation


# ----------------------------------------------------------------------------- loss terms -> parameters

PART_OF = [("prompt", ("prompt_learner.",)), ("adapter", ("head.adapter.",)),
           ("face_temporal", ("head.face_temporal.",)), ("context_temporal", ("head.context_temporal.",)),
           ("projection", ("head.projection.",)), ("image_encoder", ("clip.visual.",)),
           ("key_head", ("key_head.",)),
           ("text_encoder", ("clip.transformer.", "clip.token_embedding.", "clip.ln_final.",
                             "clip.positional_embedding", "clip.text_projection", "clip.logit_scale"))]
VISUAL = {"adapter", "face_temporal", "context_temporal", "projection", "image_encoder"}
TERMS = {  # term -> (component of total_loss, loss settings, parts it must train)
    "ce": ("cls", dict(cls_loss="ce"), VISUAL | {"prompt"}),
    "lsr": ("cls", dict(cls_loss="lsr"), VISUAL | {"prompt"}),
    "ldl": ("cls", dict(use_ldl=True, ldl_warmup=0), VISUAL | {"prompt"}),
    "mi": ("mi", {}, {"prompt"}),
    "dc": ("dc", {}, {"prompt"}),
    "moco": ("moco", {}, VISUAL | {"prompt"}),
}


def part_of(name: str) -> str:
    for part, prefixes in PART_OF:
        if name.startswith(prefixes):
            return part
    raise AssertionError(f"parameter {name} belongs to no part of the test's map")


@pytest.mark.parametrize("freeze_image_encoder", [False, True], ids=["image-trained", "image-frozen"])
@pytest.mark.parametrize("term", list(TERMS))
def test_each_loss_term_trains_exactly_its_parameters(term, freeze_image_encoder):
    """Back-propagating one weighted component of total_loss (as the training step computes it,
    after the auxiliary warm-up) gives a nonzero gradient to every tensor of the parts it must train
    and none to the others: CE / LSR / LDL reach the prompts and the whole visual path, MI and DC the
    prompt context only, MoCo (RAPT's MoCoRank: the video against its class text and the queued keys) the
    visual path and the prompts; the frozen text encoder, a frozen image encoder and the momentum head
    never get one."""
    component, settings, trains = TERMS[term]
    if freeze_image_encoder:
        trains = trains - {"image_encoder"}
    model = tiny_model(freeze_image_encoder=freeze_image_encoder)
    labels = torch.tensor([0, 1, 2])
    model.enqueue(model(*clip_batch(batch=5))["key"], torch.arange(5))  # real keys: the queue's negatives
    out = model(*clip_batch(batch=3))
    _, parts, weighted = total_loss(out, labels, labels, 1.0, 2, 2.0, LossConfig(**settings),
                                    (model.queue, model.queue_labels), step=0)
    assert parts[component] > 0
    if weighted[component].requires_grad:  # a term cut from the graph trains nothing: shown below
        weighted[component].backward()
    reached, silent = set(), []
    for name, p in model.named_parameters():
        part = part_of(name)
        if p.grad is not None and p.grad.abs().sum() > 0:
            reached.add(part)
        elif part in trains:
            silent.append(name)
    assert reached == trains, f"{term}: trains {sorted(reached)}, should train {sorted(trains)}"
    assert not silent, f"{term}: no gradient for {silent}"


# ----------------------------------------------------------------------------- augmentation


def first_sample(dataset, index: int = 0) -> torch.Tensor:
    face, context, _, _ = dataset[index]
    return torch.cat([face, context])


# what is left random -> flags; the RAER frames are constant in time, so frame sampling is not seen there
AUGMENTATIONS = {
    "frame-sampling": ["--no-flip", "--rotate-degrees", "0"],
    "flip": ["--flip", "--rotate-degrees", "0"],
    "rotation": ["--no-flip", "--rotate-degrees", "15"],
}


@pytest.mark.parametrize("augmentation", list(AUGMENTATIONS))
def test_augmentation_in_training_only(augmentation, tmp_path):
    """The training split built as main() builds it gives other frames / flips / rotations of the
    same clip in other epochs (the same ones again for the same epoch: exact resume); the validation
    and test splits give the same tensors at every read, whatever the epoch."""
    data = ["--synthetic-train", "4", "--synthetic-val", "3", "--synthetic-test", "3"]
    if augmentation != "frame-sampling":  # real frames on disk, the same in every frame of a clip
        make_raer(tmp_path, clips_per_class=2, box=(6, 8, 22, 28))
        data = ["--data-root", str(tmp_path), "--dataset", "raer", "--val-fraction", "0.5"]
    cfg = run_config(*data, *AUGMENTATIONS[augmentation])
    _, splits = caer_train.build_model_and_data(cfg, CPU)

    train = splits["train"]
    draws = []
    for epoch in range(6):
        train.set_epoch(epoch)
        draws.append(first_sample(train))
    train.set_epoch(0)
    torch.testing.assert_close(first_sample(train), draws[0], rtol=0, atol=0)  # (seed, epoch, clip) decide it
    assert any(not torch.allclose(draws[0], d, atol=1e-3) for d in draws[1:]), "training clips never change"

    for split in ("val", "test"):
        dataset = splits[split]
        reference = first_sample(dataset)
        for epoch in (0, 1, 2, 3, 4, 5):
            dataset.set_epoch(epoch)
            torch.testing.assert_close(first_sample(dataset), reference, rtol=0, atol=0, msg=f"{split} epoch {epoch}")
