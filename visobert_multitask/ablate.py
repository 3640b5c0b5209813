"""Ablation of the two losses at the demo budget, over seeds: focal + supervised contrastive
(the demo), focal alone, contrastive alone (the classifier then learns as a probe on detached
sentence vectors, see losses.compute_losses), and focal + the original's soft-match contrastive loss.

    python visobert_multitask/ablate.py                         # every variant, seeds 0-2, in sequence
    python visobert_multitask/ablate.py --variants both,focal --seeds 1 -- --epochs 1

One run folder per variant and seed under --out (default runs/ablation/visobert_multitask); the
table of mean ± std is printed and written to <out>/ablation.md (common/tools/ablation.py). "val" is the
last epoch's validation, "test" the best epoch's weights on the test split.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

from common.tools.ablation import run_ablation

VARIANTS = {
    "both": [],  # the demo: 0.8 focal (mean over aspects) + 0.2 SupCon, the seed's recipe
    "focal": ["--loss", "focal"],
    "contrastive": ["--loss", "contrastive"],
    "soft-match": ["--contrastive", "original"],  # the original's contrastive loss in place of SupCon
}
METRICS = {"best val score": "best.value", "val detection F1": "val.det_f1", "val sentiment F1": "val.sent_f1",
           "test detection F1": "test.det_f1", "test sentiment F1": "test.sent_f1"}
# what each run writes, not what it trains: no periodic step<N>.pt beside last.pt / best.pt
BASE_FLAGS = ["--keep-checkpoints", "0"]


def main(argv: list[str] | None = None) -> dict:
    return run_ablation("visobert_multitask", VARIANTS, METRICS, argv, BASE_FLAGS, __doc__)


if __name__ == "__main__":
    main()
