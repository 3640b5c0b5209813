"""Command lines built from config dataclasses: one place for every default, checks at parse time.

    @dataclass
    class OptimConfig:
        batch_size: int = arg(16, "clips per step and per process", check=at_least(1))

`add_args(parser, OptimConfig, "optimisation")` makes `--batch-size` (default shown by --help), refused by
argparse before anything runs when out of range; `from_args(OptimConfig, namespace)` builds the dataclass
back. A model file that must copy alone comments plain fields instead (`depth: int = 12  # blocks`) and
train.py attaches the checks: `add_args(parser, ModelConfig, "model", checks={"depth": at_least(1)})`."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import os
import sys
import tokenize
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

from common.checkpoint import CheckpointError, load_run_checkpoint
from common.runtime import AMP_MODES, ConfigMismatchError, DataError, DeviceError, NonFiniteLossError, RunDirError


def arg(default, help: str, *, check: Callable | None = None, choices: Sequence | None = None,
        flag: str | None = None):
    """A dataclass field that is also a command-line flag: `check` is a converter from `at_least` /
    `above` / `between` (its type and range), `flag` the flag's name when it is not `--<field-name>`."""
    meta = {"help": help, "check": check, "choices": choices, "flag": flag}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _checked(kind: type, ok: Callable[[float], bool], words: str) -> Callable[[str], object]:
    def convert(text: str):
        value = kind(text)  # a ValueError here reads "invalid int value: 'x'"
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {words} (got {text})")
        return value
    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def at_least(low: float, kind: type = int) -> Callable[[str], object]:
    return _checked(kind, lambda v: v >= low, f">= {low}")


def above(low: float, kind: type = float) -> Callable[[str], object]:
    return _checked(kind, lambda v: v > low, f"> {low}")


def between(low: float, high: float, kind: type = float) -> Callable[[str], object]:
    """Closed interval, e.g. a fraction `between(0, 1)`."""
    return _checked(kind, lambda v: low <= v <= high, f"between {low} and {high}")


def _base_type(hint) -> tuple[type, bool]:
    """(element type, is a list) of an annotation such as `int | None` or `list[int]`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    return hint, False


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """{field: its trailing comment} from the source of the dataclass `cls` (and its bases). A
    comment may go on over the next lines when each starts with `#` in the same column:

        attention: str = "gate"  # where the attention map comes from:
                                 # icpr2020dfdc's sigmoid gate, CBAM, or none
    """
    comments = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        names, last = {}, None  # line -> field name declared on it; (field, line, column) of the last comment
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NAME and tok.line.startswith("    ") and not tok.line.startswith("     ") \
                    and tok.line.lstrip().startswith(tok.string + ":"):
                names[tok.start[0]] = tok.string
            elif tok.type == tokenize.COMMENT and tok.start[0] in names:
                last = (names[tok.start[0]], tok.start[0], tok.start[1])
                comments[last[0]] = tok.string.lstrip("#").strip()
            elif tok.type == tokenize.COMMENT and last and tok.start == (last[1] + 1, last[2]) \
                    and not tok.line[:tok.start[1]].strip():
                last = (last[0], tok.start[0], tok.start[1])
                comments[last[0]] += " " + tok.string.lstrip("#").strip()
    return comments


def add_args(parser: argparse.ArgumentParser, cls: type, title: str, checks: dict | None = None,
             exclude: Sequence[str] = (), flags: dict[str, str] | None = None) -> argparse._ArgumentGroup:
    """One argument group, a flag per field of the dataclass `cls`: help from `arg()`, or given `checks` (even
    `{}`) from the field's comment; neither: no flag. `checks` maps a field to a converter (`at_least(1)`) or a
    list of choices, `flags` a field to its flag name when not `--<field-name>` (`{"num_heads": "--heads"}`)."""
    group = parser.add_argument_group(title)
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    for f in dataclasses.fields(cls):
        comment = comments.get(f.name, "").replace("%", "%%") if checks is not None else None  # argparse formats help
        meta = dict(f.metadata) or {"help": comment, "check": None, "choices": None, "flag": (flags or {}).get(f.name)}
        if not meta.get("help") or f.name in exclude:
            continue  # not a flag (derived later)
        extra = (checks or {}).get(f.name)
        if isinstance(extra, (list, tuple)):
            meta["choices"] = extra
        elif extra is not None:
            meta["check"] = extra
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        kind, is_list = _base_type(hints[f.name])
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                               help=meta["help"] + f" (default: {'on' if default else 'off'})")
        else:
            shown = " (default: %(default)s)" if default not in (None, "") else ""  # 0 and 0.0 are shown
            group.add_argument(flag, dest=f.name, type=meta["check"] or kind, default=default,
                               choices=meta["choices"], nargs="+" if is_list else None, help=meta["help"] + shown)
    return group


def from_args(cls: type, values: argparse.Namespace | dict):
    """The dataclass `cls` from parsed values (fields that are no flag keep their defaults)."""
    values = vars(values) if isinstance(values, argparse.Namespace) else values
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def explicit_dests(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations the command line sets itself (not left at their defaults): a resumed run
    takes every other setting from its checkpoint."""
    argv = list(sys.argv[1:] if argv is None else argv)
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=parser.allow_abbrev)
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            # store_true / store_false / --x/--no-x: presence is what counts
            how = {"action": "store_true"} if action.nargs == 0 else {"nargs": action.nargs}
            probe.add_argument(*action.option_strings, dest=action.dest, default=argparse.SUPPRESS, **how)
    return set(vars(probe.parse_known_args(argv)[0]))


