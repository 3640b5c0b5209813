"""One timing method for every bench.py, so that their figures compare: the MEDIAN WALL-CLOCK time of
repeated calls after untimed warm-up calls, CUDA synchronised before and after each call (kernels are
queued asynchronously: without the sync a call would be timed before its work is done).

The median, not the mean or the fastest: a burst of load from other processes on a shared machine
moves a few calls, not the middle one. Functions compared with each other are timed in turn
(`time_in_turn`), so a slow spell hits all of them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def method(repeats: int, warmup: int = 1) -> str:
    """The line each bench prints next to its figures."""
    return f"median wall time of {repeats} calls after {warmup} warm-up, CUDA synchronised"


def sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed_call(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of `fn`, queued CUDA work included."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def time_it(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of `repeats` calls of `fn`, after `warmup` untimed calls."""
    return time_in_turn({"fn": fn}, repeats, warmup)["fn"]


def time_in_turn(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds per function, the functions called in turn in each round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed_call(fn))
    return {name: statistics.median(t) for name, t in times.items()}


class StageTimer:
    """The same method for the parts of one call (a training step split into data, forward, loss, ...):
    `start()` before the step, `lap(name)` after each part; `medians()` gives each part's median over the
    recorded steps, `total()` the median of the steps' sums. Steps recorded with `record=False` warm up."""

    def __init__(self):
        self.laps: dict[str, list[float]] = {}
        self.totals: list[float] = []

    def start(self, record: bool = True) -> None:
        self.record, self.step_total = record, 0.0
        sync()
        self.mark = time.perf_counter()

    def lap(self, name: str) -> None:
        sync()
        now = time.perf_counter()
        if self.record:
            self.laps.setdefault(name, []).append(now - self.mark)
            self.step_total += now - self.mark
        self.mark = now

    def stop(self) -> None:
        if self.record:
            self.totals.append(self.step_total)

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(t) for name, t in self.laps.items()}

    def total(self) -> float:
        return statistics.median(self.totals)
