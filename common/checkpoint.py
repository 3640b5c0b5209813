"""Checkpoint files: one schema for every project, read with `torch.load(weights_only=True)` so
opening a file from elsewhere runs no code, written atomically so a kill never leaves a broken one,
and loaded into a model or optimiser with one error naming the file and every mismatch."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import torch

from common.runtime import RunDirError, unwrap

# Format 2: only tensors and plain values (loadable with weights_only=True); format 1 held numpy arrays.
CHECKPOINT_FORMAT = 2
CHECKPOINT_KEYS = ("format", "project", "args", "config", "model", "optimizer", "scaler", "progress", "best",
                   "rng", "extra")

class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message names the file and what is wrong with it."""


def load_run_checkpoint(path: str | os.PathLike, project: str) -> dict:
    """A run checkpoint of `project`, or a CheckpointError that names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = read_checkpoint_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a training checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if "format" not in state and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: a bare state_dict (weights only), not a training checkpoint; "
                              "it can be loaded as pretrained weights, not resumed")
    if "format" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this repository (missing keys {missing})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state['format']!r}, this code reads {CHECKPOINT_FORMAT}")
    if state.get("project") != project:
        raise CheckpointError(f"{path}: written by {state.get('project')!r}, not {project!r}")
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing keys {missing}")
    return state


def read_checkpoint_file(path: Path):
    """torch.load(weights_only=True) with the failures told apart: empty, truncated, not a PyTorch
    file, or a pickle of objects other than tensors and plain values (refused unopened: unpickling
    them could run code, so a checkpoint from elsewhere is as safe to open as one's own)."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint (a save that never finished?)")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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
    """Refuse an optimiser state grouped unlike this run's (other frozen parts or grouping), not with torch's error."""
    saved = [len(g["params"]) for g in state["param_groups"]]
    now = [len(g["params"]) for g in optimizer.param_groups]
    if saved != now:
        raise CheckpointError(f"{path}: other optimiser layout: parameters per group {saved} in the checkpoint, "
                              f"{now} in this run (a flag that freezes or regroups parameters differs)")
    optimizer.load_state_dict(state)


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors a checkpoint of this model and optimiser will hold. An optimiser that has
    not stepped yet has no state: Adam-like ones are counted as 2 buffers per parameter."""
    weights = sum(t.numel() * t.element_size() for t in unwrap(model).state_dict().values())
    buffers = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                  if isinstance(t, torch.Tensor))
    params = sum(p.numel() * p.element_size() for g in optimizer.param_groups for p in g["params"])
    return weights + (buffers or 2 * params)


def save_atomic(path: Path, state: dict) -> int:
    """Write `<path>.tmp`, fsync, rename over `path`; returns the bytes written. Any failure removes the
    `.tmp` and keeps the previous checkpoint; a full disk is said in words."""
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
            full = free < 1 or getattr(e, "errno", None) == 28 or "No space left" in str(e) \
                or "unexpected pos" in str(e)  # torch's zip writer on a full disk
            raise RunDirError(f"writing {path} failed ({free:.1f} MB free on its disk; "
                              f"{'the disk is full' if full else str(e).splitlines()[0]}); "
                              f"the previous {path.name} is kept") from e
        raise
    return path.stat().st_size


def storable(value):
    """A copy in the types torch.load(weights_only=True) and JSON accept: paths and other objects
    as strings, sets as sorted lists; tensors and plain values as they are."""
    if isinstance(value, dict):
        return {k: storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(storable(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return sorted(storable(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    return str(value)
