"""caer_clip: CLIP weights against open_clip, checkpoint loading, freezing, the real dataset readers on
tiny fixture folders, their errors, and exact resume of train.py."""

import csv
import json
import signal

import pytest
import torch

from caer_clip import data as caer_data
from caer_clip.clip import (
    CLIP,
    clip_from_state_dict,
    load_openai_file,
    tiny_config,
)
from caer_clip.losses import LossConfig, total_loss
from caer_clip.model import param_groups
from caer_clip.train import apply_recipe, base_lrs, build_parser, config_from, main
from common.lifecycle import Run
from common.runtime import ConfigMismatchError, DataError
from tests.fixtures_caer_clip import TINY_TRAIN, clip_batch, make_raer, tiny_model, write_frames
from tests.lifecycle_faults import signal_during_step

# ----------------------------------------------------------------------------- CLIP weights


@pytest.mark.slow
def test_open_clip_vit_b16_state_dict_gives_same_features():
    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch not installed")
    reference = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    ours = clip_from_state_dict(reference.state_dict()).eval()
    assert ours.cfg.vision_layers == 12 and ours.cfg.embed_dim == 512
    image = torch.randn(1, 3, 224, 224)
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a student smiling", "a tired face"])
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(image), reference.encode_image(image), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_text(tokens), reference.encode_text(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_openai_file_torchscript_and_plain_state_dict(tmp_path):
    model = CLIP(tiny_config()).eval()
    image, tokens = torch.randn(2, 3, 32, 32), torch.randint(2, 200, (2, 32))
    tokens[:, 6] = 255  # EOT
    traced = torch.jit.trace_module(model, {"encode_image": image})
    traced.save(str(tmp_path / "tiny.pt"))
    plain = {**model.state_dict(), "input_resolution": torch.tensor(32), "context_length": torch.tensor(32),
             "vocab_size": torch.tensor(256)}  # extra keys as in OpenAI's archives
    torch.save(plain, tmp_path / "plain.pt")
    for name in ("tiny.pt", "plain.pt"):
        loaded = load_openai_file(str(tmp_path / name)).eval()
        assert loaded.cfg == model.cfg
        torch.testing.assert_close(loaded.encode_image(image), model.encode_image(image))
        torch.testing.assert_close(loaded.encode_text(tokens), model.encode_text(tokens))


def test_state_dict_key_and_shape_checks():
    state = CLIP(tiny_config()).state_dict()
    with pytest.raises(KeyError, match="missing"):
        clip_from_state_dict({k: v for k, v in state.items() if k != "ln_final.bias"})
    with pytest.raises(KeyError, match="unexpected"):
        clip_from_state_dict({**state, "visual.extra": torch.zeros(1)})
    assert clip_from_state_dict({**state, "attn_mask": torch.zeros(2, 2)}).cfg == tiny_config()  # open_clip's buffer


def test_load_clip_without_open_clip_names_the_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_open_clip(name, *args, **kwargs):
        if name == "open_clip":
            raise ImportError("no open_clip")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    from caer_clip.clip import load_clip
    with pytest.raises(ImportError, match="pip install open_clip_torch"):
        load_clip("openai:ViT-B-16", [])


# ----------------------------------------------------------------------------- freezing


def test_frozen_weights_unchanged_and_every_trainable_parameter_gets_a_gradient():
    model = tiny_model(freeze_image_encoder=True)
    # The momentum head is not trained by gradients either, but moves by its momentum update.
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if not p.requires_grad and not n.startswith("key_head")}
    assert any(n.startswith("clip.transformer") for n in frozen) and any(n.startswith("clip.visual") for n in frozen)
    cfg = config_from(build_parser().parse_args([])).train
    optimizer = torch.optim.SGD(param_groups(model, base_lrs(cfg, 1), cfg.weight_decay), lr=0.1, momentum=0.9)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"]
    y = torch.tensor([0, 1, 2])
    out = model(*clip_batch(batch=3))
    loss, _, _ = total_loss(out, y, y, 1.0, 5, 5.0, LossConfig(), (model.queue, model.queue_labels))
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing
    optimizer.step()
    for n, p in model.named_parameters():
        if n in frozen:
            torch.testing.assert_close(p, frozen[n], rtol=0, atol=0, msg=n)
    assert not model.clip.transformer.training and model.head.training


