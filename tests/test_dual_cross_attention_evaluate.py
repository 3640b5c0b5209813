"""dual_cross_attention end to end: what evaluate() reports on logits known by construction (SA,
GLCA and the SA + GLCA inference), evaluation without drop-path and the train mode main() relies
on afterwards, which parameters each branch loss and the uncertainty weights train, and
augmentation in the training split only."""

import math

import pytest
import torch
import torch.nn as nn
from PIL import Image

from common.runtime import DistInfo, make_loader
from dual_cross_attention import train as dcal_train
from dual_cross_attention.data import DataConfig, build_datasets
from dual_cross_attention.model import DCAL, compute_losses
from tests.fixtures_dual_cross_attention import run_config, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)

CFG = run_config()  # what evaluate() reads: the CPU, fp32

# ----------------------------------------------------------------------------- reported metrics

# Class probabilities per image (the stub's logits are their logs, so softmax gives them back).
#            label  SA probabilities      GLCA probabilities      SA  GLCA  SA+GLCA (sum of logits)
SCRIPT = [(0, [0.90, 0.05, 0.05], [0.01, 0.49, 0.50]),  # 0   2     0 [.91 .54 .55]  (2: .009 .0245 .025)
          (1, [0.20, 0.70, 0.10], [0.20, 0.70, 0.10]),  # 1   1     1
          (2, [0.50, 0.10, 0.40], [0.10, 0.10, 0.80]),  # 0   2     2 [.6 .2 1.2]
          (2, [0.10, 0.60, 0.30], [0.10, 0.25, 0.65]),  # 1   2     2 [.2 .85 .95]
          (0, [0.30, 0.60, 0.10], [0.55, 0.05, 0.40]),  # 1   0     0 [.85 .65 .5]
          (1, [0.10, 0.30, 0.60], [0.10, 0.30, 0.60])]  # 2   2     2
# right: SA 2 of 6 (images 0, 1), GLCA 4 of 6 (1-4), SA+GLCA probabilities 5 of 6 (0-4)


class ScriptedDCAL(nn.Module):
    """Stands in for DCAL with the call evaluate() makes, model(images, partner=None) -> {"sa",
    "glca"(, "pwca")}: the image's first pixel holds its row of SCRIPT, whose log-probabilities
    are the logits. A partner (PWCA) would add confidently wrong logits."""

    def __init__(self, glca: bool = True):
        super().__init__()
        self.glca = glca
        self.sa_logits = nn.Parameter(torch.tensor([row[1] for row in SCRIPT]).log())
        self.glca_logits = nn.Parameter(torch.tensor([row[2] for row in SCRIPT]).log())
        self.partners = []

    def forward(self, images, partner=None, need_rollout=False):
        row = images[:, 0, 0, 0].long()
        out = {"sa": self.sa_logits[row]}
        if self.glca:
            out["glca"] = self.glca_logits[row]
        self.partners.append(partner)
        if partner is not None:
            out["pwca"] = 20.0 * torch.ones_like(out["sa"]).scatter(1, torch.tensor([[2]] * len(row)), -1.0)
        return out


def scripted_val_loader(batch_size: int):
    """The validation loader as main() builds it, over (image, label, index) samples of SCRIPT."""
    images = torch.zeros(len(SCRIPT), 3, 4, 4)
    images[:, 0, 0, 0] = torch.arange(len(SCRIPT), dtype=torch.float32)
    labels = torch.tensor([row[0] for row in SCRIPT])
    splits = {"val": torch.utils.data.TensorDataset(images, labels, torch.arange(len(SCRIPT)))}
    samplers = dcal_train.build_samplers(splits, batch_size, 0, DistInfo())
    return make_loader(splits["val"], samplers["val"], workers=0, seed=0)


def test_evaluate_reports_hand_computed_top1_of_sa_glca_and_their_probability_sum():
    """evaluate() reports top1_sa = 2/6, top1_glca = 4/6 and top1 = 5/6 from the SUM OF SA AND
    GLCA PROBABILITIES (the sum of logits would give 4/6), over every image including the last,
    partial batch, and without a PWCA partner (PWCA is training only)."""
    model = ScriptedDCAL()
    metrics = dcal_train.evaluate(model, scripted_val_loader(batch_size=4), CFG)  # batches of 4 + 2
    assert metrics == {"top1": pytest.approx(5 / 6), "top1_sa": pytest.approx(2 / 6),
                       "top1_glca": pytest.approx(4 / 6)}
    assert model.partners == [None, None]


def test_evaluate_without_glca_reports_sa_as_the_prediction():
    """With no GLCA branch, top1 is SA's top-1 (2/6) and no GLCA number is reported."""
    metrics = dcal_train.evaluate(ScriptedDCAL(glca=False), scripted_val_loader(batch_size=5), CFG)
    assert metrics == {"top1": pytest.approx(2 / 6), "top1_sa": pytest.approx(2 / 6)}


# ----------------------------------------------------------------------------- drop-path and modes


