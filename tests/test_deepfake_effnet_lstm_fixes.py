"""One test per FIXES.md row of deepfake_effnet_lstm: the seed's behaviour is reproduced inline
(the old line), then the fixed code is shown free of the symptom."""

import csv
import math

import pytest
import torch
import torchvision
from PIL import Image

from common.lifecycle import Run
from deepfake_effnet_lstm import data as D
from deepfake_effnet_lstm import model as M
from deepfake_effnet_lstm import train as T
from deepfake_effnet_lstm.metrics import PlateauController
from tests.fixtures_deepfake_effnet_lstm import TINY_ARGS, grouped_videos, write_dataset


def _log_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _decode(frames):
    """(video, frame) of each frame of a sequence written by write_dataset (red = 10 x the video's
    place in the index, green = 10 x the frame number): [T, 2]."""
    return ((D.denormalize(frames)[:, :2, 0, 0] * 255).round() / 10).round().long()


def test_dfd_val_data_validation_runs_on_the_validation_split(tmp_path, monkeypatch):
    """DFD-VAL-DATA: the seed validated on the training set; every evaluation must get the val split."""
    built, evaluated = {}, []
    real_make, real_score = T.make_datasets, T.score

    def spy_make(*args):
        datasets, weights, info = real_make(*args)
        built.update(datasets)
        return datasets, weights, info

    def spy_score(model, loader, cfg):
        evaluated.append(loader.dataset)
        return real_score(model, loader, cfg)
    monkeypatch.setattr(T, "make_datasets", spy_make)
    monkeypatch.setattr(T, "score", spy_score)
    T.main([*TINY_ARGS, "--max-iters", "1", "--out", str(tmp_path / "run")])
    assert len(evaluated) == 1
    assert all(ds is built["val"] for ds in evaluated)
    assert not any(ds is built["train"] for ds in evaluated)  # the seed's loader


def test_dfd_split_by_video_no_video_or_original_crosses_splits(tmp_path):
    """DFD-SPLIT-BY-VIDEO: the sequences make_datasets serves, identified by their pixels, come
    from disjoint sets of videos and of identities (a fake with its original), and every video is
    served by exactly one split; the seed's random_split over samples put validation and test
    videos into training."""
    videos = grouped_videos(8)  # 8 originals with 2 fakes each: 24 videos, 8 identities
    root = write_dataset(tmp_path / "d", videos, frames=2)
    cfg = D.DataConfig(data_root=str(root), frames=2, image_size=8, val_fraction=0.25, test_fraction=0.25,
                       augment=False)
    datasets, _, info = D.make_datasets(cfg, seed=0)
    assert info["videos"] == {"train": 12, "val": 6, "test": 6}
    served = {s: {int(_decode(ds[i]["frames"])[0, 0]) for i in range(len(ds))} for s, ds in datasets.items()}
    identity = [v["original"] or v["video"] for v in videos]
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not served[a] & served[b], (a, b)
        assert not {identity[v] for v in served[a]} & {identity[v] for v in served[b]}, (a, b)
    assert set().union(*served.values()) == set(range(len(videos)))


def test_dfd_split_by_video_a_leaking_split_column_is_refused(tmp_path):
    """DFD-SPLIT-BY-VIDEO: a given split column that separates a fake from its original is an error."""
    videos = grouped_videos(4, splits=True)
    videos[1]["split"] = "val"  # fake0_0 away from real0 (train)
    root = write_dataset(tmp_path / "d", videos, frames=2)
    with pytest.raises(D.DataError, match=r"index.csv:3: video 'fake0_0' is in split 'val' but its group 'real0'"):
        D.split_records(D.read_index(root / "index.csv", root, None, 2)[0], 0.2, 0.2, 0)


def test_dfd_aug_after_split_validation_is_not_augmented():
    """DFD-AUG-AFTER-SPLIT: validation/test items are the plain frames at every epoch; only the
    training split is augmented."""
    datasets, _, _ = D.make_datasets(D.DataConfig(synthetic_train=4, synthetic_val=4, frames=4, image_size=16), seed=0)
    val, train = datasets["val"], datasets["train"]
    assert val.augment is None and datasets["test"].augment is None and train.augment is not None
    plain = D.VideoSequenceDataset(val.records, 4, 16, train=False, augment=None, clips=val.clips)
    # the seed: one augmented dataset, split afterwards -> validation frames are augmented too
    seed_val = D.VideoSequenceDataset(val.records, 4, 16, train=False, augment=train.augment, clips=val.clips)
    for epoch in (0, 5):
        for ds in (val, plain, seed_val):
            ds.set_epoch(epoch)
        torch.testing.assert_close(val[1]["frames"], plain[1]["frames"])
        assert not torch.allclose(seed_val[1]["frames"], plain[1]["frames"])


