"""Shared helpers of the DCAL tests."""

from PIL import Image

from dual_cross_attention.model import DCALConfig


def run_config(*flags: str):
    """The train.Config main() builds from these flags (on the CPU, fp32), for tests that call the
    loop's own functions (evaluate, backward_micro_batch) directly."""
    from dual_cross_attention.train import build_parser, config_from

    parser = build_parser()
    return config_from(parser.parse_args(list(flags)), parser)


def tiny_cfg(**kw) -> DCALConfig:
    base = dict(image_size=16, patch_size=4, num_classes=5, embed_dim=32, depth=2, num_heads=2, drop_path=0.0)
    return DCALConfig(**{**base, **kw})




def write_image(path, size=(40, 30), colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_cub(root, labels=(1, 1, 2, 2, 3, 3), split=(1, 0, 1, 1, 1, 0), classes=3):
    """CUB-200-2011 layout: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt.
    By default class 2 has two training images, so a validation image can be held out of them."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"{c:03d}.bird_{c}/img_{i}.jpg" for i, c in enumerate(labels, start=1)]
    for name in names:
        write_image(root / "images" / name)
    (root / "images.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(names, start=1)))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(labels, start=1)))
    (root / "train_test_split.txt").write_text("".join(f"{i} {s}\n" for i, s in enumerate(split, start=1)))
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.bird_{c}\n" for c in range(1, classes + 1)))
    return root
