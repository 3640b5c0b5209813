"""Pictures of a DCAL run: the attention rollout over validation images, as train.py saves them at
each validation (`rollout_stepNNNNNN.png`). Needs matplotlib; without it nothing is drawn."""

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torchvision.utils import make_grid

from common.tools.predict import colorbar, enlarge, pyplot_or_none, save_figure, sheet


def save_rollout_png(model, dataset, count: int, path: Path, step: int, epoch: int, val: dict) -> None:
    """The rollout picture of the first `count` images of `dataset` (see save_rollout_overlays)."""
    plt = pyplot_or_none()
    if plt is None or count == 0:
        return
    examples = overlay_examples(dataset, count, next(model.parameters()).device)
    title = rollout_title(step, epoch, val, model.cfg, examples["parts"] is not None)
    save_rollout_overlays(plt, model, examples, path, title)


def overlay_examples(dataset, count: int, device) -> dict:
    """The first `count` images of a split (evaluation transform) for the rollout pictures, with their
    labels, class names and, on the synthetic set, where the class part is: (top, left, side)
    in image pixels, from the generator's own record of where it drew it."""
    indices = range(min(count, len(dataset)))
    items = [dataset[i] for i in indices]
    names = getattr(dataset, "classes", None) or [f"class {k}" for k in range(dataset.num_classes)]
    parts = None
    if hasattr(dataset, "part_boxes"):  # SyntheticFineGrained: boxes in canvas pixels, shown through a crop
        parts = [(int(dataset.part_boxes[i, 0]) - dataset.crop_offset(i)[0],
                  int(dataset.part_boxes[i, 1]) - dataset.crop_offset(i)[1], dataset.part) for i in indices]
    return {"images": torch.stack([image for image, _, _ in items]).to(device),
            "labels": [label for _, label, _ in items], "names": list(names), "parts": parts}


@torch.no_grad()
def save_rollout_overlays(plt, model, examples: dict, path: Path, title: str) -> None:
    """One row per image, true and predicted class above it. Left: the image (class part outlined in
    green where the data knows it). Right: the CLS row of the attention rollout over the image (the
    ranking GLCA picks its local queries from), with a colour bar, and GLCA's picks outlined in cyan."""
    was_training = model.training
    model.eval()
    out = model(examples["images"], need_rollout=True)
    model.train(was_training)
    probs = out["sa"].float().softmax(-1) + (out["glca"].float().softmax(-1) if "glca" in out else 0)
    predicted = probs.argmax(-1).tolist()  # the prediction evaluate() scores: SA + GLCA probabilities
    cfg, names = model.cfg, examples["names"]
    rollout = out["rollout"][:, 0, 1:].float().cpu()  # (K, patches): the CLS row
    picks = out["glca_picks"].cpu() if "glca_picks" in out else torch.zeros(len(rollout), 0, dtype=torch.long)
    images = examples["images"].float().cpu()
    lo, hi = images.amin(dim=(1, 2, 3), keepdim=True), images.amax(dim=(1, 2, 3), keepdim=True)
    pictures, scale = enlarge((images - lo) / (hi - lo).clamp_min(1e-8))  # per-image min-max to [0, 1]
    gap, (height, width) = 8, pictures.shape[-2:]
    panels = [(make_grid([picture, picture], nrow=2, padding=gap, pad_value=1.0),
               f"val image {k + 1}: true {names[y]}, predicted {names[p]} ({'right' if y == p else 'wrong'})")
              for k, (picture, y, p) in enumerate(zip(pictures, examples["labels"], predicted))]
    fig, axes = sheet(plt, panels, title)
    x0, side = 2 * gap + width, cfg.patch_size * scale  # left edge of the right tile; a patch in pixels
    heat = normalise_per_image(rollout)  # (K, patches) in [0, 1]
    colormap = plt.get_cmap("inferno")
    for k, ax in enumerate(axes):
        grid_heat = rearrange(heat[k], "(gh gw) -> gh gw", gh=cfg.grid)  # CLS row back onto the patch grid
        cells = F.interpolate(grid_heat[None, None], size=(height, width), mode="nearest")[0, 0]  # (H, W) patches
        tinted = torch.from_numpy(colormap(cells.numpy())[..., :3]).float().permute(2, 0, 1)  # (3, H, W)
        ax.imshow(blend(pictures[k], tinted, cells).permute(1, 2, 0).numpy(),
                  extent=(x0 - 0.5, x0 + width - 0.5, gap + height - 0.5, gap - 0.5))
        shown = plt.cm.ScalarMappable(cmap=colormap, norm=plt.Normalize(float(rollout[k].min()),
                                                                          float(rollout[k].max())))
        for patch in picks[k].tolist():
            ax.add_patch(plt.Rectangle((x0 + (patch % cfg.grid) * side - 0.5, gap + (patch // cfg.grid) * side - 0.5),
                                       side, side, fill=False, edgecolor="cyan", linewidth=2))
        if examples["parts"] is not None:
            top, left, part = examples["parts"][k]
            ax.add_patch(plt.Rectangle((gap + left * scale - 0.5, gap + top * scale - 0.5), part * scale,
                                       part * scale, fill=False, edgecolor="lime", linewidth=2.5))
        ax.set_xlim(-0.5, panels[k][0].shape[-1] - 0.5)
        ax.set_ylim(panels[k][0].shape[-2] - 0.5, -0.5)
        colorbar(fig, ax, shown, "rollout weight (this image's min to max)")
    save_figure(plt, fig, path)


def normalise_per_image(scores: torch.Tensor) -> torch.Tensor:
    """(K, P) rollout weights -> [0, 1] per image (its own min to max): the CLS row of a rollout spans
    a narrow band (e.g. 0.0140-0.0152), which one shared colour scale shows as a flat tint."""
    lo, hi = scores.amin(dim=1, keepdim=True), scores.amax(dim=1, keepdim=True)
    return (scores - lo) / (hi - lo).clamp_min(1e-12)


def blend(picture: torch.Tensor, tinted: torch.Tensor, heat: torch.Tensor, strength: float = 0.7) -> torch.Tensor:
    """The picture (3, H, W) in [0, 1] under the colour-mapped heat (3, H, W), the colour's weight
    growing with the heat (H, W) in [0, 1] up to `strength`: where the rollout is low the image shows
    as it is, where it is high the colour dominates, and the image always shows through."""
    weight = strength * heat[None]
    return (1 - weight) * picture + weight * tinted


def rollout_title(step: int, epoch: int, val: dict, cfg, parts_known: bool) -> str:
    glca = f"cyan: GLCA's {cfg.num_local} local quer{'y' if cfg.num_local == 1 else 'ies'}" if cfg.glca else "no GLCA"
    part = "; green: the class part" if parts_known else ""
    return (f"DCAL attention rollout, validation images, step {step} (epoch {epoch}), val top1 {val['top1']:.3f}. "
            f"Left: image{part}. Right: rollout CLS row over the image; {glca}")
