"""Ablation of DCAL's branches at the demo budget, over seeds: a plain ViT, SA + GLCA, SA + PWCA
and the full DCAL, the component ablation of Zhu et al. (CVPR 2022), here on the default
synthetic fine-grained data and from scratch.

    python dual_cross_attention/ablate.py                       # every variant, seeds 0-2, in sequence
    python dual_cross_attention/ablate.py --variants vit,dcal --seeds 1 -- --epochs 1

One run folder per variant and seed under --out (default runs/ablation/dual_cross_attention); the
table of mean ± std is printed and written to <out>/ablation.md (common/tools/ablation.py). Test top-1
is softmax(SA) + softmax(GLCA) where GLCA exists, SA alone otherwise.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

from common.tools.ablation import run_ablation

PROJECT = "dual_cross_attention"
VARIANTS = {
    "vit": ["--no-glca", "--no-pwca"],  # the same ViT without DCAL
    "sa+glca": ["--no-pwca"],
    "sa+pwca": ["--no-glca"],
    "dcal": [],  # the demo: SA + GLCA + PWCA
}
METRICS = {"best val top-1": "best.value", "test top-1": "test.top1", "test SA top-1": "test.top1_sa",
           "test GLCA top-1": "test.top1_glca"}
# what each run writes, not what it trains: no rollout PNGs, no periodic step<N>.pt
BASE_FLAGS = ["--num-overlays", "0", "--keep-checkpoints", "0"]


def main(argv: list[str] | None = None) -> dict:
    return run_ablation(PROJECT, VARIANTS, METRICS, argv, BASE_FLAGS, __doc__)


if __name__ == "__main__":
    main()
