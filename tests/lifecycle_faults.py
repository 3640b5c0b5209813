"""Faults placed at exact points of a run's lifecycle, shared by the in-process tests and by
tests/scripts/lifecycle_hooks.py. Each returns a replacement for a method of common.lifecycle.Run."""

import os
import signal

from common.lifecycle import Run


def signal_during_step(n: int, signum: int = signal.SIGTERM):
    """Run.should_stop that sends `signum` to this process on its n-th call (during the n-th
    optimizer step), so the real handler stops the run."""
    should_stop, calls = Run.should_stop, [0]

    def signalled(self):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signum)
        return should_stop(self)

    return signalled


def kill_after_row(column: str, value: str):
    """Run.log that SIGKILLs this process right after writing the first row whose `column` holds
    `value` ('*': any non-empty value)."""
    log = Run.log

    def log_then_kill(self, row):
        log(self, row)
        cell = row.get(column)
        if cell not in (None, "") and (value == "*" or str(cell) == value):
            os.kill(os.getpid(), signal.SIGKILL)

    return log_then_kill
