"""DCAL data readers on tiny fixture trees written with PIL: CUB-200-2011 layout, class folders,
transforms, and the errors that name the file at fault."""

import pytest
import torch
from PIL import Image

from common.runtime import DataError
from dual_cross_attention.data import FGVCTransform, build_real_datasets
from tests.fixtures_dual_cross_attention import write_cub, write_image  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)


def test_cub_layout_reads_splits_and_zero_based_labels(tmp_path):
    train, val, test = build_real_datasets(write_cub(tmp_path / "CUB"), resize=24, crop=16, seed=0)
    assert len(train) == 3 and len(val) == 1 and len(test) == 2 and len(train.classes) == 3
    # validation is held out of the train split (class 2's second training image), test is CUB's test split
    assert [label for _, label in train.samples] == [0, 1, 2] and [label for _, label in val.samples] == [1]
    assert [label for _, label in test.samples] == [0, 2]
    image, label, index = train[1]
    assert image.shape == (3, 16, 16) and label == 1 and index == 1


def test_cub_unknown_class_id_names_the_file(tmp_path):
    root = write_cub(tmp_path / "CUB", labels=(1, 1, 2, 2, 3, 7))
    with pytest.raises(DataError, match=r"image_class_labels\.txt.*unknown class id 7"):
        build_real_datasets(root, 24, 16, 0)


def test_cub_empty_split_and_corrupt_image_name_the_file(tmp_path):
    root = write_cub(tmp_path / "CUB", split=(1, 1, 1, 1, 1, 1))
    with pytest.raises(DataError, match=r"train_test_split\.txt.*test split is empty"):
        build_real_datasets(root, 24, 16, 0)
    root = write_cub(tmp_path / "CUB2")
    bad = root / "images" / "001.bird_1" / "img_1.jpg"
    bad.write_bytes(b"not a jpeg")
    train, _, _ = build_real_datasets(root, 24, 16, 0)
    with pytest.raises(DataError, match="img_1.jpg"):
        train[0]


def test_class_folders_train_val(tmp_path):
    for split, n in (("train", 2), ("val", 1)):
        for name in ("cat", "dog"):
            for i in range(n):
                write_image(tmp_path / "data" / split / name / f"{i}.png")
    train, val, test = build_real_datasets(tmp_path / "data", 24, 16, 0)
    assert train.classes == ["cat", "dog"] and len(train) == 4 and len(val) == 2 and test is val
    write_image(tmp_path / "data" / "test" / "dog" / "0.png")
    _, val, test = build_real_datasets(tmp_path / "data", 24, 16, 0)
    assert len(val) == 2 and [label for _, label in test.samples] == [1]  # a test/ folder is the test split
    write_image(tmp_path / "data" / "val" / "bird" / "0.png")
    with pytest.raises(DataError, match="unknown class folder.*bird"):
        build_real_datasets(tmp_path / "data", 24, 16, 0)
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match="empty"):
        build_real_datasets(tmp_path / "empty", 24, 16, 0)
    with pytest.raises(DataError, match="neither a CUB"):
        build_real_datasets(tmp_path / "nothing", 24, 16, 0)


def test_transform_random_crop_depends_on_generator_centre_crop_is_fixed():
    gradient = torch.linspace(0, 1, 60).repeat(3, 40, 1)  # (3, 40, 60) horizontal ramp
    img = Image.fromarray((gradient.permute(1, 2, 0).numpy() * 255).astype("uint8"))
    train, val = FGVCTransform(40, 32, train=True), FGVCTransform(40, 32, train=False)
    crops = [train(img, torch.Generator().manual_seed(s)) for s in range(6)]
    assert crops[0].shape == (3, 32, 32)
    assert torch.equal(crops[0], train(img, torch.Generator().manual_seed(0)))  # same generator, same crop
    assert len({round(c.mean().item(), 4) for c in crops}) > 1  # other draws, other crops / flips
    torch.testing.assert_close(val(img, torch.Generator().manual_seed(0)), val(img, torch.Generator().manual_seed(9)))
