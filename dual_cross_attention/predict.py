"""Top-5 classes of images from a dual_cross_attention (DCAL) checkpoint, for SA, GLCA and combined.

    python dual_cross_attention/predict.py --checkpoint runs/dual_cross_attention/best.pt bird.jpg
    python dual_cross_attention/predict.py --checkpoint best.pt photos/ --format jsonl --explain explain/

INPUT is image files and/or folders of images (searched recursively). "combined" is the model's own
inference, softmax(SA) + softmax(GLCA) (as train.py evaluates), halved here so that it is a probability.
Images go through the checkpoint's evaluation transform: on a run on real data, resize the shorter
side to --resize and centre-crop --image-size, ImageNet normalisation (data.FGVCTransform); on the
synthetic demo, a resize to --image-size and the synthetic set's (x - 0.5) / 0.25.
When an image sits in a folder named like a class of the run (a class-folder tree), that class is
reported as its true class. --explain DIR writes one PNG per image: the image with the patches GLCA
picked as its local queries outlined, and the attention rollout they were ranked by over the image.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from einops import rearrange
from torchvision.utils import draw_bounding_boxes

from common.cli import run_cli
from common.runtime import DataError, autocast, autocast_dtype
from common.tools import predict
from dual_cross_attention import data as data_lib
from dual_cross_attention.model import DCAL, DCALConfig
from dual_cross_attention.plots import blend, normalise_per_image

PROJECT = "dual_cross_attention"
TOP_K = 5


def build_parser():
    parser = predict.predict_parser(__doc__, formats=("csv", "jsonl"))
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--explain", default=None, metavar="DIR", help="one PNG per image: rollout heat map and "
                        "GLCA-selected patches (needs matplotlib)")
    return parser


def image_paths(inputs: list[str]) -> list[Path]:
    paths = []
    for name in inputs:
        path = predict.existing(name, "input")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in data_lib.IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{path} holds no images ({', '.join(sorted(data_lib.IMAGE_SUFFIXES))})")
            paths += found
        else:
            paths.append(path)
    return paths


def make_transform(data: data_lib.DataConfig, image_size: int):
    if data.data_root is not None:
        fgvc = data_lib.FGVCTransform(data.resize, image_size, train=False)
        return lambda image: fgvc(image, generator=None)  # evaluation draws nothing at random
    # NOTE(deviation): the synthetic set is drawn in normalised space, never as files; a file given to a
    # synthetic-demo run is read back with the inverse of the set's (x - 0.5) / 0.25 scaling.
    return lambda image: (TF.to_tensor(TF.resize(image, [image_size, image_size], antialias=True)) - 0.5) / 0.25


def top_k(probs: torch.Tensor, names: list[str]) -> list[dict]:
    values, indices = probs.topk(min(TOP_K, len(names)))
    return [{"class": names[i], "prob": v} for v, i in zip(values.tolist(), indices.tolist())]


def unnormalise(image: torch.Tensor, data: data_lib.DataConfig) -> torch.Tensor:
    if data.data_root is None:
        return (image * 0.25 + 0.5).clamp(0, 1)
    mean, std = torch.tensor(data_lib.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(data_lib.IMAGENET_STD).view(3, 1, 1)
    return (image.cpu() * std + mean).clamp(0, 1)


def draw_explanation(plt, image: torch.Tensor, rollout_row: torch.Tensor, picked: torch.Tensor, cfg: DCALConfig,
                     caption: str, title: str, path: Path) -> Path:
    """Top: the image with the GLCA local queries `picked` (R patch indices, as DCAL.glca_forward picks
    them: by rollout unless --glca-select says otherwise) outlined. Bottom: the rollout CLS row, one
    value per patch, over the image."""
    picture, scale = predict.enlarge(image[None])
    picture = picture[0]
    side = cfg.patch_size * scale
    boxes = torch.stack([picked % cfg.grid, picked // cfg.grid, picked % cfg.grid + 1, picked // cfg.grid + 1],
                        dim=1).float() * side  # (R, 4) x1 y1 x2 y2 of each picked patch
    outlined = draw_bounding_boxes((picture * 255).byte(), boxes, colors="cyan", width=max(1, round(side / 12)))
    fig, (top, bottom) = predict.sheet(plt, [(outlined.float() / 255, f"{caption}\nGLCA's local queries: the "
                                              f"{len(picked)} patch(es) picked by {cfg.glca_select}, outlined"),
                                             (picture, "attention rollout, CLS row: what ranks the patches")], title)
    # colours stretched to this image's own range and blended so the image shows through (see plots.py)
    heat = rearrange(normalise_per_image(rollout_row[None].float().cpu())[0], "(gh gw) -> gh gw", gh=cfg.grid)
    height, width = picture.shape[-2:]
    cells = F.interpolate(heat[None, None], size=(height, width), mode="nearest")[0, 0]  # (H, W) per patch
    colormap = plt.get_cmap("inferno")
    tinted = torch.from_numpy(colormap(cells.numpy())[..., :3]).float().permute(2, 0, 1)  # (3, H, W)
    bottom.imshow(blend(picture.float().cpu(), tinted, cells).permute(1, 2, 0).numpy(),
                  extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    shown = plt.cm.ScalarMappable(cmap=colormap, norm=plt.Normalize(float(rollout_row.min()), float(rollout_row.max())))
    predict.colorbar(fig, bottom, shown, "rollout weight (image's min to max)")
    return predict.save_figure(plt, fig, path)


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    plt, device, checkpoint = predict.open_run(args, PROJECT, "--explain")
    config = checkpoint["config"]
    cfg, data = DCALConfig(**config["model"]), data_lib.DataConfig(**config["data"])
    paths = image_paths(args.inputs)
    model = predict.eval_model(DCAL(cfg), checkpoint, args.checkpoint, device)
    names, transform = list(config["classes"]), make_transform(data, cfg.image_size)  # stored by train.py
    dtype = autocast_dtype(device, checkpoint["args"]["amp"])

    rows, drawn = [], 0
    for chunk in predict.batches(paths, args.batch_size):
        images = torch.stack([transform(data_lib.load_rgb(p)) for p in chunk])  # DataError naming an unreadable file
        with autocast(device, dtype):
            out = model(images.to(device), need_rollout=plt is not None)
        branches = {"sa": out["sa"].float().softmax(dim=-1).cpu()}
        if "glca" in out:
            branches["glca"] = out["glca"].float().softmax(dim=-1).cpu()
        # train.py's evaluate() ranks by softmax(SA) + softmax(GLCA); the half of it is the same ranking, summing to 1
        branches["combined"] = sum(branches.values()) / len(branches)
        for i, path in enumerate(chunk):
            true = path.parent.name if path.parent.name in names else ""
            ranked = {branch: top_k(p[i], names) for branch, p in branches.items()}
            if args.format == "jsonl":
                rows.append({"image": str(path), "true": true or None, **ranked})
            else:
                rows += [{"image": str(path), "branch": branch, "true": true,
                          **{f"{key}_{k + 1}": entry[key] for k, entry in enumerate(top) for key in ("class", "prob")}}
                         for branch, top in ranked.items()]
            if plt is not None:
                best = ranked["combined"][0]
                caption = (f"{path.name}: predicted {best['class']} ({best['prob']:.2f})"
                           + (f", true {true}" if true else ""))
                title = f"dual_cross_attention {args.checkpoint}: GLCA local queries and attention rollout"
                drawn += 1  # numbered: images of the same name in two folders get two pictures
                picked = out["glca_picks"][i].cpu() if "glca_picks" in out else torch.zeros(0, dtype=torch.long)
                draw_explanation(plt, unnormalise(images[i], data), out["rollout"][i, 0, 1:].cpu(), picked, cfg,
                                 caption, title, Path(args.explain) / f"{drawn:03d}_{path.stem}.png")
    columns = ["image", "branch", "true"] + [f"{key}_{k + 1}" for k in range(min(TOP_K, len(names)))
                                               for key in ("class", "prob")]
    predict.write_rows(rows, columns, args.format, args.output)
    if plt is not None:
        print(f"explanations: {drawn} PNG files in {args.explain}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    run_cli(main)
