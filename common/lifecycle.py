"""The run lifecycle every train.py goes through, written once. A whole run, small enough to try
(`tests/test_lifecycle.py` runs this example):

    import argparse, torch
    from common.cli import parse_with_resume, run_args
    from common.checkpoint import checkpoint_bytes
    from common.lifecycle import Run, State

    parser = argparse.ArgumentParser()
    run_args(parser, "runs/demo", ckpt_interval=0, log_interval=1)       # --out, --resume, --seed, ...
    args, resumed = parse_with_resume(parser, ["--out", "runs/demo"], "demo")  # a checked checkpoint or None
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    with Run("demo", args, {"lr": 0.1}, "runs/demo", resumed, best_metric="loss", best_mode="min") as run:
        state = State(model, optimizer, scaler=None)
        run.restore(state)                          # weights, optimiser, step, epoch, meters of --resume
        run.open(["step", "epoch", "loss"], checkpoint_bytes(model, optimizer))  # config.json, log.csv, signals
        while state.epoch < 3:
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            run.log({"step": state.step, "epoch": state.epoch, "loss": loss})
            if run.should_stop():                   # SIGTERM / SIGINT / SIGUSR1: save, say how to resume
                run.save("last.pt", state)
                run.exit_stopped(state.step)
            state.epoch += 1
            if run.improved(loss.item(), state.step, state.epoch):
                run.save("best.pt", state)           # rank 0 writes, every rank waits
            run.save("last.pt", state)
        run.load_best(model)                         # the test split is scored with best.pt's weights
        run.finish({"best": run.best})               # results.json, lock released

What it keeps for the user (run folders, resume, stop signals, checkpoints) is said in RUNS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from common import checkpoint, runtime
from common.runfolder import claim_run_dir
from common.runtime import is_main, world_size


@dataclass
class State:
    """Everything the training loop mutates, and nothing else; every checkpoint holds all of it."""
    model: torch.nn.Module  # what the loop calls: DDP-wrapped under torchrun (unwrap() to save or evaluate)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch in progress (= epochs finished)
    batch_in_epoch: int = 0  # batches of `epoch` already trained: a mid-epoch resume starts after them
    meters: dict = field(default_factory=dict)  # running sums, counters and controller states the loop carries


@dataclass
class RunSettings:
    """The run flags every train.py shares (added by run_args), as one object the loop reads."""
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    workers: int = 0
    log_interval: int = 10
    ckpt_interval: int = 0
    keep_checkpoints: int = 2
    compile: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunSettings:
        return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__})


class Run(contextlib.AbstractContextManager):  # `with Run(...) as run:` closes it on errors too
    """Folder, lock, checkpoints, log, best metric and stop signals of one training run. Every rank builds
    one and makes the same calls; rank 0 alone writes. Not a trainer: the loop stays in each train.py."""

    def __init__(self, project: str, args: argparse.Namespace, config: dict, default_out: str,
                 resumed: dict | None = None, best_metric: str = "", best_mode: str = "max"):
        self.project, self.args, self.config, self.resumed = project, args, config, resumed
        self.best = {"metric": best_metric, "mode": best_mode, "value": None, "step": -1, "epoch": -1}
        self.log_rows, self.last_size, self._columns = 0, 0, []
        self._stop_signal, self._old_handlers = None, {}  # the signal that came; the handlers to restore
        self._owner_pid = os.getpid()  # DataLoader workers inherit the handlers; only this process acts
        world = world_size()
        saved = resumed["progress"].get("world_size", 1) if resumed else world
        if saved != world:
            how = f"with torchrun --nproc_per_node {saved} ..." if saved > 1 else "it without torchrun"
            raise runtime.ConfigMismatchError(f"--resume {args.resume}: written by {saved} process(es), this run "
                                              f"has {world}; the data shards and the position in the epoch depend "
                                              f"on it (resume {how})")
        claimed = [None]  # rank 0 picks and locks the folder; the others are told which one it is
        if is_main():
            claimed[0] = claim_run_dir(args.out, default_out, args.resume, args.overwrite,
                                       resumed.get("config") if resumed else None)
        if world > 1:
            dist.broadcast_object_list(claimed, src=0)
        self.dir, self._lock, self._clear_on_open = claimed[0]
        self._lock = self._lock if is_main() else None

    def restore(self, state: State) -> bool:
        """Load the resumed checkpoint into `state` (weights, optimiser, scaler, position, meters).
        False for a fresh run. Call `restore_rng()` after everything that draws random numbers."""
        if self.resumed is None:
            return False
        path, saved, progress = self.args.resume, self.resumed, self.resumed["progress"]
        checkpoint.load_model_state(state.model, saved["model"], path)
        if saved["optimizer"] is not None:
            checkpoint.load_optimizer_state(state.optimizer, saved["optimizer"], path)
        if state.scaler is not None and saved["scaler"]:
            state.scaler.load_state_dict(saved["scaler"])
        state.step, state.epoch = progress["step"], progress.get("epoch", 0)
        state.batch_in_epoch, state.meters = progress.get("batch_in_epoch", 0), saved["extra"]
        self.best, self.log_rows = dict(saved["best"]), progress.get("log_rows", 0)
        return True

    def restore_rng(self) -> None:
        if self.resumed is not None:
            states, rank = self.resumed["rng"], dist.get_rank() if world_size() > 1 else 0
            runtime.set_rng_state(states[rank] if rank < len(states) else states[0])

    def open(self, log_columns: list[str], checkpoint_size: int) -> None:
        """Check free space against the checkpoint size, then write config.json and start (or
        truncate) log.csv, and catch the stop signals. Nothing was written before this call."""
        self._columns, self.last_size = list(log_columns), checkpoint_size
        if is_main():
            need = 2 * checkpoint_size / 2**20 + 1  # a new checkpoint is written beside the old one
            free = shutil.disk_usage(self.dir).free / 2**20
            if free < need:
                raise runtime.RunDirError(f"run folder {self.dir}: only {free:.1f} MB free, need at least "
                                          f"{need:.0f} MB for checkpoints of {checkpoint_size / 2**20:.1f} MB")
            log, kept_rows = self.dir / "log.csv", []  # a resumed run keeps the rows its checkpoint had seen
            if self.resumed is not None and not self._clear_on_open and log.exists():
                with open(log, newline="") as f:
                    text = f.read()
                rows = list(csv.reader(io.StringIO(text[: text.rfind("\n") + 1])))  # a torn last line is dropped
                if rows and rows[0] != self._columns:  # checked before anything in the folder changes
                    raise runtime.ConfigMismatchError(f"{log}: columns {rows[0]} differ from {self._columns}")
                kept_rows = rows[1 : 1 + self.log_rows]
            if self._clear_on_open:
                for item in self.dir.iterdir():
                    if item.name != ".lock":
                        shutil.rmtree(item) if item.is_dir() else item.unlink()
            for stale in self.dir.glob("*.pt.tmp"):  # left by a run killed while saving
                stale.unlink()
            if self.resumed is not None:
                self._drop_abandoned_checkpoints()
            with open(self.dir / "config.json", "w") as f:
                json.dump(self.config, f, indent=2, sort_keys=True, default=str)
            with open(log, "w", newline="") as f:
                csv.writer(f).writerows([self._columns, *kept_rows])
            self.log_rows = len(kept_rows)
        if threading.current_thread() is threading.main_thread():  # signal.signal works there only
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        self.print(f"run folder {self.dir} ({f'resumed from {self.args.resume}' if self.resumed else 'new run'})")

    def _drop_abandoned_checkpoints(self) -> None:
        """Resumed from a step<N>.pt: the later periodic checkpoints and best.pt belong to the branch this run
        abandons. best.pt is read first: a damaged one is an error naming it before anything is deleted."""
        step, best, resumed = self.resumed["progress"]["step"], self.dir / "best.pt", Path(self.args.resume)
        best_step = -1
        if resumed.name != "last.pt" and best.is_file() and best.resolve() != resumed.resolve():
            try:
                best_step = checkpoint.read_checkpoint_file(best)["best"]["step"]
            except (checkpoint.CheckpointError, KeyError, TypeError) as e:
                raise checkpoint.CheckpointError(f"{best}: unreadable ({e}); resuming {resumed} must know whether "
                                                 f"best.pt is from a later step: delete or replace {best}; nothing was "
                                                 f"changed") from None
        for later in self.dir.glob("step*.pt"):
            if later.stem[4:].isdigit() and int(later.stem[4:]) > step:
                later.unlink()
        if best_step > step:
            best.unlink()
            self.best.update(value=None, step=-1, epoch=-1)
            self.print(f"removed {best} (step {best_step}, after the resumed step {step})")

    def print(self, *args, **kwargs) -> None:
        if is_main():
            print(*args, **kwargs, flush=True)

    def log(self, row: dict) -> None:
        """One row of log.csv (rank 0); the row count goes into every checkpoint."""
        if not is_main():
            return
        unknown = set(row) - set(self._columns)
        if unknown:
            raise KeyError(f"log.csv: columns {sorted(unknown)} are not in the header {self._columns}")
        with open(self.dir / "log.csv", "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self._columns])
        self.log_rows += 1

    def improved(self, value: float, step: int, epoch: int) -> bool:
        """Record `value` of the best metric; True when it beats every earlier one (NaN never does)."""
        best = self.best["value"]
        better = not math.isnan(value) and (
            best is None or (value > best if self.best["mode"] == "max" else value < best))
        if better:
            self.best.update(value=value, step=step, epoch=epoch)
        return better

    def save(self, name: str, state: State) -> None:
        """Write a checkpoint of `state` (rank 0) and wait until it is complete on every rank, so no
        rank can read a checkpoint that is still being written. Every rank must call it."""
        world, rngs = world_size(), [runtime.rng_state()]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, runtime.rng_state())
        if is_main():
            progress = {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                        "log_rows": self.log_rows, "world_size": world}
            contents = {"format": checkpoint.CHECKPOINT_FORMAT, "project": self.project,
                        "args": checkpoint.storable(vars(self.args)), "config": checkpoint.storable(self.config),
                        "model": runtime.unwrap(state.model).state_dict(),
                        "optimizer": state.optimizer.state_dict() if state.optimizer is not None else None,
                        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
                        "progress": progress, "best": dict(self.best), "rng": rngs,
                        "extra": checkpoint.storable(state.meters)}
            path, free = self.dir / name, shutil.disk_usage(self.dir).free
            if free < self.last_size:
                raise runtime.RunDirError(f"not enough space to write {path}: the last checkpoint took "
                                          f"{self.last_size / 2**20:.1f} MB, {free / 2**20:.1f} MB are free; the "
                                          f"previous {name} is kept")
            self.last_size = checkpoint.save_atomic(path, contents)
        if world > 1:
            dist.barrier()

    def save_periodic(self, state: State) -> None:
        """`step<N>.pt` beside last.pt, keeping the newest --keep-checkpoints of them."""
        if self.args.keep_checkpoints == 0:
            return
        self.save(f"step{state.step:07d}.pt", state)
        if is_main():
            for old in sorted(self.dir.glob("step*.pt"))[: -self.args.keep_checkpoints]:
                old.unlink()

    def load_best(self, model) -> bool:
        """Every rank loads best.pt (complete: saves end with a barrier). False when there is none (no
        validation ran): the current weights are then what gets tested."""
        path = self.dir / "best.pt"
        if world_size() > 1:
            dist.barrier()
        if not path.is_file():
            self.print("no best.pt in this run (no validation ran): testing the current weights")
            return False
        checkpoint.load_model_state(model, checkpoint.load_run_checkpoint(path, self.project)["model"], path)
        return True

    def _on_signal(self, signum, frame) -> None:
        if os.getpid() != self._owner_pid:
            return  # a DataLoader worker: the main process stops the run
        if self._stop_signal is not None:  # the second one: leave at once
            raise SystemExit(128 + signum)
        self._stop_signal = signum
        print(f"\n{signal.Signals(signum).name} received: finishing this step, then saving last.pt "
              f"(send it again to exit at once)", file=sys.stderr, flush=True)

    def should_stop(self) -> bool:
        """True once a stop signal reached any rank; all ranks agree on the same step (under
        torchrun one tiny all-reduce per call, i.e. per step)."""
        flag = self._stop_signal is not None
        if world_size() > 1:
            t = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
            if flag and self._stop_signal is None:
                self._stop_signal = signal.SIGTERM  # a peer was signalled
        return flag

    def exit_stopped(self, step: int) -> None:
        """After last.pt is saved: say how to resume, release the folder and exit non-zero."""
        world = world_size()
        launcher = f"torchrun --nproc_per_node {world}" if world > 1 else "python"
        self.print(f"stopped by {signal.Signals(self._stop_signal).name} at step {step}; last.pt is saved. "
                   f"Continue with:\n    {launcher} {self.project}/train.py --resume {self.dir / 'last.pt'}")
        self.close()
        raise SystemExit(128 + self._stop_signal)

    def finish(self, results: dict) -> None:
        """results.json (rank 0), then release the folder. A stop signal during the final test let it finish:
        results.json is complete, and the exit status (128 + signal) still tells the scheduler."""
        if is_main():
            with open(self.dir / "results.json", "w") as f:
                json.dump(checkpoint.storable(results), f, indent=2, sort_keys=True, default=str)
        self.close()
        if self._stop_signal is not None:
            self.print(f"{signal.Signals(self._stop_signal).name} received during the final test; it finished and "
                       f"{self.dir / 'results.json'} is written. Nothing is left to resume.")
            raise SystemExit(128 + self._stop_signal)

    def close(self) -> None:
        """Restore the signal handlers and release the lock (idempotent; also right on errors)."""
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self._lock.parent.rmdir()  # only if this run left it empty (failed before writing)
            self._lock = None

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(value):
    value = value.item() if isinstance(value, torch.Tensor) else value
    return f"{value:.6g}" if isinstance(value, float) else value
