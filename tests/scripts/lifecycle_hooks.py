"""Run a train.py with a fault placed at an exact point of its run lifecycle.

    python tests/scripts/lifecycle_hooks.py kill-after-row COLUMN VALUE <project>/train.py [args...]
        SIGKILL the process right after the first log.csv row whose COLUMN holds VALUE ('*': any
        non-empty value) has been written, i.e. between a validation row and the checkpoint after it.
    python tests/scripts/lifecycle_hooks.py signal-at N SIGNAME <project>/train.py [args...]
        send SIGNAME to the process itself just before the N-th Run.should_stop() call, i.e. during
        the N-th optimizer step, through the real signal handler.

Both patch common.lifecycle.Run only; the training code runs unchanged."""

import runpy
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root

from common.lifecycle import Run
from tests.lifecycle_faults import kill_after_row, signal_during_step

mode = sys.argv[1]
if mode == "kill-after-row":
    Run.log = kill_after_row(sys.argv[2], sys.argv[3])
elif mode == "signal-at":
    Run.should_stop = signal_during_step(int(sys.argv[2]), signal.Signals[sys.argv[3]])
else:
    raise SystemExit(f"unknown mode {mode!r}")

script, sys.argv = sys.argv[4], sys.argv[4:]
runpy.run_path(script, run_name="__main__")