def device_name(text: str) -> str:
    """auto, cpu, cuda or cuda:N; the machine is checked at run start, so a GPU command line parses anywhere."""
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N (got {text})")


def run_args(parser: argparse.ArgumentParser, default_out: str, ckpt_interval: int, log_interval: int) -> None:
    """The flags every train.py shares, with the same names and checks in all four."""
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help=f"run folder (default: the next free {default_out}, "
                   f"{default_out}-2, ...; an explicit folder that holds a run needs --resume or --overwrite)")
    g.add_argument("--resume", default=None, help="checkpoint to continue from, e.g. <out>/last.pt; "
                   "settings not given on the command line come from the checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace the run in an explicit --out folder")
    g.add_argument("--seed", type=between(0, 2**32 - 1, int), default=0,
                   help="seeds weights, data order and augmentation (default: %(default)s)")
    g.add_argument("--device", type=device_name, default="auto",
                   help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    g.add_argument("--amp", nargs="?", const="auto", default="auto", choices=AMP_MODES[:3],
                   help="autocast on CUDA: auto = bf16 where the GPU supports it, else fp16 with loss "
                        "scaling; bf16 / fp16 force one (default: %(default)s; no effect on CPU)")
    g.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="plain fp32 on CUDA too")
    g.add_argument("--workers", type=between(0, 4 * (os.cpu_count() or 1), int), default=0,
                   help="DataLoader worker processes, at most 4 per CPU core (default: %(default)s)")
    g.add_argument("--log-interval", type=at_least(1), default=log_interval,
                   help="optimizer steps between training log lines (default: %(default)s)")
    g.add_argument("--ckpt-interval", type=at_least(0), default=ckpt_interval,
                   help="optimizer steps between last.pt writes, besides every epoch end and every stop "
                        "(0: epoch ends only; default: %(default)s)")
    g.add_argument("--keep-checkpoints", type=at_least(0), default=2,
                   help="periodic checkpoints kept besides last.pt and best.pt (default: %(default)s)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the training step: the first steps pay the compile (minutes per model "
                        "on a 2-core CPU: each README's bench); a checkpoint resumes with or without it (default: off)")


# Settings that say where and how a run executes, not what it computes: never taken from a checkpoint.
PLACE_ARGS = ("out", "resume", "overwrite", "device", "workers", "compile")


def parse_with_resume(parser: argparse.ArgumentParser, argv, project: str):
    """(namespace, checkpoint or None). With --resume, every setting the command line leaves unset comes from
    the checkpoint, loaded and checked here before anything is written: `--resume <out>/last.pt` alone goes on."""
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


def run_cli(main) -> None:
    """`if __name__ == "__main__": run_cli(main)`: the errors raised on purpose (bad data, an unusable checkpoint
    or run folder, a contradicting config) print as one line naming the file at fault, exit status 1. Anything
    else keeps its traceback: that is a bug."""
    try:
        main()
    except (DataError, CheckpointError, RunDirError, ConfigMismatchError, NonFiniteLossError, DeviceError,
            FileNotFoundError) as e:
        print(f"{Path(sys.argv[0]).parent.name}/{Path(sys.argv[0]).name}: error: {type(e).__name__}: {e}",
              file=sys.stderr)
        raise SystemExit(1) from None
