"""Does the attention rollout pick the part that decides the class? For runs on the synthetic
fine-grained task, the share of images where the rollout's top-R patches (GLCA's local queries,
Zhu et al. 2022 sec. 3.2) touch the class part, and the share of those patches that lie on it, each
beside what R random patches would give; then how test top-1 follows the hit rate over the runs.
For GLCA runs, the share of images where GLCA's own picks (rollout, last layer or random, per
--glca-select) touch the part (column "GLCA hit"), and the largest change of the GLCA logits when R
random patches replace them (column "GLCA random picks"): how much the picks matter to what GLCA
predicts.

    python dual_cross_attention/rollout_hits.py runs/ablation/dual_cross_attention/*/seed*

Each run's best.pt is scored on its validation split (the centre crop evaluation shows). A plain
ViT run (--no-glca) has a rollout too: it tells whether the attention alone finds the part.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

import argparse
import json
import math
import statistics

import torch

from common.cli import run_cli
from common.runtime import DataError
from dual_cross_attention.data import SyntheticFineGrained, rebuild_run


def part_patches(top: int, left: int, part: int, patch: int, grid: int) -> list[int]:
    """Row-major indices of the patches a part (top, left, part x part px, image coordinates) overlaps."""
    rows = range(top // patch, min(grid, (top + part - 1) // patch + 1))
    cols = range(left // patch, min(grid, (left + part - 1) // patch + 1))
    return [r * grid + c for r in rows for c in cols]


def hit_stats(scores: torch.Tensor, boxes: torch.Tensor, part: int, patch: int, top_r: int,
              picked: torch.Tensor | None = None) -> dict[str, float]:
    """scores: (B, P) rollout of CLS over the P = grid^2 patches; boxes: (B, 2) part (top, left) in image
    pixels. Returns the share of images whose top-R patches touch the part (`image_hit`) and of the
    selected patches that lie on it (`on_part`), with the same shares for R patches drawn at random
    (`image_hit_chance`, `on_part_chance`, exact expectations). `picked` (B, R): other picks than the
    top R of `scores` (GLCA's, under --glca-select last-layer or random)."""
    grid = math.isqrt(scores.shape[1])
    picked = (scores.topk(top_r, dim=1).indices if picked is None else picked).tolist()  # (B, R) patch indices
    hits, on_part, hits_chance, on_part_chance = [], [], [], []
    for chosen, (top, left) in zip(picked, boxes.tolist()):
        target = set(part_patches(top, left, part, patch, grid))
        overlap = len(target.intersection(chosen))
        hits.append(overlap > 0)
        on_part.append(overlap / top_r)
        k, n = len(target), grid * grid
        hits_chance.append(1 - math.comb(n - k, top_r) / math.comb(n, top_r))  # at least one of R on the part
        on_part_chance.append(k / n)
    return {name: statistics.fmean(values) for name, values in (
        ("image_hit", hits), ("on_part", on_part), ("image_hit_chance", hits_chance),
        ("on_part_chance", on_part_chance))}


@torch.no_grad()
def run_hits(run_dir: Path, batch_size: int = 100) -> dict:
    path = Path(run_dir) / "best.pt"
    _, model, splits = rebuild_run(path)
    model, cfg, val = model.eval(), model.cfg, splits["val"]
    if not isinstance(val, SyntheticFineGrained):
        raise DataError(f"{path}: a run on {type(val).__name__} data; the part is known only on the synthetic "
                        f"fine-grained task")
    scores, picks, random_picks_change = [], [], 0.0
    glca_inputs, glca_forward = {}, model.glca_forward

    def keep_glca_input(x: torch.Tensor, patch_scores: torch.Tensor):
        glca_inputs["x"] = x  # to run the GLCA block again on random picks
        return glca_forward(x, patch_scores)

    model.glca_forward = keep_glca_input
    for start in range(0, len(val), batch_size):
        images = torch.stack([val[i][0] for i in range(start, min(start + batch_size, len(val)))])
        out = model(images, need_rollout=True)
        scores.append(out["rollout"][:, 0, 1:])  # (B, P): CLS row over the patches
        if cfg.glca:  # GLCA's own picks, and its logits when R random patches replace them
            picks.append(out["glca_picks"])
            random_logits, _ = glca_forward(glca_inputs["x"], torch.rand_like(scores[-1]))
            random_picks_change = max(random_picks_change, float((random_logits - out["glca"]).abs().max()))
    boxes = val.part_boxes - torch.tensor(val.crop_offset(0))  # evaluation shows the same centre crop of each
    stats = hit_stats(torch.cat(scores), boxes, val.part, cfg.patch_size, cfg.num_local)
    if picks and cfg.glca_mode != "cls-query":  # what GLCA really queries (rollout, last layer or random)
        glca_stats = hit_stats(torch.cat(scores), boxes, val.part, cfg.patch_size, cfg.num_local,
                               picked=torch.cat(picks))
        stats.update(glca_image_hit=glca_stats["image_hit"], glca_on_part=glca_stats["on_part"])
    results = json.loads((Path(run_dir) / "results.json").read_text())
    return {"run": str(run_dir), "test_top1": results["test"]["top1"], **stats,
            "glca_random_picks_change": random_picks_change if cfg.glca else None}


def pearson(x: list[float], y: list[float]) -> float:
    return statistics.correlation(x, y) if len(x) > 2 else float("nan")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (best.pt and results.json) of the synthetic fine task")
    args = parser.parse_args(argv)
    rows = [run_hits(Path(run)) for run in args.runs]
    print(f"{'run':58s} {'test top-1':>10s} {'image hit':>10s} {'chance':>7s} {'on part':>8s} {'chance':>7s} "
          f"{'GLCA hit':>8s} {'GLCA random picks':>17s}")
    for row in rows:
        change = "-" if row["glca_random_picks_change"] is None else f"{row['glca_random_picks_change']:.1e}"
        glca_hit = f"{row['glca_image_hit']:.3f}" if "glca_image_hit" in row else "-"
        print(f"{row['run']:58s} {row['test_top1']:10.3f} {row['image_hit']:10.3f} {row['image_hit_chance']:7.3f} "
              f"{row['on_part']:8.3f} {row['on_part_chance']:7.3f} {glca_hit:>8s} {change:>17s}")
    mean = {k: statistics.fmean(r[k] for r in rows) for k in ("image_hit", "image_hit_chance", "on_part",
                                                               "on_part_chance")}
    print(f"mean over {len(rows)} runs: image hit {mean['image_hit']:.3f} (chance {mean['image_hit_chance']:.3f}), "
          f"selected patches on the part {mean['on_part']:.3f} (chance {mean['on_part_chance']:.3f}); "
          f"Pearson r of test top-1 and image hit rate: "
          f"{pearson([r['image_hit'] for r in rows], [r['test_top1'] for r in rows]):.2f}")
    return rows


if __name__ == "__main__":
    run_cli(main)