def test_moco_queue_ring_buffer_and_momentum():
    model = tiny_model()
    keys = torch.nn.functional.normalize(torch.randn(20, 64), dim=-1)
    model.enqueue(keys[:10], torch.arange(10) % 5)
    model.enqueue(keys[10:], torch.arange(10) % 5)
    assert int(model.queue_ptr) == 4  # 20 keys into a queue of 16 wrap round
    torch.testing.assert_close(model.queue[:4], keys[16:])
    torch.testing.assert_close(model.queue[4:], keys[4:16])
    before = [p.clone() for p in model.key_head.parameters()]
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(1.0)
    model.momentum_update()
    for b, k, q in zip(before, model.key_head.parameters(), model.head.parameters()):
        torch.testing.assert_close(k, 0.99 * b + 0.01 * q)


# ----------------------------------------------------------------------------- dataset readers


def test_raer_reader_boxes_and_labels(tmp_path):
    cfg = make_raer(tmp_path)
    train, val, test = caer_data.build_datasets(cfg, num_frames=3, image_size=16, seed=0)
    assert len(train) + len(val) == 10 and len(test) == 10
    assert sorted(set(test.labels)) == [0, 1, 2, 3, 4]  # 1-based in the list
    face, context, label, fallbacks = train[0]
    assert face.shape == context.shape == (3, 3, 16, 16) and fallbacks == 0


def test_body_boxes_crop_the_context(tmp_path):
    cfg = make_raer(tmp_path, clips_per_class=1)
    boxes = {f"{s}/class{c}_0": [10, 8, 30, 28] for s in ("train", "test") for c in range(1, 6)}
    (tmp_path / "body.json").write_text(json.dumps(boxes))
    cfg.body_boxes = "body.json"
    _, _, test = caer_data.build_datasets(cfg, 2, 16, 0)
    _, context, _, _ = test[0]
    assert (context[:, 1] > context[:, 0]).all()  # the context is the green box, no red background


def test_daisee_reader_and_centre_crop_fallback(tmp_path):
    for clip in ("1100011002", "1100011003"):
        write_frames(tmp_path / "frames" / clip, 12)
    (tmp_path / "train.csv").write_text("ClipID,Boredom,Engagement,Confusion,Frustration \n"
                                        "1100011002.avi,0,2,0,0\n1100011003.avi,1,3,0,0\n")
    (tmp_path / "test.csv").write_text("ClipID,Boredom,Engagement,Confusion,Frustration\n1100011002.avi,0,1,0,0\n")
    cfg = caer_data.DataConfig(data_root=str(tmp_path), dataset="daisee", train_list="train.csv",
                               val_list="test.csv", test_list="test.csv", face_boxes="")
    train, _, test = caer_data.build_datasets(cfg, 4, 16, 0)
    assert train.labels == [2, 3] and test.labels == [1]
    assert train.records[0].num_frames == 12
    assert train[0][3] == 4  # no box file: every frame a counted centre crop


def test_caer_reader_keys_without_extension(tmp_path):
    for split in ("train", "test"):
        write_frames(tmp_path / split / "Happy" / "0001", 4, box=(5, 5, 20, 20))
        (tmp_path / f"{split}.txt").write_text(f"{split}/Happy/0001 4 3\n")
    boxes = {f"{s}/Happy/0001.avi": {str(i): [5, 5, 20, 20] for i in range(1, 5)} for s in ("train", "test")}
    (tmp_path / "face_boxes.json").write_text(json.dumps(boxes))
    cfg = caer_data.DataConfig(data_root=str(tmp_path), dataset="caer", val_list="test.txt")
    train, _, _ = caer_data.build_datasets(cfg, 2, 16, 0)
    assert train.labels == [3] and train[0][3] == 0


