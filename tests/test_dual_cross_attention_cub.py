"""CUB-200-2011 through the DCAL readers and train.py: validation held out of the train split
(stratified, apart from the test split, the same for the same seed), best.pt chosen on it and the
test split scored once at the end, the lr schedule sized by the steps the run takes, and every
inconsistency of the index files reported at once with its file, line and value."""

import re

import pytest
import torch

from common.runtime import DataError, EpochSampler
from common.schedulers import warmup_cosine_lr
from dual_cross_attention import train as dcal_train
from dual_cross_attention.data import build_real_datasets
from dual_cross_attention.train import build_parser, config_from, evaluate_checkpoint, main, plan_schedule
from tests.fixtures_dual_cross_attention import write_cub, write_image  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)

# training images per class 10, 10, 30, 1, then two test images of each class
TRAIN_PER_CLASS = (10, 10, 30, 1)
LABELS = tuple(c for c, n in enumerate(TRAIN_PER_CLASS, start=1) for _ in range(n)) + (1, 1, 2, 2, 3, 3, 4, 4)
SPLIT = (1,) * sum(TRAIN_PER_CLASS) + (0,) * 8


def _paths(dataset) -> set[str]:
    return {str(path) for path, _ in dataset.samples}


def _labels(dataset) -> list[int]:
    return [label for _, label in dataset.samples]


def test_cub_validation_is_a_stratified_seeded_holdout_of_the_train_split(tmp_path):
    root = write_cub(tmp_path / "CUB", labels=LABELS, split=SPLIT, classes=4)
    torch.manual_seed(123)  # the draw must not depend on the global RNG
    train, val, test = build_real_datasets(root, 24, 16, seed=0)
    assert val is not test and not _paths(val) & _paths(test) and not _paths(val) & _paths(train)
    assert len(_paths(train) | _paths(val)) == sum(TRAIN_PER_CLASS)  # nothing lost, nothing added
    assert _labels(test) == [0, 0, 1, 1, 2, 2, 3, 3]  # CUB's test split, whole
    # 10% of each class, at least one where a class has two or more, never a class's only image
    assert [_labels(val).count(c) for c in range(4)] == [1, 1, 3, 0]
    assert [_labels(train).count(c) for c in range(4)] == [9, 9, 27, 1]
    torch.manual_seed(7)
    again = build_real_datasets(root, 24, 16, seed=0)
    assert [d.samples for d in again] == [train.samples, val.samples, test.samples]
    other = build_real_datasets(root, 24, 16, seed=1)[1]
    assert _paths(other) != _paths(val) and _labels(other) == _labels(val)
    larger = build_real_datasets(root, 24, 16, seed=0, val_fraction=0.2)[1]
    assert [_labels(larger).count(c) for c in range(4)] == [2, 2, 6, 0]


def test_cub_holdout_needs_a_class_with_two_training_images_and_fraction_zero_opts_out(tmp_path):
    root = write_cub(tmp_path / "CUB", labels=(1, 1, 2, 2), split=(1, 0, 1, 0), classes=2)
    with pytest.raises(DataError, match=r"train_test_split\.txt: cannot hold out a validation split.*--val-fraction 0"):
        build_real_datasets(root, 24, 16, seed=0)
    train, val, test = build_real_datasets(root, 24, 16, seed=0, val_fraction=0.0)
    assert test is val and _labels(val) == [0, 1] and _labels(train) == [0, 1]


