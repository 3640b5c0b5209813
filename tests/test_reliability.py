"""Reliability and scale-out suite: every project's real train.py on its synthetic default at a
tiny size, so the same guarantees hold for all four.

- a run killed with SIGKILL (after a checkpoint, and with a torn checkpoint write left behind)
  resumes to the same final weights and the same log.csv rows as an uninterrupted run;
- an unwritable or full run folder fails before training;
- --resume with a contradicting config, or of a missing file, fails with a clear error;
(torchrun, re-runs, signals and damaged checkpoints: tests/test_lifecycle.py.)
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.runtime import ConfigMismatchError, DataError, NonFiniteLossError, RunDirError
from tests.run_helpers import REPO, TINY, assert_same_run, script, train


@dataclass
class Spec:
    tiny: list[str]  # a run of a few seconds on the synthetic default
    other_size: list[str]  # the same run with a different architecture (for the mismatch test)
    mismatch_key: str  # a config key the mismatch error must name


SPECS: dict[str, Spec] = {
    "dual_cross_attention": Spec(
        tiny=TINY["dual_cross_attention"],
        other_size=["--embed-dim", "48"], mismatch_key="embed_dim"),
    "caer_clip": Spec(
        tiny=TINY["caer_clip"],
        other_size=["--temporal-layers", "2"], mismatch_key="temporal_layers"),
    "deepfake_effnet_lstm": Spec(
        tiny=[*TINY["deepfake_effnet_lstm"], "--max-iters", "4"],
        other_size=["--lstm-hidden", "64"], mismatch_key="lstm_hidden"),
    "visobert_multitask": Spec(
        tiny=TINY["visobert_multitask"],
        other_size=["--layers", "2"], mismatch_key="model.layers"),
}


def _run(project: str, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return train(project, args, timeout=timeout)


def _main(project: str):
    return importlib.import_module(f"{project}.train").main


def _popen(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=REPO)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """SIGKILL `proc` as soon as `ready()` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.kill()
    raise TimeoutError("the run neither reached the kill point nor finished")


@pytest.mark.slow
@pytest.mark.parametrize("project", list(SPECS))
def test_sigkill_then_resume_equals_uninterrupted_run(project, tmp_path):
    """SIGKILL once right after a checkpoint has landed and once while one is being written (the
    torn `last.pt.tmp` stays behind); `--resume` then finishes with the uninterrupted run's exact
    final weights and log rows (no duplicated or missing steps)."""
    args = [*SPECS[project].tiny, "--ckpt-interval", "1"]
    reference = tmp_path / "reference"
    done = _run(project, [*args, "--out", str(reference)])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    run = tmp_path / "killed"
    first = _popen([script(project), *args, "--out", str(run)])
    assert _kill_when(first, lambda: (run / "last.pt").exists()), "the run finished before the kill"

    slow = str(REPO / "tests" / "scripts" / "slow_checkpoints.py")
    second = _popen([slow, script(project), *args, "--out", str(run), "--resume", str(run / "last.pt")])
    assert _kill_when(second, lambda: (run / "last.pt.tmp").exists()), "the run finished before the kill"
    assert (run / "last.pt.tmp").exists() and (run / "last.pt").exists()

    finished = _run(project, [*args, "--out", str(run), "--resume", str(run / "last.pt")])
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    assert_same_run(reference, run)


@pytest.mark.parametrize("project", list(SPECS))
def test_unwritable_or_full_run_folder_fails_before_training(project, tmp_path, monkeypatch):
    main = _main(project)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(RunDirError, match="a_file"):
        main([*SPECS[project].tiny, "--out", str(blocker / "run")])

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1024))
    with pytest.raises(RunDirError, match="MB free"):
        main([*SPECS[project].tiny, "--out", str(tmp_path / "full")])
    assert not (tmp_path / "full" / "config.json").exists()


@pytest.mark.parametrize("project", list(SPECS))
def test_resume_with_contradicting_config_or_missing_file(project, tmp_path):
    spec, main = SPECS[project], _main(project)
    run = tmp_path / "run"
    main([*spec.tiny, "--out", str(run)])
    with pytest.raises(ConfigMismatchError, match=spec.mismatch_key):
        main([*spec.tiny, *spec.other_size, "--out", str(run), "--resume", str(run / "last.pt")])
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        main([*spec.tiny, "--out", str(run), "--resume", str(run / "missing.pt")])


