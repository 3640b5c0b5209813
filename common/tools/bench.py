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


def compile_and_optimiser_ratios(model, loss_of: Callable, make_optimizer: Callable, device, repeats: int = 5,
                                 compile_step: bool = True) -> dict[str, float]:
    """What `--compile` and a fused optimiser buy on `device`, measured in one run and printed.

    `loss_of(module)` is the forward and loss of one fixed batch; `make_optimizer(**kw)` builds the
    project's optimiser over `model` with extra keyword arguments (fused=True, foreach=True). A training
    step (forward under autocast, bf16 on CUDA, backward, plain optimiser step) is timed eager and through
    torch.compile(model), in turn; the compile (the first compiled step) is timed apart and its pay-back
    given in steps. Then the optimiser step alone: plain (for-loop), foreach and fused, in turn."""
    import torch

    from common.runtime import autocast, autocast_dtype

    dtype = autocast_dtype(device, "bf16") if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    optimizer = make_optimizer(foreach=False)

    def step(module):
        with autocast(device, dtype):
            loss = loss_of(module)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    out = {}
    if compile_step:
        compiled = torch.compile(model)
        out["compile_s"] = timed_call(lambda: step(compiled))
        t = time_in_turn({"eager": lambda: step(model), "compiled": lambda: step(compiled)}, repeats)
        out["compiled_over_eager"] = t["compiled"] / t["eager"]
        saved = t["eager"] - t["compiled"]
        payback = f"pays back after {out['compile_s'] / saved:.0f} steps" if saved > 0 else "never pays back here"
        print(f"   training step: compiled / eager {out['compiled_over_eager']:.2f} (eager {1000 * t['eager']:.1f} "
              f"ms, compiled {1000 * t['compiled']:.1f} ms); compile {out['compile_s']:.1f} s, {payback}")
    with autocast(device, dtype):
        loss = loss_of(model)
    loss.backward()  # the gradients every optimiser below steps with
    t = time_in_turn({kind: make_optimizer(**{kind: True} if kind != "plain" else {"foreach": False}).step
                      for kind in ("plain", "foreach", "fused")}, repeats)
    out.update(fused_over_plain=t["fused"] / t["plain"], foreach_over_plain=t["foreach"] / t["plain"])
    print(f"   optimiser step alone: fused / plain {out['fused_over_plain']:.2f}, foreach / plain "
          f"{out['foreach_over_plain']:.2f} (plain {1000 * t['plain']:.2f} ms, fused {1000 * t['fused']:.2f} ms)")
    return out
