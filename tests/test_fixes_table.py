"""FIXES.md stays true to the tree: every row names tests that exist and has an undo patch that still applies."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\|\s*([A-Z]+(?:-[A-Z0-9]+)+)\s*\|")


def fix_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (ROOT / "FIXES.md").read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = re.findall(r"`(test_[A-Za-z0-9_]+)", line.rstrip("|").split("|")[-1])
    return rows


def test_every_fix_row_names_tests_that_exist():
    defined = set()
    for path in (ROOT / "tests").rglob("test*.py"):
        defined |= set(re.findall(r"^def (test_[A-Za-z0-9_]+)\(", path.read_text(encoding="utf-8"), re.M))
    rows = fix_rows()
    assert len(rows) >= 46
    missing = {fix_id: [t for t in tests if t not in defined] for fix_id, tests in rows.items()}
    assert not {k: v for k, v in missing.items() if v or not rows[k]}, "FIXES.md rows naming no or absent tests"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a clone")
def test_every_undo_patch_names_a_fix_and_applies_to_the_tree():
    """tests/undo/<ID>.patch puts a fix's baseline behaviour back (tests/scripts/check_undo.py runs the
    fix's tests on it); a patch that no longer applies must be rewritten with the code it undoes."""
    rows = fix_rows()
    patches = sorted((ROOT / "tests" / "undo").glob("*.patch"))
    assert sorted(rows) == [p.stem for p in patches], "every FIXES.md row has exactly one tests/undo/<ID>.patch"
    for patch in patches:
        assert patch.stem in rows, f"{patch.name}: no FIXES.md row {patch.stem}"
        check = subprocess.run(["git", "apply", "--check", str(patch)], cwd=ROOT, capture_output=True, text=True)
        assert check.returncode == 0, f"{patch.name} no longer applies: {check.stderr.strip()}"
