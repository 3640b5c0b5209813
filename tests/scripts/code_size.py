"""Lines a reader walks: non-test Python, each project's reading path (train.py and the modules it
imports, followed transitively, at module level or inside functions), main() lengths and common/.

The tools a train.py calls at its edges are not on the path: `<project>/plots.py` (pictures and
TensorBoard, written after a validation or at the end) and `common/tools/`; a reader of the loop
never has to open them, and they never import train.py.

    python tests/scripts/code_size.py
"""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECTS = ["caer_clip", "dual_cross_attention", "deepfake_effnet_lstm", "visobert_multitask"]


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def local_imports(path: Path) -> set[Path]:
    """Repository modules imported by `path` (top-level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:  # `from pkg import module`
            names += [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            candidate = ROOT / (name.replace(".", "/") + ".py")
            if candidate.is_file() and candidate.name != "plots.py" and "tools" not in candidate.parts:
                found.add(candidate)
    return found


def reading_path(project: str) -> list[Path]:
    """train.py, the modules it imports, and theirs, transitively."""
    todo, seen = [ROOT / project / "train.py"], set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += local_imports(path)
    return sorted(seen)


def main_length(path: Path) -> int:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            return node.end_lineno - node.lineno + 1
    return 0


def main() -> None:
    code = [p for p in ROOT.rglob("*.py") if "tests" not in p.parts and not any(
        part.startswith(".") for part in p.relative_to(ROOT).parts) and "runs" not in p.parts]
    print(f"non-test Python: {sum(map(lines, code))} lines in {len(code)} files")
    common = sorted((ROOT / "common").rglob("*.py"))
    print(f"common/: {sum(map(lines, common))} lines in {len(common)} files "
          f"({', '.join(f'{p.relative_to(ROOT)} {lines(p)}' for p in common if lines(p))})")
    for project in PROJECTS:
        path = reading_path(project)
        print(f"{project}: reading path {sum(map(lines, path))} lines "
              f"({', '.join(f'{p.relative_to(ROOT)} {lines(p)}' for p in path)}); "
              f"main() {main_length(ROOT / project / 'train.py')} lines")


if __name__ == "__main__":
    sys.exit(main())
