"""Model, data and loop of deepfake_effnet_lstm on tiny tensors and fixture folders."""

import ast
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from common.checkpoint import load_run_checkpoint
from common.runtime import ConfigMismatchError, DataError
from deepfake_effnet_lstm import data as D
from deepfake_effnet_lstm import model as M
from deepfake_effnet_lstm import train as T
from tests.fixtures_deepfake_effnet_lstm import TINY_ARGS, grouped_videos, write_dataset


@pytest.mark.parametrize("attention,num_logits,bidirectional,layers", [("gate", 2, True, 1), ("cbam", 1, False, 2)])
def test_shapes_and_every_parameter_gets_a_gradient(attention, num_logits, bidirectional, layers):
    cfg = M.DetectorConfig(attention=attention, num_logits=num_logits, bidirectional=bidirectional,
                           lstm_layers=layers, lstm_hidden=16)
    model = M.DeepfakeDetector(cfg)
    frames = torch.randn(2, 3, 3, 32, 32)
    logits, attention_map = model(frames, return_attention=True)
    assert logits.shape == (2, num_logits)
    assert attention_map.shape == (2, 3, 1, 4, 4)  # stage 3 has stride 8
    loss = M.classification_loss(logits, torch.tensor([0, 1]), torch.ones(2)) + attention_map.mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_weighted_losses_match_torch():
    logits, labels, w = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 1, 1]), torch.tensor([2.0, 0.5])
    # mean of w_y * CE over the batch (DFD-BATCH-WEIGHTS): torch's weight= divides by the batch's weight sum instead
    expected = (F.cross_entropy(logits, labels, reduction="none") * w[labels]).mean()
    torch.testing.assert_close(M.classification_loss(logits, labels, w), expected)
    one = torch.randn(6, 1)
    per_sample = F.binary_cross_entropy_with_logits(one.squeeze(1), labels.float(), reduction="none")
    expected = (per_sample * w[labels]).mean()
    torch.testing.assert_close(M.classification_loss(one, labels, w), expected)
    p = torch.rand(2, 3, 1, 4, 4) * 0.98 + 0.01
    masks = (torch.rand(2, 3, 1, 8, 8) > 0.5).float()
    target = F.adaptive_avg_pool2d(masks.flatten(0, 1), (4, 4)).view_as(p)
    torch.testing.assert_close(M.attention_loss(p, masks), F.binary_cross_entropy(p, target))


def test_pretrained_key_map_loads_every_backbone_tensor(monkeypatch):
    reference = torchvision.models.efficientnet_b0(weights=None).state_dict()
    monkeypatch.setattr(torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.__class__, "get_state_dict",
                        lambda self, progress=False: reference)
    model = M.DeepfakeDetector(M.DetectorConfig(pretrained="imagenet"))
    for k, v in model.features.state_dict().items():
        torch.testing.assert_close(v, reference["features." + k])


def test_pretrained_offline_fails_with_a_clear_message(monkeypatch):
    def offline(self, progress=False):
        raise OSError("network unreachable")
    monkeypatch.setattr(torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="--pretrained: could not download"):
        M.DeepfakeDetector(M.DetectorConfig(pretrained="imagenet"))


def test_frame_ids_are_evenly_spaced_and_short_videos_pad():
    assert D.sequence_frame_ids(16, 4, 0.0) == [0, 4, 8, 12]
    assert D.sequence_frame_ids(16, 4, 1.0) == [3, 7, 11, 15]
    assert D.sequence_frame_ids(3, 5, 0.5) == [0, 1, 2, 2, 2]


def test_augmentation_draws_one_set_of_parameters_per_sequence():
    """A still video must stay still: per-frame jitter would itself be the fake cue (flicker)."""
    still = torch.rand(1, 3, 16, 16).expand(6, 3, 16, 16).clone()
    out, masks = D.augment_sequence(still, torch.ones(6, 1, 16, 16), D.AugmentConfig(blur=1.0, noise=0.0),
                                    torch.Generator().manual_seed(3))
    assert not torch.allclose(out, still)
    torch.testing.assert_close(out, out[:1].expand_as(out))
    torch.testing.assert_close(masks, masks[:1].expand_as(masks))


def test_synthetic_fakes_differ_only_over_time():
    """One frame of a fake has the same distribution as a real frame; the frame-to-frame change does not."""
    center = lambda label: torch.stack([D.synthetic_video(s, label, 8, 16)[0][:, :, 8, 8].mean(1)
                                        for s in range(200)])  # face centre brightness [videos, frames]
    real, fake = center(0), center(1)
    assert abs(real[:, 0].mean() - fake[:, 0].mean()) < 0.03
    assert abs(real[:, 0].std() - fake[:, 0].std()) < 0.03
    assert (fake.diff(dim=1).abs().mean() > 4 * real.diff(dim=1).abs().mean())