def test_class_folder_tree_without_val_holds_out_validation_and_keeps_a_real_val(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for name in ("cat", "dog"):
            for i in range(n):
                write_image(tmp_path / "data" / split / name / f"{i}.png")
    train, val, test = build_real_datasets(tmp_path / "data", 24, 16, 0)
    assert _labels(val) == [0, 1] and _labels(train) == [0, 0, 1, 1] and _labels(test) == [0, 1]
    assert not _paths(val) & _paths(test)
    for name in ("cat", "dog"):
        write_image(tmp_path / "data" / "val" / name / "0.png")
    train, val, test = build_real_datasets(tmp_path / "data", 24, 16, 0)
    assert len(train) == 6 and all("/val/" in p for p in _paths(val)) and all("/test/" in p for p in _paths(test))


def test_train_on_cub_chooses_best_pt_on_validation_and_tests_once_at_the_end(tmp_path, monkeypatch, capsys):
    """Through train.main: every validation sees held-out training images only, the test images
    are evaluated exactly once, last, with the weights of best.pt, which holds the best
    validation top-1 of the run."""
    root = write_cub(tmp_path / "CUB", labels=(1,) * 5 + (2,) * 5 + (1, 2), split=(1,) * 10 + (0, 0), classes=2)
    real_evaluate, calls = dcal_train.evaluate, []

    def recording_evaluate(model, loader, cfg):
        metrics = real_evaluate(model, loader, cfg)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        calls.append((_paths(loader.dataset), metrics, weights))
        return metrics

    monkeypatch.setattr(dcal_train, "evaluate", recording_evaluate)
    run = tmp_path / "run"
    summary = main(["--data-root", str(root), "--model", "tiny", "--patch-size", "8", "--image-size", "16",
                    "--resize", "20", "--batch-size", "2", "--max-iters", "4", "--val-interval", "1",
                    "--out", str(run), "--num-overlays", "0", "--log-interval", "1"])
    test_images = {str(root / "images" / f"00{c}.bird_{c}/img_{i}.jpg") for c, i in ((1, 11), (2, 12))}
    *validations, final = calls
    assert len(validations) >= 4 and final[0] == test_images  # the test split: once, at the end
    assert all(seen and not seen & test_images for seen, _, _ in validations)  # validation: never a test image
    assert summary["test"] == final[1] and "warning:" not in capsys.readouterr().out
    assert summary["best"]["value"] == max(metrics["top1"] for _, metrics, _ in validations)
    best = torch.load(run / "best.pt", weights_only=True)
    assert all(torch.equal(best["model"][k], v) for k, v in final[2].items())
    assert evaluate_checkpoint(run / "best.pt") == summary["test"]
    assert evaluate_checkpoint(run / "best.pt", "val")["top1"] == summary["best"]["value"]


def _plan(argv, train_images):
    parser = build_parser()
    train = config_from(parser.parse_args(argv), parser).train
    sampler = EpochSampler(train_images, train.batch_size, shuffle=True, drop_last=True)
    return plan_schedule(train, synthetic="--data-root" not in argv, train_sampler=sampler, world_size=1), train


def test_schedule_is_sized_by_the_steps_the_run_takes():
    # the real-data defaults on CUB's 5994 training images less the 10% held out: 5395 // 16 = 337 steps per epoch
    plan, train = _plan(["--data-root", "CUB_200_2011", "--max-iters", "2"], 5395)
    assert (plan.steps_per_epoch, plan.total_steps, plan.warmup_steps, plan.epochs) == (337, 2, 2, 1)
    text = plan.describe(train)
    assert "warm-up 2 steps" in text and "2 steps in all" in text
    lrs = [warmup_cosine_lr(s, plan.peak_lr, plan.warmup_steps, plan.total_steps) for s in range(plan.total_steps)]
    assert lrs == [plan.peak_lr / 2, plan.peak_lr]  # the peak is reached within the run
    plan, _ = _plan(["--data-root", "CUB_200_2011", "--epochs", "3"], 5395)  # 5 epochs of warm-up would outlast 3
    assert (plan.total_steps, plan.warmup_steps) == (3 * 337, 3 * 337)
    plan, _ = _plan(["--data-root", "CUB_200_2011"], 5395)  # the default 6 epochs: the real-data 5 of warm-up fit
    assert (plan.total_steps, plan.warmup_steps) == (6 * 337, 5 * 337)
    plan, _ = _plan(["--data-root", "CUB_200_2011", "--epochs", "100"], 5395)  # the paper's length
    assert (plan.total_steps, plan.warmup_steps) == (100 * 337, 5 * 337)
    plan, _ = _plan(["--max-iters", "4", "--warmup-steps", "10"], 3000)  # an explicit warm-up, cut too
    assert (plan.total_steps, plan.warmup_steps, plan.warmup_asked) == (4, 4, 10)
    plan, _ = _plan([], 3000)  # the synthetic demo: one epoch of warm-up in six
    assert (plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (93, 558, 93)


def test_train_on_cub_with_max_iters_prints_a_plan_of_that_many_steps(tmp_path, capsys):
    root = write_cub(tmp_path / "CUB")
    summary = main(["--data-root", str(root), "--model", "tiny", "--patch-size", "8", "--image-size", "16",
                    "--resize", "20", "--batch-size", "2", "--max-iters", "1", "--out", str(tmp_path / "run"),
                    "--num-overlays", "0"])
    out = capsys.readouterr().out
    assert re.search(r"warm-up 1 steps \(cut from 5 to the run's length\), 1 steps in all", out), out
    assert summary["warmup_steps"] == 1 and summary["step"] == 1


# ----------------------------------------------------------------------------- index inconsistencies


def _edit(name, transform):
    def apply(root):
        path = root / name
        path.write_text(transform(path.read_text()))
    return apply


def _drop_line(number):
    return lambda text: "".join(line for i, line in enumerate(text.splitlines(True), start=1) if i != number)


def _set_line(number, new):
    return lambda text: "".join(new + "\n" if i == number else line
                                for i, line in enumerate(text.splitlines(True), start=1))


BROKEN_INDEX = [
    # (case, edit(root), what the error must say)
    ("image id missing from train_test_split.txt", _edit("train_test_split.txt", _drop_line(3)),
     r"train_test_split\.txt: no line for image id 3 \(images\.txt:3\)"),
    ("image id missing from image_class_labels.txt", _edit("image_class_labels.txt", _drop_line(4)),
     r"image_class_labels\.txt: no line for image id 4 \(images\.txt:4\)"),
    ("duplicate id in train_test_split.txt", _edit("train_test_split.txt", lambda t: t + "2 1\n"),
     r"train_test_split\.txt:7: duplicate id 2 \(first on line 2\)"),
    ("duplicate id in image_class_labels.txt", _edit("image_class_labels.txt", lambda t: t + "1 3\n"),
     r"image_class_labels\.txt:7: duplicate id 1 \(first on line 1\)"),
    ("duplicate id in images.txt", _edit("images.txt", lambda t: t + "5 001.bird_1/img_1.jpg\n"),
     r"images\.txt:7: duplicate id 5 \(first on line 5\)"),
    ("is_train 2", _edit("train_test_split.txt", _set_line(2, "2 2")),
     r"train_test_split\.txt:2: image id 2: is_train '2' is not 0 or 1"),
    ("class id abc", _edit("image_class_labels.txt", _set_line(3, "3 abc")),
     r"image_class_labels\.txt:3: image id 3: class id 'abc' is not an integer"),
    ("class id abc without classes.txt",
     lambda r: (_edit("image_class_labels.txt", _set_line(3, "3 abc"))(r), (r / "classes.txt").unlink()),
     r"image_class_labels\.txt:3: image id 3: class id 'abc' is not an integer"),
    ("class id out of range", _edit("image_class_labels.txt", _set_line(5, "5 7")),
     r"image_class_labels\.txt:5: image id 5 has unknown class id 7 \(class ids: classes\.txt\)"),
    ("class id 0 without classes.txt",
     lambda r: (_edit("image_class_labels.txt", _set_line(5, "5 0"))(r), (r / "classes.txt").unlink()),
     r"image_class_labels\.txt:5: image id 5 has unknown class id 0 \(class ids: >= 1\)"),
    ("listed image file missing", lambda r: (r / "images" / "002.bird_2" / "img_4.jpg").unlink(),
     r"images\.txt:4: image id 4: file images/002\.bird_2/img_4\.jpg does not exist"),
    ("id not in images.txt", _edit("train_test_split.txt", lambda t: t + "9 1\n"),
     r"train_test_split\.txt:7: image id 9 is not in images\.txt"),
]


@pytest.mark.parametrize("case,edit,message", BROKEN_INDEX, ids=[case for case, *_ in BROKEN_INDEX])
def test_cub_index_inconsistency_is_a_data_error_naming_file_line_and_value(case, edit, message, tmp_path):
    root = write_cub(tmp_path / "CUB")
    edit(root)
    with pytest.raises(DataError, match=message):
        build_real_datasets(root, 24, 16, 0)


def test_cub_index_problems_are_listed_together_and_crlf_bom_files_read(tmp_path):
    """Several problems, in files saved with a BOM and CRLF line ends: one error lists them all,
    with the values free of '\\r' and the first line's id free of the BOM."""
    root = write_cub(tmp_path / "CUB")
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"):
        path = root / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_text().replace("\n", "\r\n").encode())
    clean = build_real_datasets(root, 24, 16, 0)
    plain = build_real_datasets(write_cub(tmp_path / "plain"), 24, 16, 0)
    assert [[(p.name, y) for p, y in d.samples] for d in clean] == [[(p.name, y) for p, y in d.samples] for d in plain]
    split = root / "train_test_split.txt"
    split.write_bytes(split.read_bytes().replace(b"1 1\r\n", b"1 x\r\n").replace(b"6 0\r\n", b""))
    labels = root / "image_class_labels.txt"
    labels.write_bytes(labels.read_bytes() + b"2 2\r\n")
    with pytest.raises(DataError) as caught:
        build_real_datasets(root, 24, 16, 0)
    message = str(caught.value)
    assert "3 problem(s)" in message and "\r" not in message and "\ufeff" not in message
    assert re.search(r"train_test_split\.txt:1: image id 1: is_train 'x' is not 0 or 1", message)
    assert re.search(r"train_test_split\.txt: no line for image id 6 \(images\.txt:6\)", message)
    assert re.search(r"image_class_labels\.txt:7: duplicate id 2 \(first on line 2\)", message)
