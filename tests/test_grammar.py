"""One grammar for the four projects: the same skeleton in every train.py, model files that copy
alone, and tools beside the loop (they never import train.py)."""

import ast
import importlib
import inspect
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = ["caer_clip", "dual_cross_attention", "deepfake_effnet_lstm", "visobert_multitask"]
MODEL_FILES = {"caer_clip": ["model.py", "clip.py"], "dual_cross_attention": ["model.py"],
               "deepfake_effnet_lstm": ["model.py"], "visobert_multitask": ["model.py"]}
# Build each model in its default size and run one forward, with only the copied files at hand.
FORWARD = {
    "caer_clip": """
        from caer_clip.clip import CLIP, WordTokenizer, tiny_config
        from caer_clip.model import ModelConfig, build_model
        descriptors = [["a calm face"], ["a smiling face"]]
        model = build_model(ModelConfig(num_classes=2, moco_queue=8), CLIP(tiny_config()),
                            WordTokenizer(["a calm face", "a smiling face", "x", "a photo of ."]), descriptors)
        logits = model(torch.randn(2, 4, 3, 32, 32), torch.randn(2, 4, 3, 32, 32))["logits"]
        assert logits.shape == (2, 2), logits.shape
    """,
    "dual_cross_attention": """
        from dual_cross_attention.model import DCAL, DCALConfig
        model = DCAL(DCALConfig(num_classes=5, image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2))
        out = model(torch.randn(2, 3, 32, 32), partner=torch.tensor([1, 0]))
        assert out["sa"].shape == (2, 5) and out["glca"].shape == (2, 5), out.keys()
    """,
    "deepfake_effnet_lstm": """
        from deepfake_effnet_lstm.model import DeepfakeDetector, DetectorConfig
        logits = DeepfakeDetector(DetectorConfig())(torch.randn(2, 3, 3, 32, 32))
        assert logits.shape[0] == 2, logits.shape
    """,
    "visobert_multitask": """
        from visobert_multitask.model import AspectSentimentModel, ModelConfig
        model = AspectSentimentModel(ModelConfig(vocab_size=50, num_aspects=3))
        ids = torch.randint(5, 50, (2, 12))
        logits = model(ids, torch.ones_like(ids))
        assert logits.shape == (2, 3, 4), logits.shape
    """,
}
# Allowed for a copied model file: these packages (with whatever they import themselves), the
# standard library and the model's own package.
ALLOWED = {"torch", "torchvision", "einops", "numpy"}
GUARD = textwrap.dedent("""
    import builtins, sys
    from pathlib import Path
    HERE, ALLOWED = Path.cwd().resolve(), {allowed!r} | set(sys.stdlib_module_names)
    real_import = builtins.__import__

    def guarded(name, globals=None, locals=None, fromlist=(), level=0):
        caller = Path((globals or {{}}).get("__file__") or "/").resolve()
        top = name.split(".")[0]
        if level == 0 and HERE in caller.parents and top not in ALLOWED and top != {project!r}:
            raise ImportError(f"{{caller.name}} imports {{name}}, which a copied model file may not use")
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = guarded
    import torch
""")


@pytest.mark.parametrize("project", PROJECTS)
def test_model_files_copy_alone_build_and_run(project, tmp_path):
    """The project's model files in an empty folder build the model and run a forward, importing
    nothing but torch, torchvision, einops, numpy and the standard library."""
    package = tmp_path / project
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in MODEL_FILES[project]:
        shutil.copy(ROOT / project / name, package / name)
    script = GUARD.format(allowed=ALLOWED, project=project) + textwrap.dedent(FORWARD[project]) + "print('ok')\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_no_tool_imports_a_train_py():
    """predict, bench, ablate, plots, importers and the rest import model.py, data.py and common/,
    never train.py: a helper in train.py can be renamed without breaking a tool."""
    offenders = []
    for path in sorted(ROOT.glob("*/*.py")) + sorted(ROOT.glob("common/**/*.py")) + [ROOT / "gpu_check.py"]:
        if path.name == "train.py" or path.parts[-2].startswith(".") or path.parts[-2] == "tests":
            continue
        used = [n for n in _imports(path) if any(n == f"{p}.train" or n.startswith(f"{p}.train.") for p in PROJECTS)]
        if used:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(used)}")
    assert not offenders, offenders


@pytest.mark.parametrize("project", PROJECTS)
def test_every_train_py_has_the_same_skeleton(project):
    """The same names, with the same parameters, in all four train.py."""
    train = importlib.import_module(f"{project}.train")
    for name in ("Config", "TrainConfig", "build_parser", "config_from", "evaluate", "validate", "train_one_epoch",
                 "main"):
        assert hasattr(train, name), f"{project}/train.py has no {name}"
    assert list(inspect.signature(train.train_one_epoch).parameters) == ["state", "loader", "val_loader", "cfg", "run"]
    assert list(inspect.signature(train.validate).parameters)[:4] == ["state", "loader", "cfg", "run"]
    assert list(inspect.signature(train.evaluate).parameters)[:3] == ["model", "loader", "cfg"]
    assert {f for f in train.Config.__dataclass_fields__} >= {"model", "data", "train", "run"}
    source = inspect.getsource(train)
    assert "args." not in inspect.getsource(train.train_one_epoch), "the loop reads cfg, not args"
    assert "DataLoader(" not in source, "loaders come from common.runtime.make_loader (one seed rule)"
