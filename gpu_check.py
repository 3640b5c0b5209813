"""The checks only a CUDA machine can run, in one go, with one report.

    python gpu_check.py                      # everything, on the local GPUs (report: runs/gpu_check/report.md)
    python gpu_check.py --only dual_cross_attention --skip bench
    python gpu_check.py --dry-run            # CPU: build every command and parse it with its own parser

For each project:
  demo-bf16   the demo (`<project>/train.py`, defaults) under autocast bfloat16
  demo-fp16   the same under float16 with the GradScaler's loss scaling
  compile     the bf16 demo with --compile (torch.compile of the training step; the optimiser is fused on CUDA)
  torchrun    `torchrun --nproc_per_node <all local GPUs>` on the demo, NCCL (two epochs at least)
  bench       the project's bench.py at real sizes (caer_clip: CLIP ViT-B/16 with 16 frames;
              dual_cross_attention: ViT-B/16 at 448 px with and without gradient checkpointing;
              deepfake_effnet_lstm: 224 px frames; visobert_multitask: the base-size encoder), with its
              compiled / eager and fused / plain optimiser ratios under bf16
Each step runs in its own process with a time limit; a failing step is reported and the next one
runs. The report lists per step the command, exit status, wall time and what it measured
(results.json of a training run, the last lines a bench printed).
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROJECTS = ("caer_clip", "dual_cross_attention", "deepfake_effnet_lstm", "visobert_multitask")
KINDS = ("demo-bf16", "demo-fp16", "compile", "torchrun", "bench")
BENCH_FLAGS = {
    "caer_clip": ["--device", "cuda", "--b16-batch", "2", "--b16-frames", "16"],
    "dual_cross_attention": [],  # on CUDA it measures ViT-B/16 at 448 px, with and without checkpointing
    "deepfake_effnet_lstm": ["--device", "cuda", "--image-size", "224", "--frames", "8", "--batch-size", "8"],
    "visobert_multitask": ["--device", "cuda", "--configs", "tiny,base"],
}


def plan(projects, kinds, out: Path, gpus: int) -> list[dict]:
    """Every step as {name, project, kind, cmd, run_dir}; cmd runs from the repository root."""
    steps = []
    for project in projects:
        train = [f"{project}/train.py"]
        for kind in kinds:
            run_dir = out / f"{project}-{kind}"
            if kind in ("demo-bf16", "demo-fp16", "compile"):
                cmd = [sys.executable, *train, "--amp", "fp16" if kind == "demo-fp16" else "bf16", "--device", "cuda",
                       "--out", str(run_dir), "--overwrite", *(["--compile"] if kind == "compile" else [])]
            elif kind == "torchrun":
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                       *train, "--out", str(run_dir), "--overwrite"]
            else:
                cmd, run_dir = [sys.executable, f"{project}/bench.py", *BENCH_FLAGS[project]], None
            steps.append({"name": f"{project} {kind}", "project": project, "kind": kind, "cmd": cmd,
                          "run_dir": run_dir})
    return steps


class _Parsed(Exception):
    """Raised right after a script's argparse accepted its arguments (--dry-run)."""


def parse_only(step: dict) -> str:
    """Import the step's script and let its own parser read the arguments, then stop: an unknown
    flag or a bad value fails here, on the CPU, instead of on the GPU machine."""
    cmd = step["cmd"]
    script = next(c for c in cmd if c.endswith(".py"))
    argv = cmd[cmd.index(script) + 1:]
    module = __import__(f"{step['project']}.{Path(script).stem}", fromlist=["main"])
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        original(parser, args, namespace)
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        module.main(argv)
    except _Parsed:
        return "arguments accepted"
    except SystemExit as exit_:  # argparse refused the arguments
        raise SystemExit(f"{step['name']}: {shlex.join(cmd)} was refused by its parser (exit {exit_.code})") from None
    finally:
        argparse.ArgumentParser.parse_args = original
    raise SystemExit(f"{step['name']}: {script} never parsed its arguments")


def summary(step: dict, output: str) -> str:
    """What a step measured: a training run's results.json, else the bench's last lines."""
    results = step["run_dir"] / "results.json" if step["run_dir"] else None
    if results is not None and results.exists():
        data = json.loads(results.read_text())
        keep = {k: data[k] for k in ("step", "best", "val", "test") if k in data}
        return "`" + json.dumps(keep, default=str)[:600] + "`"
    lines = [line for line in output.splitlines() if line.strip()][-12:]
    return "<pre>" + "<br>".join(line.replace("|", "\\|") for line in lines) + "</pre>"


def machine() -> str:
    import torch

    if not torch.cuda.is_available():
        return f"no CUDA device; torch {torch.__version__}, {platform.processor() or platform.machine()}"
    names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    return (f"{torch.cuda.device_count()} x {', '.join(sorted(names))}; torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}, "
            f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu_check", help="folder for the runs and report.md (default: %(default)s)")
    p.add_argument("--only", default=",".join(PROJECTS), help="comma-separated projects (default: all four)")
    p.add_argument("--skip", default="", help=f"comma-separated steps to leave out: {', '.join(KINDS)}")
    p.add_argument("--timeout", type=int, default=900, help="seconds allowed per step (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="no GPU needed: build the commands, parse each with "
                   "its script's own parser, write the report of what would run")
    args = p.parse_args(argv)
    projects = [x for x in args.only.split(",") if x]
    skip = {x for x in args.skip.split(",") if x}
    unknown = (set(projects) - set(PROJECTS)) | (skip - set(KINDS))
    if unknown:
        p.error(f"unknown project or step: {', '.join(sorted(unknown))}")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device here; --dry-run checks the commands on the CPU")
    gpus = max(torch.cuda.device_count(), 2) if args.dry_run else torch.cuda.device_count()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = plan(projects, [k for k in KINDS if k not in skip], out, gpus)
    rows, failed = [], 0
    for step in steps:
        start = time.time()
        if args.dry_run:
            status, text = "parsed", parse_only(step)
        else:
            print(f"== {step['name']}: {shlex.join(step['cmd'])}", flush=True)
            try:
                done = subprocess.run(step["cmd"], cwd=ROOT, capture_output=True, text=True, timeout=args.timeout,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
                status, output = f"exit {done.returncode}", done.stdout + done.stderr
                failed += done.returncode != 0
            except subprocess.TimeoutExpired as timeout:
                status, failed = f"timeout {args.timeout} s", failed + 1
                output = (timeout.stdout or b"").decode(errors="replace") if isinstance(timeout.stdout, bytes) \
                    else (timeout.stdout or "")
            (out / f"{step['project']}-{step['kind']}.log").write_text(output)
            text = summary(step, output)
            print(f"   {status} in {time.time() - start:.0f} s", flush=True)
        rows.append(f"| {step['name']} | `{shlex.join(step['cmd'][1:])}` | {status} | {time.time() - start:.0f} s "
                    f"| {text} |")
    report = "\n".join([
        "# GPU check" + (" (dry run: commands parsed, nothing ran)" if args.dry_run else ""), "",
        f"Machine: {machine()}. "
        f"Command: `python gpu_check.py {shlex.join(argv if argv is not None else sys.argv[1:])}`.",
        "", "| step | command | status | wall | result |", "| --- | --- | --- | --- | --- |", *rows, ""])
    (out / "report.md").write_text(report)
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
