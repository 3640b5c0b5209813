"""Ablations: one project's train.py run for a named set of variants over several seeds, in
sequence, at the demo budget, and a table of mean +- std per metric.

    VARIANTS = {"full": [], "no-context": ["--no-context"]}          # variant -> train.py flags
    METRICS = {"test UAR": "test.uar", "best val UAR": "best.value"}  # column -> key in results.json
    run_ablation("caer_clip", VARIANTS, METRICS, argv)

Each run is `python <project>/train.py ...` in its own process (with this process's torch thread
count), in its own folder `<out>/<variant>/seed<N>` (the usual run folder of train.py), its
printed output in `<out>/<variant>/seed<N>.log`; the numbers come from the run's
results.json. The table is printed and written to `<out>/ablation.md`, the per-run numbers and
commands to `<out>/ablation.json`. `--reuse` reads the runs that already finished with the same
flags instead of training them again (an interrupted ablation continues where it stopped).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from common.cli import at_least

ROOT = Path(__file__).resolve().parents[2]


def build_parser(project: str, variants: dict[str, list[str]], description: str | None) -> argparse.ArgumentParser:
    listing = "; ".join(f"{name}: {' '.join(flags) or '(defaults)'}" for name, flags in variants.items())
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"variants: {listing}. Flags after `--` go to every {project}/train.py run, "
               f"e.g. `-- --epochs 1` for a quick look (not the demo budget any more).")
    parser.add_argument("--seeds", type=at_least(1), default=3, help="seeds 0..N-1 per variant (default: %(default)s)")
    parser.add_argument("--variants", default=",".join(variants),
                        help="comma-separated subset of the variants, in this order (default: all)")
    parser.add_argument("--out", default=f"runs/ablation/{project}",
                        help="output root: one run folder per variant and seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train every run again, replacing the run folders already in --out")
    parser.add_argument("--reuse", action="store_true",
                        help="read the runs in --out that finished with the same flags instead of training them again")
    return parser


def parse_args(project: str, variants: dict[str, list[str]], argv: list[str] | None,
               description: str | None = None) -> tuple[argparse.Namespace, list[str]]:
    """(ablation settings, the flags after `--` for every train.py run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = build_parser(project, variants, description)
    args = parser.parse_args(argv)
    args.variants = list(dict.fromkeys(name.strip() for name in args.variants.split(",") if name.strip()))
    unknown = [name for name in args.variants if name not in variants]
    if unknown or not args.variants:
        parser.error(f"argument --variants: unknown {unknown or 'empty list'}; choose from {', '.join(variants)}")
    if args.overwrite and args.reuse:
        parser.error("--overwrite and --reuse exclude each other")
    return args, extra


def lookup(results: dict, key: str) -> float | None:
    """results["test"]["top1"] for "test.top1"; None where the run has no such number (a branch
    that variant does not have)."""
    value = results
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def mean_std(values: list[float | None], digits: int = 3) -> str:
    """`mean ± std` over the seeds (sample std); `n/a` for the std of a single seed, `-` when no run
    has the number."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    spread = f"{statistics.stdev(values):.{digits}f}" if len(values) > 1 else "n/a"
    return f"{statistics.fmean(values):.{digits}f} ± {spread}"


def markdown_table(rows: list[dict], metrics: dict[str, str]) -> str:
    """One row per variant: its flags, the number of seeds, mean ± std of each metric and of the
    wall time of one run."""
    header = ["variant", "train.py flags", "seeds", *metrics, "wall s per run"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        flags = " ".join(row["flags"])
        cells = [row["variant"], f"`{flags}`" if flags else "(defaults)", str(len(row["runs"]))]
        cells += [mean_std([run["metrics"][name] for run in row["runs"]]) for name in metrics]
        cells.append(mean_std([run["wall_s"] for run in row["runs"]], digits=0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    """What the wall times were measured on: the table is only comparable with this line."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = f", load average {os.getloadavg()[0]:.2f} at start" if hasattr(os, "getloadavg") else ""
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {device}, torch "
            f"{torch.__version__}, torch threads {torch.get_num_threads()}{load}")


def _finished_run(previous: list[dict], run_dir: Path, argv: list[str]) -> dict | None:
    """The stored record of a run that finished with exactly these train.py flags, else None."""
    if not (run_dir / "results.json").is_file():
        return None
    return next((run for run in previous if run["run_dir"] == str(run_dir) and run["argv"] == argv), None)


