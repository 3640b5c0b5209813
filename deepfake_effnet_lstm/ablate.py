"""Ablation of the detector's ingredients at the demo budget, over seeds: the temporal context
(T = 8, 4, 1 frames per sequence), the attention module inside the backbone (T = 8 without it) and
the seed's LSTM size (512 x 2 layers, one direction).

    python deepfake_effnet_lstm/ablate.py                       # every variant, seeds 0-2, in sequence
    python deepfake_effnet_lstm/ablate.py --variants t8,t1 --seeds 1 -- --max-iters 10

One run folder per variant and seed under --out (default runs/ablation/deepfake_effnet_lstm); the
table of mean ± std is printed and written to <out>/ablation.md (common/tools/ablation.py). Every run
scores best.pt (lowest validation loss) on the test split (--test); "val" is the last validation.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project, when run as a script

from common.tools.ablation import run_ablation

VARIANTS = {
    "t8": [],  # the demo: 8 frames, sigmoid-gate attention
    "t4": ["--frames", "4"],
    "t1": ["--frames", "1"],  # no temporal context: a single frame cannot show the flicker
    "t8-no-attention": ["--attention", "none"],
    # the seed's LSTM (512 x 2 layers, one direction) instead of the default 128 x 1 bidirectional
    "t8-lstm512x2": ["--lstm-hidden", "512", "--lstm-layers", "2", "--no-bidirectional"],
}
METRICS = {"best val loss": "best.value", "val ROC-AUC": "val.roc_auc", "val video ROC-AUC": "val.video_roc_auc",
           "test ROC-AUC": "test.roc_auc", "test video ROC-AUC": "test.video_roc_auc"}
# the test split scored at the end; nothing else written that the table does not need
BASE_FLAGS = ["--test", "--no-overlays", "--no-tensorboard", "--keep-checkpoints", "0"]


def main(argv: list[str] | None = None) -> dict:
    return run_ablation("deepfake_effnet_lstm", VARIANTS, METRICS, argv, BASE_FLAGS, __doc__)


if __name__ == "__main__":
    main()
