"""deepfake_effnet_lstm against its original, polimi-ispl/icpr2020dfdc @bbd6411, weights files
from elsewhere and what a new user trips on. Each test is red on the code before."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from common.checkpoint import CheckpointError
from common.runtime import DataError, NonFiniteLossError
from deepfake_effnet_lstm import data as D
from deepfake_effnet_lstm import model as M
from deepfake_effnet_lstm import train as T
from tests.fixtures_deepfake_effnet_lstm import TINY_ARGS, grouped_videos, write_dataset

# ----------------------------------------------------------------------------- the original's recipe


def _config(argv):
    parser = T.build_parser()
    args = parser.parse_args(argv)
    T.check_flags(parser, args)
    return T.config_from(args)


def test_dfd_real_data_fine_tunes_as_icpr2020dfdc_by_default():
    """--data-root: lr 1e-5 (train_binclass.py:65), 224 px (scripts/train_all.sh:18), the noise /
    downscaling / JPEG degradations on (isplutils/utils.py:159-194); the synthetic demo keeps its own."""
    real = _config(["--data-root", "faces", "--pretrained", "weights.pth"])
    assert (real.train.lr, real.data.image_size, real.data.aug_icpr) == (1e-5, 224, True)
    assert real.model.pretrained == "weights.pth"
    demo = _config([])
    assert (demo.train.lr, demo.data.image_size, demo.data.aug_icpr, demo.model.pretrained) == (1e-3, 32, False, "none")
    assert T.build_parser().get_default("val_interval") == 500  # train_binclass.py:66 (749 is the seed's)


def test_dfd_real_data_refuses_a_random_backbone_unless_said(capsys):
    with pytest.raises(SystemExit):
        _config(["--data-root", "faces"])
    assert "--pretrained none trains a random backbone on purpose" in capsys.readouterr().err
    assert _config(["--data-root", "faces", "--pretrained", "none"]).model.pretrained == "none"
    assert _config(["--data-root", "faces", "--pretrained"]).model.pretrained == "imagenet"


def test_dfd_icpr_augmentations_reach_the_training_frames(tmp_path):
    """With every other augmentation off, icpr's degradations still change the frames; they are on
    for the training split of real data, and off for its validation split."""
    quiet = dict(flip=0.0, rotation=0.0, translate=0.0, scale=0.0, jitter=0.0)
    frames = torch.rand(4, 3, 32, 32)
    changed = 0
    for seed in range(8):  # each degradation has p 0.5: over 8 sequences some must fire
        icpr = D.AugmentConfig(**quiet, icpr=True)
        out, _ = D.augment_sequence(frames, None, icpr, torch.Generator().manual_seed(seed))
        changed += int((out - frames).abs().max() > 1e-3)
        same, _ = D.augment_sequence(frames, None, D.AugmentConfig(**quiet), torch.Generator().manual_seed(seed))
        torch.testing.assert_close(same, frames)
    assert changed >= 6
    root = write_dataset(tmp_path / "d", grouped_videos(8), frames=4)
    datasets, _, _ = D.make_datasets(D.DataConfig(data_root=str(root), frames=2, image_size=8), seed=0)
    assert datasets["train"].augment.icpr and datasets["val"].augment is None


def test_dfd_batch_weights_survive_one_class_batches():
    """DFD-BATCH-WEIGHTS: weighted cross-entropy divided by the batch's weight sum gives a batch of reals
    the unweighted loss (the weights cancel) and renormalises mixed batches by their own class mix;
    the mean of w_y * CE keeps each class's weight in every batch, as balanced batches would."""
    weights = torch.tensor([0.6, 3.0])  # 83% reals in training
    logits = torch.randn(4, 2)
    reals, fakes = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    torch.testing.assert_close(M.classification_loss(logits, reals, weights), 0.6 * F.cross_entropy(logits, reals))
    torch.testing.assert_close(M.classification_loss(logits, fakes, weights), 3.0 * F.cross_entropy(logits, fakes))


def test_dfd_mechanism_frame_order_reaches_the_logits():
    """The LSTM reads the frames in order: reversing or shuffling them moves the logits."""
    torch.manual_seed(0)
    model = M.DeepfakeDetector(M.DetectorConfig(lstm_hidden=16, dropout=0.0)).train()  # batch statistics
    frames = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        logits = model(frames)
        reversed_logits = model(frames.flip(1))
        shuffled = model(frames[:, [2, 0, 3, 1]])
    assert (logits - reversed_logits).abs().max() > 1e-4 and (logits - shuffled).abs().max() > 1e-4


# ----------------------------------------------------------------------------- a weights file


def test_dfd_pretrained_file_loads_every_backbone_tensor(tmp_path):
    reference = torchvision.models.efficientnet_b0(weights=None).state_dict()  # random init, torchvision's layout
    torch.save(reference, tmp_path / "b0.pth")
    model = M.DeepfakeDetector(M.DetectorConfig(pretrained=str(tmp_path / "b0.pth")))
    for k, v in model.features.state_dict().items():
        torch.testing.assert_close(v, reference["features." + k])


@pytest.mark.parametrize("network", ["efficientnet_b1", "resnet18"])
def test_dfd_pretrained_file_of_another_network_is_one_line(tmp_path, network):
    path = tmp_path / f"{network}.pth"
    torch.save(getattr(torchvision.models, network)(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError) as caught:
        T.main([*TINY_ARGS, "--pretrained", str(path), "--max-iters", "1", "--out", str(tmp_path / "run")])
    message = str(caught.value)
    assert str(path) in message and "\n" not in message and "efficientnet_b0" in message


# ----------------------------------------------------------------------------- what a new user trips on


def test_dfd_start_line_says_sequences_not_videos(tmp_path, capsys):
    T.main([*TINY_ARGS, "--max-iters", "1", "--out", str(tmp_path / "run")])
    assert "sequences (one per person in a video): train 8, val 4, test 4; videos: train 8" in capsys.readouterr().out


def test_dfd_index_without_split_column_names_the_file_and_column(tmp_path):
    root = write_dataset(tmp_path / "d", grouped_videos(2), frames=4)  # 2 groups: 15% of them rounds to none
    with pytest.raises(DataError, match=r"index\.csv: no `split` column.*val split empty"):
        D.make_datasets(D.DataConfig(data_root=str(root), frames=2, image_size=8), seed=0)


def test_dfd_one_frame_number_under_two_names_is_refused(tmp_path):
    root = write_dataset(tmp_path / "d", grouped_videos(4), frames=4)
    folder = root / "real0"
    Image.new("RGB", (8, 8)).save(folder / "frame_2.png")
    Image.new("RGB", (8, 8)).save(folder / "frame_02.png")
    with pytest.raises(DataError, match=r"holds frame frame_2 twice \(frame_2\.png and frame_02\.png\)"):
        D.make_datasets(D.DataConfig(data_root=str(root), frames=2, image_size=8), seed=0)


def test_dfd_non_finite_validation_output_stops_the_run_naming_it(tmp_path):
    scores = {"weighted_loss": torch.tensor([0.1, float("nan")]), "weight": torch.ones(2),
              "p_fake": torch.tensor([0.3, float("nan")]), "label": torch.tensor([0, 1]), "video": torch.arange(2)}
    with pytest.raises(NonFiniteLossError, match="validation at step 4: .*1 of 2 sequences"):
        T.split_metrics(scores, "validation at step 4")
    with pytest.raises(NonFiniteLossError):  # the run: the training loss finite, validation NaN
        T.main([*TINY_ARGS, "--lr", "1e6", "--max-iters", "4", "--out", str(tmp_path / "run")])