def test_reader_errors_name_file_and_line(tmp_path):
    cfg = make_raer(tmp_path, clips_per_class=1, frames=4)
    (tmp_path / "bad.txt").write_text("train/class1_0 4 1\ntrain/class2_0 4 9\n")
    with pytest.raises(DataError, match=r"bad.txt:2: label 9"):
        caer_data.read_split(cfg, "bad.txt")
    (tmp_path / "bad.txt").write_text("train/class1_0 four 1\n")
    with pytest.raises(DataError, match=r"bad.txt:1"):
        caer_data.read_split(cfg, "bad.txt")
    (tmp_path / "bad.txt").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        caer_data.read_split(cfg, "bad.txt")
    (tmp_path / "long.txt").write_text("train/class1_0 9 1\n")
    cfg.val_list, cfg.train_list = "long.txt", "long.txt"
    with pytest.raises(DataError, match=r"long.txt:1: the list says 9 frames"):  # at load: the boxes check every frame
        caer_data.build_datasets(cfg, 2, 16, 0)
    (tmp_path / "train" / "class1_0" / "2.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "one.txt").write_text("train/class1_0 4 1\n")
    cfg.train_list = cfg.val_list = "one.txt"
    train, _, _ = caer_data.build_datasets(cfg, 4, 16, 0)
    with pytest.raises(DataError, match="cannot read frame .*2.jpg"):
        train[0]


def test_missing_face_box_file_is_an_error(tmp_path):
    cfg = make_raer(tmp_path, clips_per_class=1)
    cfg.face_boxes = "nope.json"
    with pytest.raises(DataError, match="nope.json does not exist"):
        caer_data.build_datasets(cfg, 2, 16, 0)


# ----------------------------------------------------------------------------- train.py


def test_recipe_fills_only_the_settings_not_given():
    parser = build_parser()
    argv = ["--data-root", "somewhere", "--batch-size", "4", "--no-context"]
    args = parser.parse_args(argv)
    applied = apply_recipe(args, {"data_root", "batch_size", "use_context"})
    cfg = config_from(args)
    assert "batch_size" not in applied and cfg.train.batch_size == 4
    assert cfg.train.epochs == 20 and cfg.model.num_frames == 16 and cfg.train.milestones == [10, 15]
    assert not cfg.model.use_context and cfg.model.num_classes == 5  # RAER
    synthetic = parser.parse_args(["--context"])
    assert apply_recipe(synthetic, set()) == {} and config_from(synthetic).train.batch_size == 16


def test_split_smaller_than_one_batch_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="train split holds 3 clips"):
        main(["--synthetic-train", "3", "--batch-size", "4", "--moco-queue", "16", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()  # nothing written, the folder released


@pytest.mark.slow
def test_train_on_raer_fixture_folder(tmp_path):
    make_raer(tmp_path / "raer", clips_per_class=2, frames=5)
    summary = main(["--data-root", str(tmp_path / "raer"), "--clip", "tiny", "--num-frames", "2",
                    "--batch-size", "2", "--epochs", "1", "--moco-queue", "8", "--out", str(tmp_path / "run"),
                    "--logit-scale", "20"])
    assert summary["step"] == 2 and (tmp_path / "run" / "confusion_test.csv").is_file()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["num_frames"] == 2 and config["train"]["milestones"] == [10, 15]  # clip-caer recipe


@pytest.mark.slow
def test_resume_mid_epoch_equals_uninterrupted_run(tmp_path, monkeypatch):
    """Stopped mid-epoch (step 3) and at an epoch's last step (5, before its validation), with
    mid-epoch validations (--val-interval 2) and mixup: each resume ends as the uninterrupted run."""
    args = TINY_TRAIN + ["--epochs", "2", "--log-interval", "1", "--mixup-alpha", "0.4", "--ckpt-interval", "3",
                         "--val-interval", "2"]
    full = main(args + ["--out", str(tmp_path / "full")])

    def rows(run):
        with open(tmp_path / run / "log.csv") as f:
            return list(csv.DictReader(f))

    reference = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    assert reference["progress"]["step"] == 10
    assert len(rows("full")) == 10 + 2 + 4  # a row per step, per epoch, per mid-epoch validation (2, 4, 6, 8)
    for stop in (3, 5):
        part = tmp_path / f"part{stop}"
        with monkeypatch.context() as patch:
            patch.setattr(Run, "should_stop", signal_during_step(stop))
            with pytest.raises(SystemExit) as exited:
                main(args + ["--out", str(part)])
        assert exited.value.code == 128 + signal.SIGTERM
        assert torch.load(part / "last.pt", weights_only=True)["progress"]["step"] == stop
        resumed = main(["--resume", str(part / "last.pt")])
        assert resumed["test"] == full["test"] and resumed["val"] == full["val"] and resumed["best"] == full["best"]
        final = torch.load(part / "last.pt", weights_only=True)
        for key, value in reference["model"].items():
            torch.testing.assert_close(final["model"][key], value, rtol=0, atol=0, msg=key)
        assert rows(part.name) == rows("full")
    # An architecture change is refused with the keys named.
    with pytest.raises(ConfigMismatchError, match="num_frames"):
        main(args + ["--out", str(tmp_path / "part3"), "--resume", str(tmp_path / "part3" / "last.pt"),
                     "--num-frames", "2"])