def train(project: str, argv: list[str], log: Path) -> None:
    """`python <project>/train.py argv` in a child process, its output in `log`; a failed run stops
    the ablation naming its log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    command = [sys.executable, str(ROOT / project / "train.py"), *argv]
    with open(log, "w") as f:
        print(f"python {project}/train.py " + shlex.join(argv), file=f, flush=True)
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        last = log.read_text().strip().splitlines()[-1:] or [""]
        raise SystemExit(f"{project}/ablate.py: error: the run failed (exit {done.returncode}): {last[0][:200]}; "
                         f"its output is in {log}")


def run_ablation(project: str, variants: dict[str, list[str]], metrics: dict[str, str],
                 argv: list[str] | None = None, base_flags: list[str] | None = None,
                 description: str | None = None) -> dict:
    """Train every chosen variant for seeds 0..N-1, one run after another, and tabulate.
    `base_flags` go to every run before the variant's own flags (settings that change what is
    written, never what is trained); the flags after `--` come last and win.

    Returns {"command", "machine", "rows", "markdown", "out", "wall_s"}; rows[i]["runs"] hold each run's metrics."""
    args, extra = parse_args(project, variants, argv, description)
    out = Path(args.out)
    record_path = out / "ablation.json"
    used = [str(out / name) for name in args.variants if (out / name).exists()]
    if used and not (args.overwrite or args.reuse):
        raise SystemExit(f"{project}/ablate.py: error: {', '.join(used)} already hold runs: add --reuse to read the "
                         f"finished ones (same flags) and train the rest, --overwrite to train them all again, "
                         f"or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads(record_path.read_text())["runs"] if args.reuse and record_path.is_file() else []
    command = shlex.join(["python", f"{project}/ablate.py", *(argv if argv is not None else sys.argv[1:])])
    plan = [(name, seed) for name in args.variants for seed in range(args.seeds)]
    rows = [{"variant": name, "flags": variants[name], "runs": []} for name in args.variants]
    record = {"project": project, "command": command, "metrics": metrics, "runs": []}
    others = [run for run in previous if (run["variant"], run["seed"]) not in plan]  # kept for a later --reuse
    started, where = time.time(), machine()
    print(f"machine: {where}", flush=True)
    for count, (name, seed) in enumerate(plan, start=1):
        run_dir = out / name / f"seed{seed}"
        train_argv = [*(base_flags or []), *variants[name], *extra, "--seed", str(seed), "--out", str(run_dir)]
        run = _finished_run(previous, run_dir, train_argv)
        reused = run is not None
        if reused:
            run["metrics"] = {column: lookup(json.loads((run_dir / "results.json").read_text()), key)
                              for column, key in metrics.items()}
        else:
            # --overwrite, or --reuse of a folder left by an unfinished run or other flags: train.py replaces it
            train_argv_run = [*train_argv, *(["--overwrite"] if run_dir.exists() else [])]
            log = out / name / f"seed{seed}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            train(project, train_argv_run, log)
            wall = time.time() - t0
            results = json.loads((run_dir / "results.json").read_text())
            run = {"variant": name, "seed": seed, "run_dir": str(run_dir), "argv": train_argv, "wall_s": wall,
                   "metrics": {column: lookup(results, key) for column, key in metrics.items()}}
        rows[args.variants.index(name)]["runs"].append(run)
        record["runs"].append(run)
        # after every run, so an interrupted ablation keeps what it has done
        record_path.write_text(json.dumps({**record, "runs": record["runs"] + others}, indent=2))
        shown = ", ".join(f"{k} {v:.3f}" for k, v in run["metrics"].items() if v is not None)
        print(f"[{count}/{len(plan)}] {name} seed {seed}: {shown} ({run['wall_s']:.0f} s"
              f"{', reused' if reused else ''})", flush=True)
    markdown = markdown_table(rows, metrics)
    total = time.time() - started
    (out / "ablation.md").write_text(f"`{command}`\n\n{markdown}\n{len(plan)} runs in sequence, {total:.0f} s in all; "
                                     f"machine: {where}.\n")
    print(f"\n{markdown}\n{len(plan)} runs in sequence, {total:.0f} s in all; table in {out / 'ablation.md'}")
    return {"command": command, "machine": where, "rows": rows, "markdown": markdown, "out": str(out), "wall_s": total}