def test_index_errors_name_the_file(tmp_path):
    root = write_dataset(tmp_path / "d", [{"video": "a", "label": "real"}, {"video": "b", "label": "fake"}], frames=3)
    with pytest.raises(DataError, match=r"index.csv:2: .*has 3 frames, fewer than --frames 4"):
        D.read_index(root / "index.csv", root, None, frames=4)
    records, padded = D.read_index(root / "index.csv", root, None, frames=4, pad_short=True)
    assert padded == 2 and [r.num_frames for r in records] == [3, 3]
    (root / "index.csv").write_text("video,label\na,real\nb,maybe\n")
    with pytest.raises(DataError, match=r"index.csv:3: unknown label 'maybe'"):
        D.read_index(root / "index.csv", root, None, frames=2)
    (root / "index.csv").write_text("video,label\na,real\nzzz,fake\n")
    with pytest.raises(DataError, match=r"index.csv:3: frame folder .*zzz does not exist"):
        D.read_index(root / "index.csv", root, None, frames=2)
    (root / "index.csv").write_text("name,label\n")
    with pytest.raises(DataError, match=r"index.csv:1: header"):
        D.read_index(root / "index.csv", root, None, frames=2)
    (root / "b" / "0001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"0001.png: unreadable image"):
        D.load_image(root / "b" / "0001.png", 8)


def test_a_split_with_one_class_is_refused(tmp_path):
    videos = [{"video": f"v{i}", "label": "real" if i < 4 else "fake", "split": "val" if i < 2 else "train"}
              for i in range(6)]
    root = write_dataset(tmp_path / "d", videos)
    with pytest.raises(DataError, match=r"index.csv: the val split has only real \(2 videos\)"):
        D.make_datasets(D.DataConfig(data_root=str(root), frames=2, image_size=8), seed=0)


def test_subset_fraction_keeps_whole_videos_of_both_classes():
    records = D.synthetic_records(40, seed=0)
    kept = D.subsample(records, 0.25, seed=0)
    assert len(kept) == 10 and {r.label for r in kept} == {0, 1}
    assert all(r.num_frames == 16 for r in kept)


def test_real_format_loads_frames_and_masks(tmp_path):
    root = write_dataset(tmp_path / "d", grouped_videos(4, splits=True), masks=True)
    cfg = D.DataConfig(data_root=str(root), mask_root=str(tmp_path / "masks"), frames=2, image_size=8)
    datasets, weights, info = D.make_datasets(cfg, seed=0)
    item = datasets["train"][0]
    assert item["frames"].shape == (2, 3, 8, 8) and item["mask"].shape == (2, 1, 8, 8)
    assert info["videos"] == {"train": 6, "val": 3, "test": 3}


@pytest.mark.slow
def test_smoke_train_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    has_tb = importlib.util.find_spec("tensorboard") is not None  # TensorBoard is optional: checked when installed
    has_plt = importlib.util.find_spec("matplotlib") is not None  # so are the overlay PNGs (matplotlib)
    results = T.main([*TINY_ARGS, "--max-iters", "4", "--val-interval", "2", "--out", str(out), "--overlays",
                      "--attention-loss-weight", "0.1", "--test", "--tensorboard" if has_tb else "--no-tensorboard",
                      "--keep-checkpoints", "1"])
    if has_tb:
        assert list((out / "tb").glob("events.out.tfevents.*"))
    for name in ("config.json", "log.csv", "last.pt", "best.pt", "results.json", "test_metrics.json",
                 *(["overlays/step000002_fake.png"] if has_plt else [])):
        assert (out / name).exists(), name
    assert (out / "overlays").exists() == has_plt  # without matplotlib: said once, no empty folder
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["split"] for r in rows].count("val") == 2 and list(rows[0]) == T.LOG_COLUMNS
    assert 0.0 <= results["val"]["roc_auc"] <= 1.0 and set(results["test"]) == set(T.LOG_COLUMNS[4:])
    assert json.loads((out / "test_metrics.json").read_text()) == results["test"]
    assert results["best"]["metric"] == "val_loss" and results["step"] == 4
    # periodic checkpoints are full run checkpoints, and only the newest --keep-checkpoints stay
    assert [p.name for p in out.glob("step*.pt")] == ["step0000004.pt"]
    assert load_run_checkpoint(out / "step0000004.pt", T.PROJECT)["optimizer"] is not None