def test_dfd_class_weights_come_from_the_training_split(tmp_path):
    """DFD-CLASS-WEIGHTS: a balanced training split gets weights (1, 1) whatever validation holds."""
    videos = [{"video": f"t{i}", "label": ("real", "fake")[i % 2], "split": "train"} for i in range(8)]
    videos += [{"video": f"v{i}", "label": "fake" if i else "real", "split": "val"} for i in range(6)]
    root = write_dataset(tmp_path / "d", videos, frames=2)
    datasets, weights, _ = D.make_datasets(D.DataConfig(data_root=str(root), frames=2, image_size=8), seed=0)
    torch.testing.assert_close(weights, torch.tensor([1.0, 1.0]))
    seed_weights = D.class_weights([r.label for ds in datasets.values() for r in ds.records])
    assert seed_weights[0] > 1.2 > 0.9 > seed_weights[1]


def test_dfd_sequences_are_evenly_spaced_frames_of_one_video(tmp_path):
    """DFD-SEQUENCES: every frame of a sample comes from the sample's own video, evenly spaced and
    in order, and the sample carries that video's label."""
    videos = [{"video": f"v{i}", "label": ("real", "fake")[i % 2], "split": "train"} for i in range(6)]
    root = write_dataset(tmp_path / "d", videos, frames=8)
    records, _ = D.read_index(root / "index.csv", root, None, 4)
    ds = D.VideoSequenceDataset(records, 4, 8, train=True, augment=None)
    for index in range(len(ds)):
        item = ds[index]
        ids = _decode(item["frames"])
        assert (ids[:, 0] == index).all()  # the seed drew each frame from any video of the index
        assert (ids[:, 1].diff() == 2).all()
        assert item["label"] == records[index].label and item["video"] == index


