"""Ablation of DCAL's branches and of GLCA's design (Zhu et al., CVPR 2022, sec. 4.4), each variant
fine-tuned from the same synthetic-pretrained ViT (pretrain.py) with the same budget, over seeds,
paired with the plain ViT of the same seed.

    python dual_cross_attention/ablate.py --seeds 5             # every variant, seeds 0-4, in sequence
    python dual_cross_attention/ablate.py --variants vit,dcal --seeds 1 -- --epochs 1

One run folder per variant and seed under --out (default runs/ablation/dual_cross_attention); the
table of mean ± std (common/tools/ablation.py) and the paired differences against `vit` (mean ±
standard error over the seeds, and in how many seeds the variant is ahead) are printed and
written to <out>/ablation.md and <out>/paired.md. Test top-1 is softmax(SA) + softmax(GLCA) where GLCA exists, SA
alone otherwise. Seeds draw the fine task's images, the new heads and the training order; the
pretrained backbone is the same file for all.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

import math
import statistics

from common.tools.ablation import run_ablation

PROJECT = "dual_cross_attention"
NO_PWCA = ["--no-pwca"]
VARIANTS = {
    "vit": ["--no-glca", "--no-pwca"],  # the same pretrained ViT without DCAL
    "sa+glca": NO_PWCA,  # rollout-selected local queries (the paper's GLCA)
    "glca-random": [*NO_PWCA, "--glca-select", "random"],  # R random patches as local queries
    "glca-last-layer": [*NO_PWCA, "--glca-select", "last-layer"],  # ranked by the last SA block's map alone
    "glca-local-self": [*NO_PWCA, "--glca-mode", "local-self"],  # Q, K, V of the selected tokens only
    "glca-cls-query": [*NO_PWCA, "--glca-mode", "cls-query"],  # the CLS token queries all (Cross-ViT-like)
    "sa+pwca": ["--no-glca"],
    "dcal": [],  # SA + GLCA + PWCA
}
METRICS = {"best val top-1": "best.value", "test top-1": "test.top1", "test SA top-1": "test.top1_sa",
           "test GLCA top-1": "test.top1_glca"}
# what each run writes, not what it trains: no rollout PNGs, no periodic step<N>.pt; the synthetic
# pretrained ViT named, so no variant falls back to training from scratch
BASE_FLAGS = ["--num-overlays", "0", "--keep-checkpoints", "0", "--pretrained", "synthetic"]


def paired_rows(rows: list[dict], metric: str = "test top-1", baseline: str = "vit") -> list[dict]:
    """Per variant: the mean ± standard error of (variant - baseline) over the seeds both have, and
    how many of those seeds the variant is ahead in."""
    runs = {row["variant"]: {run["seed"]: run["metrics"][metric] for run in row["runs"]} for row in rows}
    base = runs.get(baseline, {})
    paired = []
    for name, by_seed in runs.items():
        diffs = [by_seed[s] - base[s] for s in sorted(by_seed) if s in base and by_seed[s] is not None]
        if name == baseline or not diffs:
            continue
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        paired.append({"variant": name, "seeds": len(diffs), "mean": statistics.fmean(diffs), "se": se,
                       "ahead": sum(d > 0 for d in diffs), "behind": sum(d < 0 for d in diffs)})
    return paired


def paired_markdown(paired: list[dict], metric: str = "test top-1", baseline: str = "vit") -> str:
    lines = [f"| variant | seeds | {metric} - {baseline} (mean ± s.e.) | ahead / behind |", "| --- | --- | --- | --- |"]
    lines += [f"| {p['variant']} | {p['seeds']} | {p['mean']:+.3f} ± {p['se']:.3f} | {p['ahead']} / {p['behind']} |"
              for p in paired]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    result = run_ablation(PROJECT, VARIANTS, METRICS, argv, BASE_FLAGS, __doc__)
    paired = paired_markdown(paired_rows(result["rows"]))
    print(f"\npaired with the plain ViT of the same seed:\n\n{paired}")
    (Path(result["out"]) / "paired.md").write_text(f"`{result['command']}`\n\n{paired}")
    return {**result, "paired": paired}


if __name__ == "__main__":
    main()