@pytest.mark.slow
def test_a_lower_validation_loss_replaces_best_pt_and_a_higher_one_does_not(tmp_path, monkeypatch):
    """Through the real main(), best.pt on the validation loss (lower is better, best_mode "min"):
    validation losses 0.5, 0.3, 0.4 at steps 2, 4, 6 (a stand-in for split_metrics with known values).
    best.pt must hold step 4's weights (0.3 replaced 0.5; 0.4 did not replace 0.3), and the final test
    scores it. With the comparison reversed, best.pt would stay at step 2."""
    real_split_metrics, scripted, seen = T.split_metrics, iter([0.5, 0.3, 0.4]), []

    def scripted_split_metrics(scores, split="validation"):
        metrics = real_split_metrics(scores, split)
        if split.startswith("validation"):  # the three validations; the final test as it is
            seen.append(next(scripted))
            metrics = {**metrics, "loss": seen[-1]}
        return metrics

    monkeypatch.setattr(T, "split_metrics", scripted_split_metrics)
    out = tmp_path / "run"
    results = T.main([*TINY_ARGS, "--max-iters", "6", "--val-interval", "2", "--keep-checkpoints", "3", "--test",
                      "--out", str(out)])
    assert seen == [0.5, 0.3, 0.4]
    assert results["best"] == {"metric": "val_loss", "mode": "min", "value": 0.3, "step": 4, "epoch": 0}
    best = load_run_checkpoint(out / "best.pt", T.PROJECT)
    assert best["best"]["value"] == 0.3 and best["progress"]["step"] == 4
    step4 = load_run_checkpoint(out / "step0000004.pt", T.PROJECT)["model"]
    assert all(torch.equal(v, step4[k]) for k, v in best["model"].items())  # step 4's weights, not step 2's or 6's
    assert results["test"] == T.evaluate_checkpoint(str(out / "best.pt"), "test", "cpu")  # the test scored best.pt


@pytest.mark.slow
def test_a_periodic_checkpoint_resumes_the_run_exactly(tmp_path):
    """Any step<N>.pt continues the run to the weights and log rows of the uninterrupted run
    (the seed's periodic files held weights only: KeyError 'optimizer')."""
    out = tmp_path / "run"
    args = [*TINY_ARGS, "--max-iters", "6", "--val-interval", "2", "--ckpt-interval", "0", "--out", str(out)]
    T.main(args)
    reference_rows, reference = (out / "log.csv").read_text(), torch.load(out / "last.pt", weights_only=True)
    shutil.copy(out / "step0000004.pt", tmp_path / "from.pt")
    T.main([*args, "--resume", str(tmp_path / "from.pt")])
    assert (out / "log.csv").read_text() == reference_rows
    resumed = torch.load(out / "last.pt", weights_only=True)
    for k, v in reference["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


@pytest.mark.parametrize("argv,words", [
    (["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["--frames", "0"], "argument --frames: must be >= 1"),
    (["--epochs", "0"], "argument --epochs: must be >= 1"),
    (["--lr", "0"], "argument --lr: must be > 0.0"),
    (["--val-fraction", "0.6", "--test-fraction", "0.5"], "leave no training videos"),
    (["--data-root", "faces", "--attention-loss-weight", "0.1"], "--attention-loss-weight needs masks"),
])
def test_bad_flags_are_parse_errors(argv, words, capsys):
    """Before: ZeroDivisionError for --batch-size 0 / --frames 0, ROC-AUC nan for --epochs 0."""
    with pytest.raises(SystemExit) as exited:
        T.main(argv)
    assert exited.value.code == 2 and words in capsys.readouterr().err


def test_a_train_split_without_one_batch_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"the train split gives 0 batches: 4 sequences .* --batch-size 8"):
        T.main([*TINY_ARGS, "--synthetic-train", "4", "--batch-size", "8", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.slow
def test_resume_refuses_another_architecture_and_keeps_config_json(tmp_path):
    out = tmp_path / "run"
    T.main([*TINY_ARGS, "--max-iters", "1", "--out", str(out)])
    config = (out / "config.json").read_text()
    with pytest.raises(ConfigMismatchError, match="lstm_hidden: checkpoint=128 now=8"):
        T.main([*TINY_ARGS, "--lstm-hidden", "8", "--resume", str(out / "last.pt")])
    assert (out / "config.json").read_text() == config


def test_model_file_copies_alone_and_tools_do_not_import_train(tmp_path):
    """model.py copied into an empty folder builds the detector and runs a forward there with `common`
    unimportable; it imports only torch, torchvision, einops and the standard library. No tool of the
    project imports train.py (ablate.py: common.tools.ablation runs train.py in a subprocess)."""
    project = Path(__file__).resolve().parents[1] / "deepfake_effnet_lstm"
    allowed = {"torch", "torchvision", "einops", "numpy", "__future__", *sys.stdlib_module_names}

    def imported(path):
        tree = ast.parse(path.read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
            {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {name.split(".")[0] for name in imported(project / "model.py")} <= allowed
    shutil.copy(project / "model.py", tmp_path / "model.py")
    script = textwrap.dedent("""
        import sys
        sys.modules["common"] = None  # not importable in the copy
        import torch
        from model import DeepfakeDetector, DetectorConfig, per_video
        model = DeepfakeDetector(DetectorConfig(lstm_hidden=8))
        assert model(torch.randn(2, 3, 3, 32, 32)).shape == (2, 2)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for tool in ("predict.py", "bench.py", "plots.py", "import_icpr2020dfdc.py"):
        assert not {"deepfake_effnet_lstm.train", "train"} & imported(project / tool), tool
