"""The run lifecycle every train.py goes through, written once.

    args, explicit = parse_args(...)                        # flags, checked at parse time
    resumed = resume_from(args.resume, PROJECT, ...)        # a checked checkpoint, or None
    run = Run(PROJECT, args.out, ...)                       # folder + lock; nothing written yet
    ... build data, model, optimizer ...
    progress = run.restore(model, optimizer, scaler)        # state dicts, with clear errors
    run.open(LOG_COLUMNS, checkpoint_bytes(model, optimizer))  # space, config.json, log.csv, signals
    for epoch ...:
        train_one_epoch(...)                                # calls run.log / run.should_stop
        run.save("last.pt", ...)                            # rank 0 writes, every rank waits
    run.load_best(model); evaluate(test)
    run.finish(results)                                     # results.json, lock released

The pieces, each a plain function or a small object that can be copied out:
- run folders: a default `--out` takes the next free `runs/<project>[-N]`; an explicit used
  folder is refused unless resumed or `--overwrite`n; one process at a time holds `.lock`;
- one checkpoint schema for all projects, validated on load with errors that name the file;
- the log resumes by its row count, stored in the checkpoint;
- SIGTERM / SIGINT / SIGUSR1 finish the step, save last.pt and exit non-zero;
- barriers around every checkpoint another rank reads.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import socket
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from common.runtime import (
    AMP_MODES,
    ConfigMismatchError,
    RunDirError,
    is_main,
    rng_state,
    set_rng_state,
    unwrap,
)

# Format 2: only tensors and plain values (loadable with weights_only=True); format 1 held numpy arrays.
CHECKPOINT_FORMAT = 2
CHECKPOINT_KEYS = ("format", "project", "args", "config", "model", "optimizer", "scaler", "progress", "best",
                   "rng", "extra")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message names the file and what is wrong with it."""


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

    def progress(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}


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

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunSettings:
        return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__})


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _distributed():
        dist.barrier()


# ----------------------------------------------------------------------------- arguments


def run_args(parser: argparse.ArgumentParser, default_out: str, ckpt_interval: int, log_interval: int) -> None:
    """The flags every train.py shares, with the same names and checks in all four."""
    from common.cli import at_least

    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help=f"run folder (default: the next free {default_out}, "
                   f"{default_out}-2, ...; an explicit folder that holds a run needs --resume or --overwrite)")
    g.add_argument("--resume", default=None, help="checkpoint to continue from, e.g. <out>/last.pt; "
                   "settings not given on the command line come from the checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace the run in an explicit --out folder")
    g.add_argument("--seed", type=at_least(0), default=0, help="seeds weights, data order and augmentation "
                   "(default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    g.add_argument("--amp", nargs="?", const="auto", default="auto", choices=AMP_MODES[:3],
                   help="autocast on CUDA: auto = bf16 where the GPU supports it, else fp16 with loss "
                        "scaling; bf16 / fp16 force one (default: %(default)s; no effect on CPU)")
    g.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="plain fp32 on CUDA too")
    g.add_argument("--workers", type=at_least(0), default=0, help="DataLoader worker processes (default: %(default)s)")
    g.add_argument("--log-interval", type=at_least(1), default=log_interval,
                   help="optimizer steps between training log lines (default: %(default)s)")
    g.add_argument("--ckpt-interval", type=at_least(0), default=ckpt_interval,
                   help="optimizer steps between last.pt writes, besides every epoch end and every stop "
                        "(0: epoch ends only; default: %(default)s)")
    g.add_argument("--keep-checkpoints", type=at_least(0), default=2,
                   help="periodic checkpoints kept besides last.pt and best.pt (default: %(default)s)")


# Settings that say where and how a run executes, not what it computes: never taken from a checkpoint.
PLACE_ARGS = ("out", "resume", "overwrite", "device", "workers")


