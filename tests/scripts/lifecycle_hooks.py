"""Run a train.py with a fault placed at an exact point of its run lifecycle.

    python tests/scripts/lifecycle_hooks.py kill-after-row COLUMN VALUE <project>/train.py [args...]
        SIGKILL the process right after the first log.csv row whose COLUMN holds VALUE ('*': any
        non-empty value) has been written, i.e. between a validation row and the checkpoint after it.
    python tests/scripts/lifecycle_hooks.py signal-at N SIGNAME <project>/train.py [args...]
        send SIGNAME to the process itself just before the N-th Run.should_stop() call, i.e. during
        the N-th optimizer step, through the real signal handler.
    python tests/scripts/lifecycle_hooks.py signal-at-test SIGNAME <project>/train.py [args...]
        send SIGNAME to the process itself as the final test begins (when best.pt is loaded for it).

Both patch common.lifecycle.Run only; the training code runs unchanged."""

import os
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
elif mode == "signal-at-test":
    load_best, signum = Run.load_best, signal.Signals[sys.argv[2]]

    def signalled_load_best(self, *args, **kwargs):
        os.kill(os.getpid(), signum)
        return load_best(self, *args, **kwargs)

    Run.load_best = signalled_load_best
    sys.argv.insert(3, "")  # no third argument: the script stays at position 4
else:
    raise SystemExit(f"unknown mode {mode!r}")

script, sys.argv = sys.argv[4], sys.argv[4:]
runpy.run_path(script, run_name="__main__")