# ----------------------------------------------------------------------------- bad input table
# Each case writes a small broken dataset (or breaks a loss) and names what the error must say.
# A case returns the extra CLI args that point train.py at the broken data.


def _dcal_cub(tmp_path, **kw):
    from tests.fixtures_dual_cross_attention import write_cub

    return write_cub(tmp_path / "CUB", **kw)


def _dcal_case(edit):
    def build(tmp_path):
        root = _dcal_cub(tmp_path)
        edit(root)
        return ["--data-root", str(root), "--image-size", "16", "--resize", "20", "--batch-size", "2"]
    return build


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _caer_case(edit, **raer):
    def build(tmp_path):
        from tests.fixtures_caer_clip import make_raer

        root = tmp_path / "raer"
        make_raer(root, **{"clips_per_class": 2, "frames": 4, **raer})
        edit(root)
        return ["--data-root", str(root), "--clip", "tiny", "--num-frames", "2", "--batch-size", "2",
                "--moco-queue", "8", "--logit-scale", "20"]
    return build


def _drop_face_box(root: Path) -> None:
    boxes = json.loads((root / "face_boxes.json").read_text())
    del boxes["train/class2_0"]
    (root / "face_boxes.json").write_text(json.dumps(boxes))


def _dfd_case(edit, videos=None):
    def build(tmp_path):
        from tests.fixtures_deepfake_effnet_lstm import grouped_videos, write_dataset

        root = write_dataset(tmp_path / "d", videos or grouped_videos(8), frames=4)
        edit(root)
        return ["--data-root", str(root), "--pretrained", "none"]
    return build


def _vsb_case(train_csv: bytes | str):
    def build(tmp_path):
        root = tmp_path / "reviews"
        root.mkdir()
        good = "text,Battery,Camera\npin tốt,Positive,\ncamera kém,,Negative\n"
        for split in ("val", "test"):
            (root / f"{split}.csv").write_text(good, encoding="utf-8")
        data = train_csv if isinstance(train_csv, bytes) else train_csv.encode("utf-8")
        (root / "train.csv").write_bytes(data)
        return ["--data-root", str(root)]
    return build


def _nothing(root: Path) -> None:
    pass