def test_dfd_auc_scores_rank_probabilities_and_survive_one_class_windows():
    """DFD-AUC-SCORES: ROC-AUC from probabilities (1.0 for a perfect ranking even when every
    probability is below 0.5); a one-class window gives NaN instead of crashing."""
    labels, probs = torch.tensor([0, 0, 1, 1]), torch.tensor([0.1, 0.2, 0.3, 0.4])
    videos = torch.arange(4)
    fixed = T.binary_metrics(labels, probs, videos)
    assert fixed["roc_auc"] == 1.0 and fixed["ap"] == 1.0
    from deepfake_effnet_lstm.metrics import roc_auc
    assert roc_auc(labels, (probs >= 0.5).long()) == 0.5  # the seed's value on argmax labels
    one_class = T.binary_metrics(torch.ones(3, dtype=torch.long), torch.tensor([0.2, 0.7, 0.9]), torch.arange(3))
    assert math.isnan(one_class["roc_auc"]) and one_class["acc"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_dfd_val_cadence_small_subset_still_validates(tmp_path):
    """DFD-VAL-CADENCE: with --val-interval 749 a 4-step epoch still validates at every epoch end."""
    out = tmp_path / "run"
    T.main([*TINY_ARGS, "--max-iters", "6", "--val-interval", "749", "--out", str(out), "--log-interval", "3"])
    val_steps = [int(r["step"]) for r in _log_rows(out / "log.csv") if r["split"] == "val"]
    assert val_steps == [4, 6]  # epoch end (8 videos / batch 2) and the last step; 749 is never reached


def test_dfd_minlr_stop_fires(tmp_path, monkeypatch):
    """DFD-MINLR-STOP: torch's ReduceLROnPlateau (the seed) skips any reduction smaller than
    eps = 1e-8, so the seed's run (--lr 1e-4, min_lr = 1e-4 x 1e-5 = 1e-9) reached 1e-8, never took
    the last step to 1e-9, `lr == min_lr` never held and it trained on to --max-iters. Started
    where it stuck (--lr 1e-8, min_lr 1e-9) on a flat validation loss, the run lands on min_lr at
    the first plateau and stops at the next validation."""
    flat = {"loss": 0.5, **T.binary_metrics(torch.tensor([0, 1]), torch.tensor([0.4, 0.6]), torch.arange(2))}
    monkeypatch.setattr(T, "split_metrics", lambda scores, split="": dict(flat))
    out = tmp_path / "run"
    results = T.main([*TINY_ARGS, "--lr", "1e-8", "--min-lr-factor", "0.1", "--max-iters", "6", "--val-interval", "1",
                      "--plateau-patience", "0", "--plateau-cooldown", "0", "--keep-checkpoints", "0",
                      "--out", str(out)])
    min_lr = 1e-8 * 0.1
    # validation 1 sets the best, 2 reduces 1e-8 -> 1e-9 (a change of 9e-9 < eps), 3 stops at the floor
    assert results["stopped_early"] and results["step"] == 3 and results["lr"] == min_lr
    step_lrs = [float(r["lr"]) for r in _log_rows(out / "log.csv") if r["split"] == "val"]  # lr each step trained at
    assert step_lrs == [1e-8, 1e-8, min_lr]


@pytest.mark.parametrize("attention", ["gate", "cbam"])
def test_dfd_attention_takes_part_in_the_prediction(attention):
    """DFD-ATTENTION: zeroing the attention map changes the logits; get_attention returns the map
    the forward pass used."""
    # batch statistics, no dropout, no stochastic depth: deterministic, and free of the untrained
    # running statistics that flatten every input to almost the same logits in eval mode
    model = M.DeepfakeDetector(M.DetectorConfig(attention=attention, lstm_hidden=16, dropout=0.0)).train()
    for module in model.modules():
        if isinstance(module, torchvision.ops.StochasticDepth):
            module.eval()
    frames = torch.randn(2, 3, 3, 32, 32)
    used = {}
    hook = model.attention.to_map.register_forward_hook(lambda m, i, o: used.setdefault("map", o))
    logits = model(frames)
    hook.remove()
    torch.testing.assert_close(model.get_attention(frames).flatten(0, 1), used["map"])
    zero = model.attention.to_map.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    zeroed = model(frames)
    zero.remove()
    assert (logits - zeroed).abs().max() > 1e-4  # the seed drew the map but never gated the features


class _Killed(Exception):
    pass


class _NeverImproves(PlateauController):
    """Every validation after the first counts as a plateau, so the lr drops at each one."""

    def _improved(self, value):
        return self.best == math.inf


@pytest.mark.slow
def test_dfd_resume_lr_exact_resume_mid_epoch(tmp_path, monkeypatch):
    """DFD-RESUME-LR: kill at step 5 (mid-epoch, after an lr reduction), resume to step 8: weights and
    log.csv equal an uninterrupted run's, and the lr is the reduced one, not --lr."""
    monkeypatch.setattr(T, "PlateauController", _NeverImproves)
    args = [*TINY_ARGS, "--max-iters", "8", "--val-interval", "2", "--plateau-patience", "0",
            "--plateau-cooldown", "0", "--lr", "1e-3", "--ckpt-interval", "5"]
    T.main([*args, "--out", str(tmp_path / "full")])

    real_save = Run.save

    def save_then_die(self, name, state):
        real_save(self, name, state)
        if name == "last.pt" and state.step == 5:
            raise _Killed
    monkeypatch.setattr(Run, "save", save_then_die)
    with pytest.raises(_Killed):
        T.main([*args, "--out", str(tmp_path / "cut")])
    monkeypatch.setattr(Run, "save", real_save)
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert saved["extra"]["controller"]["lr"] == pytest.approx(1e-4)  # reduced at step 4, before the kill
    T.main(["--resume", str(tmp_path / "cut" / "last.pt")])
    resumed_lrs = [float(r["lr"]) for r in _log_rows(tmp_path / "cut" / "log.csv") if int(r["step"]) > 5]
    assert resumed_lrs and max(resumed_lrs) <= 1e-4 + 1e-12  # a fresh scheduler restarted at --lr 1e-3

    full, cut = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("full", "cut"))
    for k, v in full["model"].items():
        assert torch.equal(v, cut["model"][k]), k
    assert full["extra"]["controller"] == cut["extra"]["controller"]
    assert _log_rows(tmp_path / "full" / "log.csv") == _log_rows(tmp_path / "cut" / "log.csv")


def test_dfd_frame_sort_is_natural(tmp_path):
    folder = tmp_path / "video"
    folder.mkdir()
    for i in range(1, 13):
        (folder / f"{i}.png").write_bytes(b"")
    # the baseline's text sort gave 1, 10, 11, 12, 2, ... to the LSTM
    assert [p.name for p in D.list_frames(folder, "index.csv:2")] == [f"{i}.png" for i in range(1, 13)]


def test_dfd_frame_sort_read_index_keeps_unpadded_frames_in_numeric_order(tmp_path):
    root = write_dataset(tmp_path / "data", [{"video": "v", "label": "real", "frames": 0}])
    for i in range(1, 13):
        Image.new("RGB", (4, 4), (0, 10 * i, 0)).save(root / "v" / f"{i}.png")
    records, _ = D.read_index(root / "index.csv", root, None, frames=12)
    assert [p.name for p in records[0].frame_paths] == [f"{i}.png" for i in range(1, 13)]
    dataset = D.VideoSequenceDataset(records, frames=12, size=4, train=False, augment=None)
    frames, _ = dataset.load_frames(records[0], list(range(12)))  # (T, 3, H, W) in [0, 1]
    assert (frames[:, 1, 0, 0] * 255).round().tolist() == [10.0 * i for i in range(1, 13)]
