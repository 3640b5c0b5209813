"""Put a fix's baseline behaviour back by hand and check that the test FIXES.md names goes red.

Most fixes are undone by reversing their `fix(<ID>)` commit, or by putting back the one-line
`# was:` under their `# FIX(<ID>)` comment. Where later refactors moved the code so that neither
works (the old line calls a helper that no longer exists, or the old behaviour spanned several
lines), `tests/undo/<ID>.patch` holds the baseline behaviour written against today's code. This
script copies the working tree to a temporary folder, applies each patch there, and runs the
tests named in the FIXES.md row of <ID>:

    python tests/scripts/check_undo.py            # every patch in tests/undo/
    python tests/scripts/check_undo.py DCAL-MEMORY
    python tests/scripts/check_undo.py DCAL-MEMORY --tests test_a,test_b   # other tests than FIXES.md names

Verdicts: KILLED (a named test fails), SURVIVED (all pass: the test does not guard the fix),
BROKEN (the patch no longer applies, or the undone code fails with a NameError / does not
import: fix the patch first). Exit status 1 unless every row reads KILLED.
"""
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNDO = ROOT / "tests" / "undo"
SKIP = shutil.ignore_patterns(".git", ".venv*", "runs", "__pycache__", ".pytest_cache", ".ruff_cache")


def named_tests(fix_id: str) -> list[str]:
    """Backticked test names in the last cell of the FIXES.md row for `fix_id`."""
    for line in (ROOT / "FIXES.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("|") and re.search(rf"\|\s*{re.escape(fix_id)}\s*\|", line):
            return re.findall(r"`(test_[A-Za-z0-9_]+)", line.rstrip("|").split("|")[-1])
    return []


def node_ids(tree: Path, names: list[str]) -> list[str]:
    ids = []
    for path in sorted((tree / "tests").rglob("test*.py")):
        source = path.read_text(encoding="utf-8")
        ids += [f"{path.relative_to(tree)}::{n}" for n in names if re.search(rf"^def {n}\(", source, re.M)]
    return ids


def check(fix_id: str, names: list[str] | None = None) -> tuple[str, str]:
    patch = UNDO / f"{fix_id}.patch"
    if not patch.exists():
        return "BROKEN", f"no {patch.relative_to(ROOT)}"
    with tempfile.TemporaryDirectory(prefix="undo-") as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(ROOT, tree, ignore=SKIP)
        applied = subprocess.run(["git", "apply", str(patch)], cwd=tree, capture_output=True, text=True)
        if applied.returncode:
            return "BROKEN", "patch does not apply: " + applied.stderr.strip().splitlines()[0]
        tests = node_ids(tree, names or named_tests(fix_id))
        if not tests:
            return "BROKEN", "FIXES.md names no test that exists"
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o", "addopts=",
                              *tests], cwd=tree, capture_output=True, text=True)
        last = (run.stdout.strip().splitlines() or [""])[-1]
        if run.returncode == 0:
            return "SURVIVED", last
        if run.returncode != 1 or "NameError" in run.stdout:
            return "BROKEN", f"pytest exit {run.returncode}: {last}"
        # the first error line, so a reader sees that the fix's own assertion failed
        why = next((line[1:].strip() for line in run.stdout.splitlines() if line.startswith("E ")), "")
        return "KILLED", f"{last} | {why[:150]}"


def main(argv: list[str]) -> int:
    names = None
    if "--tests" in argv:
        at = argv.index("--tests")
        names, argv = argv[at + 1].split(","), argv[:at] + argv[at + 2:]
    ids = argv or sorted(p.stem for p in UNDO.glob("*.patch"))
    verdicts = []
    for fix_id in ids:
        verdict, note = check(fix_id, names)
        verdicts.append(verdict)
        print(f"{fix_id:28s} {verdict:9s} {note}", flush=True)
    print(f"\n{verdicts.count('KILLED')}/{len(verdicts)} undone fixes caught by their tests")
    return int(any(v != "KILLED" for v in verdicts))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
