"""Opening a checkpoint from elsewhere runs no code: every program that reads one loads it with
torch.load(weights_only=True), so a pickle that would create a file when unpickled is refused,
unopened, with one line naming the checkpoint."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


class _Trap:
    """Unpickling this calls os.system: the file `target` appears if anything unpickles it."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def _evil_checkpoint(tmp_path: Path, project: str) -> tuple[Path, Path]:
    target, path = tmp_path / "PWNED", tmp_path / "evil" / "best.pt"
    path.parent.mkdir()
    torch.save({"format": 2, "project": project, "model": {}, "extra": _Trap(target)}, path)
    return path, target


def _inputs(tmp_path: Path, project: str) -> list[str]:
    """Arguments that make each predict.py reach its checkpoint (the inputs exist)."""
    folder = tmp_path / "inputs"
    folder.mkdir(exist_ok=True)
    (folder / "1.png").write_bytes(b"")
    return {"caer_clip": [str(folder)], "dual_cross_attention": [str(folder / "1.png")],
            "deepfake_effnet_lstm": [str(folder)], "visobert_multitask": ["--text", "một câu"]}[project]


PROGRAMS = [(project, program) for project in ("caer_clip", "dual_cross_attention", "deepfake_effnet_lstm",
                                               "visobert_multitask") for program in ("train", "predict")]


@pytest.mark.parametrize("project,program", PROGRAMS + [("dual_cross_attention", "rollout_hits")])
def test_a_checkpoint_that_would_run_code_is_refused_unopened(project, program, tmp_path, monkeypatch):
    evil, target = _evil_checkpoint(tmp_path, project)
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"{project}.{program}").main
    argv = {"train": ["--resume", str(evil)], "predict": ["--checkpoint", str(evil), *_inputs(tmp_path, project)],
            "rollout_hits": [str(evil.parent)]}[program]
    with pytest.raises(CheckpointError, match=str(evil)) as caught:
        main(argv)
    assert "posix.system" in str(caught.value) or "system" in str(caught.value)
    assert not target.exists(), f"{project}/{program}.py ran the checkpoint's code"


def test_the_checkpoint_evaluation_refuses_it_too(tmp_path):
    from common.checkpoint import load_run_checkpoint

    evil, target = _evil_checkpoint(tmp_path, "caer_clip")
    with pytest.raises(CheckpointError, match="refused without unpickling"):
        load_run_checkpoint(evil, "caer_clip")
    assert not target.exists()


def test_the_refusal_is_one_line_naming_the_file(tmp_path):
    evil, target = _evil_checkpoint(tmp_path, "caer_clip")
    done = subprocess.run([sys.executable, str(ROOT / "caer_clip" / "predict.py"), "--checkpoint", str(evil),
                           *_inputs(tmp_path, "caer_clip")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and not target.exists()
    assert done.stderr.count("\n") == 1 and str(evil) in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_class_from_a_module_that_is_not_installed_is_named_not_a_traceback(tmp_path):
    """Before: ModuleNotFoundError from the unpickler, in --resume and in predict.py."""
    module = tmp_path / "gone_module.py"
    module.write_text("class Thing:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import gone_module

        path = tmp_path / "last.pt"
        torch.save({"format": 2, "project": "caer_clip", "extra": gone_module.Thing()}, path)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("gone_module", None)
    module.unlink()
    from common.checkpoint import load_run_checkpoint

    with pytest.raises(CheckpointError, match=r"gone_module\.Thing"):
        load_run_checkpoint(path, "caer_clip")


def test_weights_of_another_network_are_one_error_naming_the_file(tmp_path):
    """caer_clip --clip with a file that is no CLIP, visobert_multitask --encoder with a folder that
    is no encoder: a DataError naming the file or folder (run_cli prints it as one line), not a
    traceback from inside the weight loader. (DCAL: tests/test_dual_cross_attention_weights.py;
    deepfake_effnet_lstm: its --pretrained FILE tests.)"""
    from caer_clip.train import main as caer_main
    from common.runtime import DataError
    from visobert_multitask.train import main as visobert_main

    wrong = tmp_path / "effnet.pt"
    torch.save({"features.0.0.weight": torch.zeros(32, 3, 3, 3)}, wrong)
    with pytest.raises(DataError, match=f"--clip {wrong}: "):
        caer_main(["--clip", str(wrong), "--out", str(tmp_path / "caer")])
    folder = tmp_path / "not_an_encoder"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(DataError, match="--encoder"):
        visobert_main(["--encoder", str(folder), "--out", str(tmp_path / "vsb")])
