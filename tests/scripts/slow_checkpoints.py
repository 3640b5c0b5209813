"""Run a train.py with every checkpoint write held open for a moment after its bytes are out.

    python tests/scripts/slow_checkpoints.py <project>/train.py [args...]

The reliability suite kills such a run while `last.pt.tmp` exists, which is exactly the state a
SIGKILL during `torch.save` leaves: a temporary file not yet renamed over the previous checkpoint."""

import runpy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root

import torch

_save = torch.save


def _slow_save(obj, f, *args, **kwargs):
    _save(obj, f, *args, **kwargs)
    time.sleep(1.0)  # the kill lands here: the data is written, the rename has not happened


torch.save = _slow_save
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