def parse_with_resume(parser: argparse.ArgumentParser, argv, project: str):
    """Parse the command line; with --resume, every setting the command line leaves unset comes
    from the checkpoint, so `train.py --resume <out>/last.pt` alone continues the same run.

    Returns (namespace, checkpoint or None). The checkpoint is loaded and checked here, before
    anything is written anywhere."""
    from common.cli import explicit_dests

    args = parser.parse_args(argv)
    if not args.resume:
        return args, None
    checkpoint = load_run_checkpoint(args.resume, project)
    given = explicit_dests(parser, argv)
    for key, value in checkpoint["args"].items():
        if key not in given and key not in PLACE_ARGS and hasattr(args, key):
            setattr(args, key, value)
    return args, checkpoint


def check_resume_config(checkpoint: dict, config: dict, keys, path) -> None:
    """Raise ConfigMismatchError naming every key that must match on resume and does not."""
    saved, now = _flatten(checkpoint["config"]), _flatten(config)
    differing = [f"{k}: checkpoint={saved.get(k)!r} now={now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
    if differing:
        raise ConfigMismatchError(f"--resume {path}: the checkpoint was written with a different configuration: "
                                  + "; ".join(differing) + " (drop these flags to continue it as it was)")


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        flat[prefix + key] = value
        flat.setdefault(key, value)  # also reachable by its bare name
    return flat


# ----------------------------------------------------------------------------- checkpoints


def load_run_checkpoint(path: str | os.PathLike, project: str, map_location="cpu") -> dict:
    """A run checkpoint of `project`, or a CheckpointError that names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = read_checkpoint_file(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a training checkpoint")
    if "format" not in state:
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: a bare state_dict (weights only), not a training checkpoint; "
                                  "it can be loaded as pretrained weights, not resumed")
        missing = [k for k in CHECKPOINT_KEYS if k not in state]
        raise CheckpointError(f"{path}: not a checkpoint of this repository (missing keys {missing})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state['format']!r}, this code reads {CHECKPOINT_FORMAT}")
    if state.get("project") != project:
        raise CheckpointError(f"{path}: written by {state.get('project')!r}, not {project!r}")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing keys {missing}")
    return state


def read_checkpoint_file(path: Path, map_location="cpu"):
    """torch.load(weights_only=True) with the failures told apart: empty, truncated, not a PyTorch
    file, or a pickle of objects other than tensors and plain values (refused unopened: unpickling
    them could run code, so a checkpoint from elsewhere is as safe to open as one's own)."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint (a save that never finished?)")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(e))
        if unsafe:  # the safe unpickler met a reference to a Python callable or class
            raise CheckpointError(f"{path}: refers to the Python object {unsafe.group(1)}, not only tensors and plain "
                                  f"values; refused without unpickling it (that could run code). Checkpoints of this "
                                  f"repository before format {CHECKPOINT_FORMAT} held numpy arrays and are refused "
                                  f"too") from None
        if head.startswith(b"PK"):
            raise CheckpointError(f"{path}: truncated or damaged ({size} bytes; the zip archive cannot be "
                                  f"read: {first[:120]})") from e
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (starts with {head!r})") from e


def load_model_state(model: torch.nn.Module, state: dict, path) -> None:
    """load_state_dict(strict) with one error naming the file, missing/unexpected keys and shapes."""
    own = unwrap(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(items):
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
        problems = [f"missing {few(missing)}" if missing else "", f"unexpected {few(unexpected)}" if unexpected else "",
                    f"other shapes (checkpoint vs model) {few(shapes)}" if shapes else ""]
        raise CheckpointError(f"{path}: the weights do not fit this model: " + "; ".join(p for p in problems if p))
    unwrap(model).load_state_dict(state)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, path) -> None:
    """Refuse an optimiser state whose groups do not match this run's (other frozen parts, other
    parameter grouping), instead of torch's error about 'parameter groups'."""
    saved = [len(g["params"]) for g in state["param_groups"]]
    now = [len(g["params"]) for g in optimizer.param_groups]
    if saved != now:
        raise CheckpointError(f"{path}: other optimiser layout: parameters per group {saved} in the checkpoint, "
                              f"{now} in this run (a flag that freezes or regroups parameters differs)")
    optimizer.load_state_dict(state)


def checkpoint_bytes(*objects) -> int:
    """Bytes of the tensors a checkpoint of these modules / optimisers will hold. An optimiser
    that has not stepped yet has no state: Adam-like ones are counted as 2 buffers per parameter."""
    total = 0
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in unwrap(obj).state_dict().values())
        elif isinstance(obj, torch.optim.Optimizer):
            buffers = sum(t.numel() * t.element_size() for s in obj.state.values() for t in s.values()
                          if isinstance(t, torch.Tensor))
            params = sum(p.numel() * p.element_size() for g in obj.param_groups for p in g["params"])
            total += buffers or 2 * params
    return total


def save_atomic(path: Path, state: dict) -> int:
    """Write `<path>.tmp`, fsync, rename over `path`; returns the bytes written.

    Any failure removes the `.tmp` and keeps the previous checkpoint; a full disk is said in words."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # KeyboardInterrupt and SystemExit too: never leave a .tmp behind
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):
            free = shutil.disk_usage(path.parent).free / 2**20
            raise RunDirError(f"writing {path} failed ({free:.1f} MB free on its disk; "
                              f"{'the disk is full' if free < 1 or _no_space(e) else str(e).splitlines()[0]}); "
                              f"the previous {path.name} is kept") from e
        raise
    return path.stat().st_size


def _no_space(e: BaseException) -> bool:
    return getattr(e, "errno", None) == 28 or "No space left" in str(e) or "unexpected pos" in str(e)


# ----------------------------------------------------------------------------- the run


class Run:
    """Folder, lock, checkpoints, log, best metric and stop signals of one training run.

    Every rank builds one and makes the same calls; rank 0 alone writes. Not a trainer: the loop,
    the losses and the evaluation stay in each train.py."""

    def __init__(self, project: str, args: argparse.Namespace, config: dict, default_out: str,
                 resumed: dict | None = None, best_metric: str = "", best_mode: str = "max"):
        self.project, self.args, self.config, self.resumed = project, args, config, resumed
        self.best = {"metric": best_metric, "mode": best_mode, "value": None, "step": -1, "epoch": -1}
        self.log_rows, self.last_size = 0, 0
        self._columns: list[str] | None = None
        self._stop_signal: int | None = None
        self._old_handlers: dict = {}
        self._lock: Path | None = None
        self._clear_on_open = False  # --overwrite: the old run is deleted only once this one has started
        self._owner_pid = os.getpid()  # DataLoader workers inherit the handlers; only this process acts
        world = dist.get_world_size() if _distributed() else 1
        if resumed is not None and resumed["progress"].get("world_size", 1) != world:
            saved = resumed["progress"]["world_size"]
            raise ConfigMismatchError(f"--resume {args.resume}: written by {saved} process(es), this run has {world}; "
                                      f"the data shards and the position in the epoch depend on it (resume with "
                                      f"torchrun --nproc_per_node {saved} ...)" if saved > 1 else
                                      f"--resume {args.resume}: written by 1 process, this run has {world}; resume "
                                      f"it without torchrun")
        self.dir = self._choose_dir(args.out, default_out, args.resume, args.overwrite)

    # -- folder and lock

    def _choose_dir(self, out, default_out, resume, overwrite) -> Path:
        """Rank 0 picks and locks the folder; the others are told which one it is."""
        chosen = [None]
        if is_main():
            chosen[0] = str(self._pick_and_lock(out, default_out, resume, overwrite))
        if _distributed():
            dist.broadcast_object_list(chosen, src=0)
        return Path(chosen[0])

    def _pick_and_lock(self, out, default_out, resume, overwrite) -> Path:
        if out is None and resume:
            out = str(Path(resume).parent)  # continue in the folder the checkpoint lives in
        if out is None:  # the default: the next free numbered folder, so a second run never lands in the first
            base, n = Path(default_out), 1
            while True:
                candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
                if not _holds_files(candidate) and self._try_lock(candidate):
                    return candidate
                n += 1
        run_dir = Path(out)
        continuing = resume is not None and (run_dir.resolve() == Path(resume).resolve().parent
                                             or self._same_run(run_dir))
        if _holds_files(run_dir) and not continuing:
            if not overwrite:
                raise RunDirError(f"--out {run_dir} already holds a run ({', '.join(_listing(run_dir))}). "
                                  f"Continue it with --resume {run_dir / 'last.pt'}, replace it with --overwrite, "
                                  f"or choose another --out (leave --out unset for the next free folder)")
            if not (run_dir / "config.json").is_file():
                raise RunDirError(f"--overwrite: {run_dir} holds files but no config.json, so it is not a run "
                                  f"folder; nothing was deleted")
            self._lock_or_fail(run_dir)
            self._clear_on_open = True
            return run_dir
        self._lock_or_fail(run_dir)
        return run_dir

    def _same_run(self, run_dir: Path) -> bool:
        """A checkpoint kept elsewhere (a copy of step<N>.pt) continues the run whose folder holds
        the same configuration; any other used folder is another run's."""
        try:
            saved = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return saved == json.loads(json.dumps(self.resumed["config"], sort_keys=True, default=str))

    def _try_lock(self, run_dir: Path) -> bool:
        """Create `.lock` with its content in one step (written aside, then hard-linked: link fails
        if the name exists), so no other process ever reads a half-written lock."""
        lock, draft = run_dir / ".lock", run_dir / f".lock.{os.getpid()}"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            draft.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv,
                                         "started": datetime.datetime.now().isoformat(timespec="seconds")}))
            try:
                os.link(draft, lock)
            finally:
                draft.unlink()
        except FileExistsError:
            if _stale_lock(lock):
                lock.unlink(missing_ok=True)
                return self._try_lock(run_dir)
            return False
        except OSError as e:
            raise RunDirError(f"run folder {run_dir} is not writable: {e.strerror or e}") from e
        self._lock = lock
        return True

    def _lock_or_fail(self, run_dir: Path) -> None:
        if not self._try_lock(run_dir):
            holder = _read_lock(run_dir / ".lock")
            raise RunDirError(f"run folder {run_dir} is in use by process {holder.get('pid')} on "
                              f"{holder.get('host')} (started {holder.get('started')}); if that process is gone, "
                              f"delete {run_dir / '.lock'}")

    # -- resume and open

    def restore(self, state: State, *legacy) -> bool:
        """Load the resumed checkpoint into `state` (weights, optimiser, scaler, position, meters).
        False for a fresh run. Call `restore_rng()` after everything that draws random numbers."""
        if not isinstance(state, State):  # TODO(grammar): old call restore(model, optimizer, scaler)
            return self._restore_legacy(state, *legacy)
        if self.resumed is None:
            return False
        path, saved = self.args.resume, self.resumed
        load_model_state(state.model, saved["model"], path)
        load_optimizer_state(state.optimizer, saved["optimizer"], path)
        if state.scaler is not None and saved["scaler"]:
            state.scaler.load_state_dict(saved["scaler"])
        progress = saved["progress"]
        state.step, state.epoch, state.batch_in_epoch = progress["step"], progress["epoch"], progress["batch_in_epoch"]
        state.meters = saved["extra"]
        self.best = dict(saved["best"])
        self.log_rows = progress.get("log_rows", 0)
        return True

    def _restore_legacy(self, model, optimizer=None, scaler=None) -> dict | None:
        if self.resumed is None:
            return None
        path = self.args.resume
        load_model_state(model, self.resumed["model"], path)
        if optimizer is not None:
            load_optimizer_state(optimizer, self.resumed["optimizer"], path)
        if scaler is not None and self.resumed["scaler"]:
            scaler.load_state_dict(self.resumed["scaler"])
        self.best = dict(self.resumed["best"])
        self.log_rows = self.resumed["progress"].get("log_rows", 0)
        return {**self.resumed["progress"], "extra": self.resumed["extra"]}

    def restore_rng(self) -> None:
        if self.resumed is not None:
            states = self.resumed["rng"]
            rank = dist.get_rank() if _distributed() else 0
            set_rng_state(states[rank] if rank < len(states) else states[0])

    def open(self, log_columns: list[str], checkpoint_size: int) -> None:
        """Check free space against the checkpoint size, then write config.json and start (or
        truncate) log.csv, and catch the stop signals. Nothing was written before this call."""
        self._columns = list(log_columns)
        self.last_size = checkpoint_size
        if is_main():
            need = 2 * checkpoint_size / 2**20 + 1  # a new checkpoint is written beside the old one
            free = shutil.disk_usage(self.dir).free / 2**20
            if free < need:
                raise RunDirError(f"run folder {self.dir}: only {free:.1f} MB free, need at least {need:.0f} MB "
                                  f"for checkpoints of {checkpoint_size / 2**20:.1f} MB")
            kept_rows = self._kept_log_rows()  # checked before anything in the folder changes
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
            with open(self.dir / "log.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(self._columns)
                writer.writerows(kept_rows)
            self.log_rows = len(kept_rows)
        if threading.current_thread() is threading.main_thread():  # signal.signal works there only
            for sig in STOP_SIGNALS:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        where = f"resumed from {self.args.resume}" if self.resumed else "new run"
        self.print(f"run folder {self.dir} ({where})")

    def _kept_log_rows(self) -> list[list[str]]:
        """The rows of log.csv a resumed run keeps: as many as its checkpoint had seen (the rows
        written after it are written again). A torn last line, cut by a kill, is dropped."""
        path = self.dir / "log.csv"
        if self.resumed is None or self._clear_on_open or not path.exists():
            return []
        with open(path, newline="") as f:
            text = f.read()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        rows = list(csv.reader(io.StringIO(text)))
        if rows and rows[0] != self._columns:
            raise ConfigMismatchError(f"{path}: columns {rows[0]} differ from {self._columns}")
        return rows[1 : 1 + self.log_rows]

    def _drop_abandoned_checkpoints(self) -> None:
        """Resumed from an older checkpoint (a step<N>.pt): the later periodic checkpoints, and a
        best.pt, belong to the branch this run abandons. best.pt is read first: a damaged one is
        an error naming it before anything is deleted."""
        step = self.resumed["progress"]["step"]
        best = self.dir / "best.pt"
        best_step = -1
        if Path(self.args.resume).name != "last.pt" and best.is_file() and best.resolve() != Path(self.args.resume).resolve():
            try:
                best_step = read_checkpoint_file(best)["best"]["step"]
            except (CheckpointError, KeyError, TypeError) as e:
                raise CheckpointError(f"{best}: unreadable ({e}); resuming {self.args.resume} must know whether best.pt is from a later "
                                      f"step: delete or replace {best}; nothing was changed") from None
        for later in self.dir.glob("step*.pt"):
            if later.stem[4:].isdigit() and int(later.stem[4:]) > step:
                later.unlink()
        if best_step > step:
            best.unlink()
            self.best.update(value=None, step=-1, epoch=-1)
            self.print(f"removed {best} (step {best_step}, after the resumed step {step})")

    # -- during the run

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

    def save(self, name: str, state: State = None, *legacy, **legacy_kw) -> None:
        """Write a checkpoint of `state` (rank 0) and wait until it is complete on every rank, so no
        rank can read a checkpoint that is still being written. Every rank must call it."""
        if not isinstance(state, State):  # TODO(grammar): old call save(name, model, optimizer, scaler, progress, extra)
            values = dict(zip(["model", "optimizer", "scaler", "progress", "extra"],
                              ([state] if state is not None else []) + list(legacy)), **legacy_kw)
            progress = values["progress"]
            state = State(values["model"], values["optimizer"], values["scaler"], progress["step"], progress["epoch"],
                          progress.get("batch_in_epoch", 0), values.get("extra") or {})
            state.progress = lambda: progress
        rngs = [rng_state()]
        if _distributed():
            rngs = [None] * dist.get_world_size()
            dist.all_gather_object(rngs, rng_state())
        if is_main():
            checkpoint = {"format": CHECKPOINT_FORMAT, "project": self.project, "args": _plain(vars(self.args)),
                          "config": _plain(self.config), "model": unwrap(state.model).state_dict(),
                          "optimizer": state.optimizer.state_dict() if state.optimizer is not None else None,
                          "scaler": state.scaler.state_dict() if state.scaler is not None else None,
                          "progress": {**state.progress(), "log_rows": self.log_rows,
                                       "world_size": dist.get_world_size() if _distributed() else 1},
                          "best": dict(self.best), "rng": rngs, "extra": _plain(state.meters)}
            path = self.dir / name
            free = shutil.disk_usage(self.dir).free
            if free < self.last_size:
                raise RunDirError(f"not enough space to write {path}: the last checkpoint took "
                                  f"{self.last_size / 2**20:.1f} MB, {free / 2**20:.1f} MB are free; the previous "
                                  f"{name} is kept")
            self.last_size = save_atomic(path, checkpoint)
        barrier()

    def save_periodic(self, state: State, *legacy, **legacy_kw) -> None:
        """`step<N>.pt` beside last.pt, keeping the newest --keep-checkpoints of them."""
        if self.args.keep_checkpoints == 0:
            return
        if not isinstance(state, State):  # TODO(grammar): old call save_periodic(step, model, ...)
            self.save(f"step{state:07d}.pt", *legacy, **legacy_kw)
        else:
            self.save(f"step{state.step:07d}.pt", state)
        if is_main():
            for old in sorted(self.dir.glob("step*.pt"))[: -self.args.keep_checkpoints]:
                old.unlink()

    def load_best(self, model, map_location="cpu") -> bool:
        """Every rank loads best.pt (complete: saves end with a barrier). False when this run has
        no best.pt (no validation ran): the current weights are then what gets tested."""
        path = self.dir / "best.pt"
        barrier()
        if not path.is_file():
            self.print("no best.pt in this run (no validation ran): testing the current weights")
            return False
        load_model_state(model, load_run_checkpoint(path, self.project, map_location)["model"], path)
        return True

    # -- stopping

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
        if _distributed():
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            t = torch.tensor([float(flag)], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
            if flag and self._stop_signal is None:
                self._stop_signal = signal.SIGTERM  # a peer was signalled
        return flag

    def exit_stopped(self, step: int) -> None:
        """After last.pt is saved: say how to resume, release the folder and exit non-zero."""
        name = signal.Signals(self._stop_signal).name
        launcher = f"torchrun --nproc_per_node {dist.get_world_size()}" if _distributed() else "python"
        self.print(f"stopped by {name} at step {step}; last.pt is saved. Continue with:\n"
                   f"    {launcher} {self.project}/train.py --resume {self.dir / 'last.pt'}")
        self.close()
        raise SystemExit(128 + self._stop_signal)

    # -- the end

    def finish(self, results: dict) -> None:
        """results.json (rank 0), then release the folder."""
        if is_main():
            with open(self.dir / "results.json", "w") as f:
                json.dump(_plain(results), f, indent=2, sort_keys=True, default=str)
        self.close()

    def close(self) -> None:
        """Restore the signal handlers and release the lock (idempotent; also right on errors)."""
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            try:
                self._lock.parent.rmdir()  # only if this run left it empty (failed before writing)
            except OSError:
                pass
            self._lock = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _holds_files(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(p.name != ".lock" for p in run_dir.iterdir())


def _listing(run_dir: Path) -> list[str]:
    names = sorted(p.name for p in run_dir.iterdir() if p.name != ".lock")
    return names[:5] + ([f"+{len(names) - 5} more"] if len(names) > 5 else [])


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stale_lock(path: Path) -> bool:
    """A lock whose process is gone on this host (a killed run) may be taken over."""
    holder = _read_lock(path)
    if holder.get("pid") == os.getpid():
        return True  # this process's own, left by an earlier run in it that failed
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return not holder  # unreadable: a kill during its write; another host's lock: respected
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _plain(value):
    """A copy in the types torch.load(weights_only=True) and JSON accept: paths and other objects
    as strings, sets as sorted lists; tensors and plain values as they are."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    return str(value)


def _fmt(value):
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def run_cli(main) -> None:
    """`if __name__ == "__main__": run_cli(main)`: the errors this repository raises on purpose
    (bad data, an unusable checkpoint or run folder, a contradicting config) are printed as one
    line naming the file at fault, without a traceback; exit status 1. Anything else keeps its
    traceback: that is a bug."""
    from common.runtime import DataError, NonFiniteLossError

    try:
        main()
    except (DataError, CheckpointError, RunDirError, ConfigMismatchError, NonFiniteLossError, FileNotFoundError) as e:
        print(f"{Path(sys.argv[0]).parent.name}/{Path(sys.argv[0]).name}: error: {type(e).__name__}: {e}",
              file=sys.stderr)
        raise SystemExit(1) from None