BAD_INPUTS = [
    # (project, case, build(tmp_path) -> extra args, error type, what the message must name)
    ("dual_cross_attention", "missing data root", lambda t: ["--data-root", str(t / "nowhere")],
     DataError, "nowhere"),
    ("dual_cross_attention", "empty annotation file", _dcal_case(lambda r: (r / "images.txt").write_text("")),
     DataError, "images.txt"),
    ("dual_cross_attention", "malformed line",
     _dcal_case(lambda r: (r / "train_test_split.txt").write_text("1 1\n2\n")), DataError, r"train_test_split\.txt:2"),
    ("dual_cross_attention", "label out of range",
     lambda t: ["--data-root", str(_dcal_cub(t, labels=(1, 1, 2, 2, 3, 9))), "--image-size", "16", "--resize", "20"],
     DataError, "unknown class id 9"),
    ("dual_cross_attention", "unreadable image",
     _dcal_case(lambda r: (r / "images" / "001.bird_1" / "img_1.jpg").write_bytes(b"not an image")),
     DataError, "img_1.jpg"),
    ("dual_cross_attention", "truncated image",
     _dcal_case(lambda r: _truncate(r / "images" / "002.bird_2" / "img_3.jpg")), DataError, "img_3.jpg"),
    ("dual_cross_attention", "empty split",
     lambda t: ["--data-root", str(_dcal_cub(t, split=(1, 1, 1, 1, 1, 1))), "--image-size", "16", "--resize", "20"],
     DataError, "split is empty"),
    ("caer_clip", "missing data root", lambda t: ["--data-root", str(t / "nowhere")], DataError, "nowhere"),
    ("caer_clip", "empty annotation file", _caer_case(lambda r: (r / "train.txt").write_text("")),
     DataError, r"train\.txt is empty"),
    ("caer_clip", "malformed line", _caer_case(lambda r: (r / "train.txt").write_text("train/class1_0 4\n")),
     DataError, r"train\.txt:1"),
    ("caer_clip", "label out of range", _caer_case(lambda r: (r / "train.txt").write_text("train/class1_0 4 9\n")),
     DataError, r"train\.txt:1.*label 9"),
    ("caer_clip", "missing frame folder",
     _caer_case(lambda r: shutil.rmtree(r / "train" / "class3_0")), DataError, "class3_0"),
    ("caer_clip", "unreadable frame",
     _caer_case(lambda r: [p.write_bytes(b"not a jpeg") for p in (r / "train" / "class1_0").glob("*.jpg")]),
     DataError, r"cannot read frame .*class1_0/\d\.jpg"),
    ("caer_clip", "truncated frame",
     _caer_case(lambda r: [_truncate(p) for p in (r / "train" / "class4_0").glob("*.jpg")]),
     DataError, r"(?i)class4_0/\d\.jpg.*truncated"),
    ("caer_clip", "fewer frames than listed", _caer_case(lambda r: (r / "train" / "class5_0" / "4.jpg").unlink()),
     DataError, "class5_0"),
    ("caer_clip", "missing face box", _caer_case(_drop_face_box), DataError, "no face box for clip 'train/class2_0'"),
    ("deepfake_effnet_lstm", "missing data root", lambda t: ["--data-root", str(t / "nowhere"), "--pretrained", "none"],
     DataError, "nowhere"),
    ("deepfake_effnet_lstm", "empty index file", _dfd_case(lambda r: (r / "index.csv").write_text("video,label\n")),
     DataError, "no videos listed"),
    ("deepfake_effnet_lstm", "malformed line",
     _dfd_case(lambda r: (r / "index.csv").write_text("video,label\nreal0\n")), DataError, r"index\.csv:2"),
    ("deepfake_effnet_lstm", "label out of range",
     _dfd_case(lambda r: (r / "index.csv").write_text("video,label\nreal0,2\n")), DataError, "unknown label '2'"),
    ("deepfake_effnet_lstm", "missing frame folder", _dfd_case(lambda r: shutil.rmtree(r / "fake3_1")),
     DataError, "fake3_1"),
    ("deepfake_effnet_lstm", "unreadable image",
     _dfd_case(lambda r: [p.write_bytes(b"not a png") for p in r.glob("*/*.png")]), DataError, r"\.png: unreadable"),
    ("deepfake_effnet_lstm", "truncated image", _dfd_case(lambda r: [_truncate(p) for p in r.glob("*/*.png")]),
     DataError, r"\.png: unreadable"),
    ("deepfake_effnet_lstm", "a split with one class",
     _dfd_case(_nothing, videos=[{"video": f"real{i}", "label": "real"} for i in range(6)]), DataError, "only"),
    ("visobert_multitask", "missing data root", lambda t: ["--data-root", str(t / "nowhere")], DataError, "nowhere"),
    ("visobert_multitask", "empty annotation file", _vsb_case(""), DataError, r"train\.csv: the file is empty"),
    ("visobert_multitask", "malformed line", _vsb_case("text,Battery\npin,Positive,extra\n"),
     DataError, r"train\.csv:2: 3 fields"),
    ("visobert_multitask", "label out of range", _vsb_case("text,Battery\npin tốt,Great\n"),
     DataError, r"train\.csv:2: unknown polarity 'Great'"),
    ("visobert_multitask", "non-UTF-8 text", _vsb_case(b"text,Battery\npin t\xf4t,Positive\n"),
     DataError, r"train\.csv:2: not valid UTF-8"),
    ("visobert_multitask", "empty text", _vsb_case("text,Battery\n  ,Positive\n"), DataError,
     r"train\.csv:2: empty review"),
]


@pytest.mark.parametrize("project,case,build,error,match", BAD_INPUTS, ids=[f"{p}:{c}" for p, c, *_ in BAD_INPUTS])
def test_bad_input_gives_a_clear_error(project, case, build, error, match, tmp_path):
    extra = build(tmp_path)
    with pytest.raises(error, match=match) as caught:
        _main(project)([*SPECS[project].tiny, *extra, "--out", str(tmp_path / "run")])
    # the error is ours, raised with a message, not a traceback from inside torch
    assert type(caught.value).__module__ in ("common.runtime", "builtins")