def test_evaluate_runs_without_drop_path_repeats_itself_and_leaves_train_mode():
    """With drop-path 0.5, evaluate() sees exactly the logits of the model in eval mode, so a
    second call gives the same numbers and logits; the model in train mode gives other logits
    (drop-path is live and would show). Afterwards the model and all its parts are back in train
    mode, which main()'s training loop relies on after a mid-epoch validation."""
    model = DCAL(tiny_cfg(num_classes=4, drop_path=0.5))
    splits, _ = build_datasets(DataConfig(synthetic_train=4, synthetic_val=12, synthetic_test=4,
                                          synthetic_classes=4), 16, seed=0)
    samplers = dcal_train.build_samplers(splits, 5, 0, DistInfo())
    loader = make_loader(splits["val"], samplers["val"], workers=0, seed=0)
    seen = []
    hook = model.register_forward_hook(
        lambda module, inputs, out: seen.append(torch.cat([out["sa"], out["glca"]], dim=1).detach().clone()))
    first = dcal_train.evaluate(model, loader, CFG)
    first_logits, seen[:] = torch.cat(seen), []
    assert model.training and all(m.training for m in model.modules())
    second = dcal_train.evaluate(model, loader, CFG)
    second_logits = torch.cat(seen)
    hook.remove()

    assert first == second and set(first) == {"top1", "top1_sa", "top1_glca"}
    torch.testing.assert_close(first_logits, second_logits, rtol=0, atol=0)
    images = torch.cat([batch[0] for batch in loader])
    with torch.no_grad():
        model.eval()
        eval_out = model(images)
        model.train()
        train_out = model(images)
    torch.testing.assert_close(first_logits, torch.cat([eval_out["sa"], eval_out["glca"]], dim=1), rtol=0, atol=1e-5)
    assert (train_out["sa"] - eval_out["sa"]).abs().max() > 1e-3  # drop-path 0.5 is live in train mode


def test_main_trains_in_train_mode_and_validates_in_eval_mode_around_mid_epoch_validation(tmp_path, monkeypatch):
    """A run of main() validating after every step: every training forward runs in train mode
    (drop-path on), also after a validation, and every evaluation forward in eval mode."""
    calls = []

    def recording_dcal(cfg):
        model = DCAL(cfg)
        model.register_forward_pre_hook(lambda m, inputs: calls.append((torch.is_grad_enabled(), m.training)))
        return model

    monkeypatch.setattr(dcal_train.model_lib, "DCAL", recording_dcal)
    dcal_train.main(["--synthetic-train", "32", "--synthetic-val", "8", "--synthetic-test", "8",
                     "--synthetic-classes", "4", "--image-size", "16", "--embed-dim", "16", "--depth", "2",
                     "--heads", "2", "--batch-size", "8", "--epochs", "1", "--val-interval", "1",
                     "--drop-path", "0.3", "--num-overlays", "0", "--out", str(tmp_path / "run")])
    training = [mode for grad, mode in calls if grad]
    evaluation = [mode for grad, mode in calls if not grad]
    assert len(training) == 4 and evaluation
    assert all(training), "a training step ran in eval mode (drop-path off)"
    assert not any(evaluation), "an evaluation ran in train mode (drop-path on)"
    first_validation = next(i for i, (grad, _) in enumerate(calls) if not grad)
    assert any(grad for grad, _ in calls[first_validation:])  # training went on after a validation


# ----------------------------------------------------------------------------- loss terms -> parameters


def part_of(name: str, depth: int) -> str:
    if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
        return "embedding"
    if name.startswith(f"blocks.{depth - 1}."):
        return "last_block"
    if name.startswith("blocks."):
        return "lower_blocks"
    if name.startswith(("norm.", "head.")):
        return "sa_head"
    if name.startswith(("glca_block.", "glca_norm.", "glca_head.")):
        return "glca"
    if name.startswith("loss_weighting."):
        return "loss_weights"
    raise AssertionError(f"parameter {name} belongs to no part of the test's map")


BACKBONE = {"embedding", "lower_blocks", "last_block", "sa_head"}
TRAINS = {
    "sa": BACKBONE,
    "pwca": BACKBONE,  # its own token stream through the shared SA blocks, norm and classifier
    # GLCA runs beside the last SA block, on its input: the blocks below it, its own block, norm and head
    "glca": {"embedding", "lower_blocks", "glca"},
}


def dcal_batch(num_classes: int = 5):
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3]) % num_classes


@pytest.mark.parametrize("branch", list(TRAINS))
def test_each_branch_loss_trains_exactly_its_parameters(branch):
    """Back-propagating one branch's cross-entropy from compute_losses (the training step's
    function, PWCA on) gives a nonzero gradient to every tensor of the parts that branch must train
    and none to the others: SA and PWCA reach the shared ViT, its norm and classifier but not GLCA;
    GLCA reaches its own block, norm and classifier and the blocks below the last, not the SA head."""
    model = DCAL(tiny_cfg(depth=3))
    images, labels = dcal_batch()
    _, parts, _ = compute_losses(model, images, labels, use_pwca=True)
    assert set(parts) == {"sa", "glca", "pwca"}
    if parts[branch].requires_grad:  # a loss cut from the graph trains nothing: shown below
        parts[branch].backward()
    reached, silent = set(), []
    for name, p in model.named_parameters():
        part = part_of(name, model.cfg.depth)
        if p.grad is not None and p.grad.abs().sum() > 0:
            reached.add(part)
        elif part in TRAINS[branch]:
            silent.append(name)
    assert reached == TRAINS[branch], f"{branch}: trains {sorted(reached)}, should train {sorted(TRAINS[branch])}"
    assert not silent, f"{branch}: no gradient for {silent}"


