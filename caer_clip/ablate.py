"""Ablation of CLIP-CAER's ingredients at the demo budget, over seeds: the context stream, the
MoCo branch, and semantic LDL after its warm-up (off in the demo, so its variant turns it on).

    python caer_clip/ablate.py                                  # every variant, seeds 0-2, in sequence
    python caer_clip/ablate.py --variants full,no-context --seeds 1 -- --epochs 1

One run folder per variant and seed under --out (default runs/ablation/caer_clip); the table of
mean ± std is printed and written to <out>/ablation.md (common/tools/ablation.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

from common.tools.ablation import run_ablation

PROJECT = "caer_clip"

VARIANTS = {
    "full": [],  # the demo: face + context streams, hard labels (LDL off), no MoCo (as both originals' final code)
    "no-context": ["--no-context"],
    "moco": ["--moco-queue", "4096"],  # RAPT-CLIP @706b54b's MoCoRank at weight 0.1
    "ldl": ["--ldl"],  # semantic LDL after the --ldl-warmup epochs (2 of the 4)
}
METRICS = {"best val UAR": "best.value", "test UAR": "test.uar", "test WAR": "test.war"}
# what each run writes, not what it trains: no periodic step<N>.pt beside last.pt / best.pt
BASE_FLAGS = ["--keep-checkpoints", "0"]


def main(argv: list[str] | None = None) -> dict:
    return run_ablation("caer_clip", VARIANTS, METRICS, argv, BASE_FLAGS, __doc__)


if __name__ == "__main__":
    main()
