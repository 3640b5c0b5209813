"""Which folder a run writes to (the next free `runs/<project>[-N]`, or an explicit one that holds no
other run), and the `<folder>/.lock` that keeps a second process out of it (RUNS.md, "The run folder")."""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from pathlib import Path

from common.runtime import RunDirError


def claim_run_dir(out: str | None, default_out: str, resume: str | None, overwrite: bool,
                  resumed_config: dict | None) -> tuple[Path, Path, bool]:
    """(folder, its .lock, whether its old run must be cleared once this one has started)."""
    if out is None and resume:
        out = str(Path(resume).parent)  # continue in the folder the checkpoint lives in
    if out is None:  # the next free numbered folder, so a second run never lands in the first
        base, n = Path(default_out), 1
        while True:
            candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
            if not holds_files(candidate) and (lock := try_lock(candidate)):
                return candidate, lock, False
            n += 1
    run_dir = Path(out)
    continuing = resume is not None and (run_dir.resolve() == Path(resume).resolve().parent
                                         or same_run(run_dir, resumed_config))
    replaced = holds_files(run_dir) and not continuing
    if replaced and not overwrite:
        names = sorted(p.name for p in run_dir.iterdir() if p.name != ".lock")
        listing = ", ".join(names[:5] + ([f"+{len(names) - 5} more"] if len(names) > 5 else []))
        raise RunDirError(f"--out {run_dir} already holds a run ({listing}). Continue it with --resume "
                          f"{run_dir / 'last.pt'}, replace it with --overwrite, or choose another --out "
                          f"(leave --out unset for the next free folder)")
    if replaced and not (run_dir / "config.json").is_file():
        raise RunDirError(f"--overwrite: {run_dir} holds files but no config.json, so it is not a run "
                          f"folder; nothing was deleted")
    return run_dir, lock_or_fail(run_dir), replaced


def holds_files(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(p.name != ".lock" for p in run_dir.iterdir())


def same_run(run_dir: Path, resumed_config: dict | None) -> bool:
    """A checkpoint kept elsewhere (a copy of step<N>.pt) continues the run whose folder holds the
    same configuration; any other used folder is another run's."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return saved == json.loads(json.dumps(resumed_config, sort_keys=True, default=str))


def try_lock(run_dir: Path) -> Path | None:
    """Create `.lock` with its content in one step (written aside, then hard-linked: link fails if
    the name exists), so no other process ever reads a half-written lock. None when it is held."""
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
        if stale_lock(lock):
            lock.unlink(missing_ok=True)
            return try_lock(run_dir)
        return None
    except OSError as e:
        raise RunDirError(f"run folder {run_dir} is not writable: {e.strerror or e}") from e
    return lock


def lock_or_fail(run_dir: Path) -> Path:
    lock = try_lock(run_dir)
    if lock is None:
        holder = read_lock(run_dir / ".lock")
        raise RunDirError(f"run folder {run_dir} is in use by process {holder.get('pid')} on {holder.get('host')} "
                          f"(started {holder.get('started')}); if that process is gone, delete {run_dir / '.lock'}")
    return lock


def read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def stale_lock(path: Path) -> bool:
    """A lock whose process is gone on this host (a killed run) may be taken over."""
    holder = read_lock(path)
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