def test_uncertainty_weights_each_log_variance_learns_and_scales_its_own_branch():
    """The total of compute_losses weights branch i by 0.5 exp(-s_i) and adds 0.5 s_i: each
    log-variance s_i gets the gradient 0.5 (1 - exp(-s_i) L_i) of its own branch's loss L_i, and
    a GLCA-only parameter gets 0.5 exp(-s_glca) times the GLCA loss's gradient, the SA classifier
    0.5 exp(-s_sa) x SA's + 0.5 exp(-s_pwca) x PWCA's."""
    model = DCAL(tiny_cfg())
    with torch.no_grad():
        model.loss_weighting.raw_log_vars.copy_(torch.tensor([0.3, -0.2, 0.7]))  # sa, glca, pwca
    images, labels = dcal_batch()
    total, parts, _ = compute_losses(model, images, labels, use_pwca=True)
    log_vars = model.loss_weighting.raw_log_vars
    wanted = [log_vars, model.glca_head.weight, model.head.weight]
    grads = dict(zip(("total", "sa", "glca", "pwca"), (
        torch.autograd.grad(loss, wanted, retain_graph=True, allow_unused=True)
        for loss in (total, parts["sa"], parts["glca"], parts["pwca"]))))

    for i, (branch, s) in enumerate(zip(("sa", "glca", "pwca"), (0.3, -0.2, 0.7))):
        expected = 0.5 * (1.0 - math.exp(-s) * parts[branch].item())
        assert abs(expected) > 1e-3  # the loss is not at the log-variance's optimum: a real gradient
        assert grads["total"][0][i].item() == pytest.approx(expected, rel=1e-4, abs=1e-6), branch
    torch.testing.assert_close(grads["total"][1], 0.5 * math.exp(0.2) * grads["glca"][1])
    torch.testing.assert_close(grads["total"][2], 0.5 * math.exp(-0.3) * grads["sa"][2]
                               + 0.5 * math.exp(-0.7) * grads["pwca"][2])


# ----------------------------------------------------------------------------- augmentation


def write_split_tree(root, pattern: str):
    """root/{train,val,test}/{a,b}/k.png, 40x40 images that change along one axis only: a random
    crop of a `rows` image or a flip of a `columns` image changes the tensor, not the other way."""
    ramp = torch.linspace(0, 255, 40).to(torch.uint8)
    for split in ("train", "val", "test"):
        for c, name in enumerate(("a", "b")):
            for k in range(2):
                pixels = (ramp.view(40, 1) if pattern == "rows" else ramp.view(1, 40)).expand(40, 40)
                rgb = torch.stack([pixels, 255 - pixels, torch.full_like(pixels, 60 * (c + k))], dim=-1)
                (root / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb.numpy()).save(root / split / name / f"{k}.png")


SYNTHETIC = dict(synthetic_train=4, synthetic_val=4, synthetic_test=4, synthetic_classes=4)
AUGMENTATIONS = {  # name -> (data settings, image size)
    "synthetic": (SYNTHETIC, 16),  # crop shifted per (seed, epoch, image)
    "random-crop": (dict(resize=24, pattern="rows"), 16),  # 24 -> 16: 9 crop offsets per axis; flips unseen
    "flip": (dict(resize=16, pattern="columns"), 16),  # resize = crop: a single crop; flips seen
}


@pytest.mark.parametrize("augmentation", list(AUGMENTATIONS))
def test_augmentation_in_training_only(augmentation, tmp_path):
    """The training split built as main() builds it gives another shift / crop / flip of the same
    image in some other epoch (the same one again for the same epoch: exact resume); the
    validation and test splits give the same tensor at every read, whatever the epoch."""
    settings, image_size = AUGMENTATIONS[augmentation]
    settings = dict(settings)
    if "pattern" in settings:
        write_split_tree(tmp_path, settings.pop("pattern"))
        settings["data_root"] = str(tmp_path)
    splits, _ = build_datasets(DataConfig(**settings), image_size, seed=0)

    train = splits["train"]
    draws = []
    for epoch in range(8):
        train.set_epoch(epoch)
        draws.append(train[0][0])
    train.set_epoch(0)
    torch.testing.assert_close(train[0][0], draws[0], rtol=0, atol=0)
    assert any(not torch.allclose(draws[0], d, atol=1e-3) for d in draws[1:]), "training images never change"

    for split in ("val", "test"):
        dataset = splits[split]
        reference = dataset[0][0]
        for epoch in range(8):
            dataset.set_epoch(epoch)
            torch.testing.assert_close(dataset[0][0], reference, rtol=0, atol=0, msg=f"{split} epoch {epoch}")