def _wrap(monkeypatch, module: str, name: str, corrupt):
    """Replace module.name by a wrapper that corrupts its result (injects a NaN into a loss)."""
    mod = importlib.import_module(module)
    real = getattr(mod, name)
    monkeypatch.setattr(mod, name, lambda *a, **k: corrupt(real(*a, **k)))


def _nan_in_dcal_glca(monkeypatch):
    def corrupt(result):
        total, parts, out = result
        return total, {**parts, "glca": parts["glca"] * float("nan")}, out

    _wrap(monkeypatch, "dual_cross_attention.model", "compute_losses", corrupt)


def _nan_result(result):
    return result * float("nan")


NAN_INJECTIONS = [
    # (project, inject(monkeypatch), component the error must name)
    ("dual_cross_attention", _nan_in_dcal_glca, "glca"),
    ("caer_clip", lambda mp: _wrap(mp, "caer_clip.losses", "dc_loss", _nan_result), "loss_dc"),
    ("deepfake_effnet_lstm", lambda mp: _wrap(mp, "deepfake_effnet_lstm.model", "classification_loss", _nan_result),
     "cls"),
    ("visobert_multitask", lambda mp: _wrap(mp, "visobert_multitask.losses", "compute_losses",
                                            lambda out: {**out, "supcon": out["supcon"] * float("nan")}), "supcon"),
]


@pytest.mark.parametrize("project,inject,component", NAN_INJECTIONS, ids=[p for p, *_ in NAN_INJECTIONS])
def test_nan_inside_a_loss_stops_the_run_naming_the_component(project, inject, component, tmp_path, monkeypatch):
    inject(monkeypatch)
    with pytest.raises(NonFiniteLossError, match=rf"{component}=nan"):
        _main(project)([*SPECS[project].tiny, "--out", str(tmp_path / "run")])


# ----------------------------------------------------------------------------- property test of the readers


def _readers(tmp: Path):
    """(file the reader reads, call) for every reader of an annotation/index/label file or image."""
    from caer_clip.data import read_annotation_list, read_boxes, read_daisee_csv
    from deepfake_effnet_lstm.data import load_image, read_index
    from dual_cross_attention.data import _read_table, load_rgb
    from visobert_multitask.data import read_aspect_columns, read_visfd

    return [
        (tmp / "list.txt", lambda p: read_annotation_list(p, tmp, 1, 5)),
        (tmp / "boxes.json", lambda p: read_boxes(p, "face", tmp, [], False)),
        (tmp / "labels.csv", lambda p: read_daisee_csv(p, tmp, "frames")),
        (tmp / "images.txt", lambda p: _read_table(p, 2)),
        (tmp / "img.jpg", load_rgb),
        (tmp / "index.csv", lambda p: read_index(p, tmp, None, 2)),
        (tmp / "frame.png", lambda p: load_image(p, 8)),
        (tmp / "train.csv", read_aspect_columns),
        (tmp / "visfd.csv", read_visfd),
    ]


def test_readers_raise_only_clear_errors_on_random_bytes_and_lines(tmp_path):
    hypothesis = pytest.importorskip("hypothesis", reason="hypothesis not installed (optional property test)")
    st = hypothesis.strategies
    tokens = list("ab01 ,;{}#-.\t/é") + ["Positive", "1.jpg", "video", "label", "text", "Engagement", "ClipID"]
    line = st.lists(st.sampled_from(tokens), max_size=12).map("".join)
    content = st.one_of(st.binary(max_size=200), st.lists(line, max_size=6).map(lambda ls: "\n".join(ls).encode()))

    @hypothesis.settings(max_examples=100, deadline=None, database=None)
    @hypothesis.given(data=content)
    def check(data):
        for path, read in _readers(tmp_path):
            path.write_bytes(data)
            try:
                read(path)
            except DataError:
                pass  # a clear error naming the file: what the readers promise

    check()
