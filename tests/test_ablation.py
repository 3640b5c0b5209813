"""The ablation commands (<project>/ablate.py over common/tools/ablation.py) at a tiny size, the table
they write, and the synthetic fine-grained data of DCAL."""

import json
import re
from pathlib import Path

import pytest
import torch

from caer_clip import ablate as caer_ablate
from common.tools.ablation import mean_std, run_ablation
from deepfake_effnet_lstm import ablate as deepfake_ablate
from dual_cross_attention import ablate as dcal_ablate
from dual_cross_attention.data import DataConfig, SyntheticFineGrained, build_datasets
from visobert_multitask import ablate as visobert_ablate

CELL = re.compile(r"^(-?\d+\.\d{3} ± (\d+\.\d{3}|n/a)|-)$")
WALL = re.compile(r"^\d+ ± (\d+|n/a)$")

# two variants, one seed, the smallest runs of each train.py (flags after `--` reach every run)
TINY = {
    "caer_clip": (caer_ablate, "full,no-context", [
        "--synthetic-train", "8", "--synthetic-val", "5", "--synthetic-test", "5", "--batch-size", "4",
        "--epochs", "1", "--moco-queue", "8", "--num-frames", "2"]),
    "dual_cross_attention": (dcal_ablate, "vit,dcal", [
        "--synthetic-train", "32", "--synthetic-val", "16", "--synthetic-test", "16", "--synthetic-classes", "4",
        "--image-size", "16", "--embed-dim", "16", "--depth", "1", "--heads", "2", "--batch-size", "8",
        "--epochs", "1", "--pretrained", "none"]),
    "deepfake_effnet_lstm": (deepfake_ablate, "t1,t8-no-attention", [
        "--synthetic-train", "4", "--synthetic-val", "4", "--synthetic-test", "4", "--synthetic-frames", "8",
        "--image-size", "16", "--batch-size", "2", "--eval-clips", "1", "--max-iters", "1", "--lstm-hidden", "8"]),
    "visobert_multitask": (visobert_ablate, "focal,contrastive", [
        "--synthetic-train", "64", "--synthetic-val", "16", "--synthetic-test", "16", "--hidden", "16",
        "--layers", "1", "--heads", "2", "--intermediate", "32", "--epochs", "1", "--batch-size", "32"]),
}


def _table(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.fixture(scope="module")
def ablations(tmp_path_factory):
    """Each project's ablation command run once at the tiny size: {project: (out folder, summary, printed)}."""
    done = {}

    def run(project, capsys):
        if project not in done:
            module, variants, tiny = TINY[project]
            out = tmp_path_factory.mktemp(project) / "ablation"
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation
            try:
                summary = module.main(["--variants", variants, "--seeds", "1", "--out", str(out), "--", *tiny])
            finally:
                torch.set_num_threads(threads)
            done[project] = (out, summary, capsys.readouterr().out)
        return done[project]
    return run


@pytest.mark.parametrize("project", list(TINY))
def test_ablation_command_runs_variants_and_writes_the_table(project, ablations, capsys):
    module, variants, _ = TINY[project]
    out, summary, printed = ablations(project, capsys)
    names = variants.split(",")
    header, _, *rows = _table((out / "ablation.md").read_text())
    assert header == ["variant", "train.py flags", "seeds", *module.METRICS, "wall s per run"]
    assert [row[0] for row in rows] == names and all(row[2] == "1" for row in rows)
    for row in rows:
        assert all(CELL.match(cell) for cell in row[3:-1]) and WALL.match(row[-1]), row
        assert row[3] != "-"  # the first metric of every project exists in every variant
    for name in names:  # one run folder per variant and seed, with its results and printed output
        assert (out / name / "seed0" / "results.json").is_file() and (out / name / "seed0.log").is_file()
    record = json.loads((out / "ablation.json").read_text())
    assert [run["argv"][:len(module.BASE_FLAGS)] for run in record["runs"]] == [module.BASE_FLAGS] * len(names)
    assert summary["markdown"] in printed
    # the wall times say what they were measured on
    assert f"machine: {summary['machine']}" in printed
    assert f"machine: {summary['machine']}." in (out / "ablation.md").read_text()
    assert re.search(r"\d+ CPU cores, .*, torch threads \d+", summary["machine"]), summary["machine"]


def test_deepfake_no_attention_removes_the_module(ablations, capsys):
    """--attention none (the ablation's variant): no attention weights are trained or saved, the
    other weights start as with the gate, and the attention-mask loss, which needs a map, is refused."""
    from deepfake_effnet_lstm.train import main

    out, _, _ = ablations("deepfake_effnet_lstm", capsys)
    with_attention = torch.load(out / "t1" / "seed0" / "last.pt", weights_only=True)["model"]
    without = torch.load(out / "t8-no-attention" / "seed0" / "last.pt", weights_only=True)["model"]
    assert any(key.startswith("attention.") for key in with_attention)
    assert set(without) == {key for key in with_attention if not key.startswith("attention.")}
    with pytest.raises(SystemExit):
        main(["--attention", "none", "--attention-loss-weight", "1"])
    assert "--attention-loss-weight needs an attention module" in capsys.readouterr().err


def _fake_train(results_by_seed):
    """In place of the train.py process: writes results.json at once, the value depends on the seed."""
    calls = []

    def main(project, argv, log):
        out = argv[argv.index("--out") + 1]
        seed = int(argv[argv.index("--seed") + 1])
        calls.append(argv)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.json").write_text(json.dumps({"test": {"acc": results_by_seed[seed]}}))
    return main, calls


def test_mean_std_over_seeds_reuse_and_refusals(tmp_path, capsys, monkeypatch):
    from common.tools import ablation

    fake, calls = _fake_train({0: 0.5, 1: 0.7, 2: 0.9})
    monkeypatch.setattr(ablation, "train", fake)
    variants = {"a": ["--flag-a"], "b": []}
    metrics = {"test acc": "test.acc", "absent": "test.other"}
    out = str(tmp_path / "abl")
    summary = run_ablation("demo", variants, metrics, ["--out", out, "--", "--epochs", "1"], ["--base"])
    rows = _table(summary["markdown"])[2:]
    assert [r[:5] for r in rows] == [["a", "`--flag-a`", "3", "0.700 ± 0.200", "-"],
                                     ["b", "(defaults)", "3", "0.700 ± 0.200", "-"]]
    assert calls[0] == ["--base", "--flag-a", "--epochs", "1", "--seed", "0", "--out", f"{out}/a/seed0"]
    with pytest.raises(SystemExit, match="--reuse"):  # a used output root is refused
        run_ablation("demo", variants, metrics, ["--out", out])
    calls.clear()
    again = run_ablation("demo", variants, metrics, ["--out", out, "--reuse", "--", "--epochs", "1"], ["--base"])
    assert calls == [] and again["markdown"] == summary["markdown"]  # same flags: read, not trained
    run_ablation("demo", variants, metrics, ["--out", out, "--reuse", "--variants", "b", "--seeds", "1"],
                 ["--base"])
    assert calls == [["--base", "--seed", "0", "--out", f"{out}/b/seed0", "--overwrite"]]  # other flags: trained
    assert len(json.loads((tmp_path / "abl" / "ablation.json").read_text())["runs"]) == 6  # the others kept
    with pytest.raises(SystemExit):
        run_ablation("demo", variants, metrics, ["--out", out, "--variants", "a,c"])
    assert "unknown ['c']" in capsys.readouterr().err
    assert mean_std([0.25]) == "0.250 ± n/a" and mean_std([None, float("nan")]) == "-"


# ----------------------------------------------------------------------------- DCAL fine-grained data


def _tile(ds: SyntheticFineGrained, index: int, box: torch.Tensor) -> torch.Tensor:
    top, left = box.tolist()
    return ds.images[index, :, top:top + ds.part, left:left + ds.part] * 0.25 + 0.5  # back to [0, 1]


def test_fine_grained_part_decides_the_class_and_distractors_are_shared():
    ds = SyntheticFineGrained(240, num_classes=6, image_size=32, decoys=3, seed=3)
    assert ds.images.shape == (240, 3, 36, 36) and torch.bincount(ds.labels).tolist() == [40] * 6
    assert len(torch.unique(ds.patterns.flatten(1), dim=0)) == len(ds.patterns)  # all parts differ
    for i in range(240):  # the part on the object is the class's; the distractors belong to no class
        assert (_tile(ds, i, ds.part_boxes[i]) - ds.patterns[ds.labels[i]]).abs().mean() < 0.1
        for d in range(3):
            if ds.decoy_boxes[i, d, 0] >= 0:
                assert (_tile(ds, i, ds.decoy_boxes[i, d]) - ds.patterns[ds.decoy_patterns[i, d]]).abs().mean() < 0.1
    assert (ds.decoy_patterns >= 6).all() and (ds.decoy_boxes[..., 0] >= 0).float().mean() > 0.95
    pool = len(ds.patterns) - 6
    for c in range(6):  # the same distractors in every class: each class shows most of the pool
        assert len(set(ds.decoy_patterns[ds.labels == c].flatten().tolist())) > 0.7 * pool
    # the whole image does not give the class away: class mean colours are alike
    means = torch.stack([ds.images[ds.labels == c].mean((0, 2, 3)) for c in range(6)])
    assert (means - means.mean(0)).abs().max() < 0.15


def test_fine_grained_is_deterministic_off_grid_and_keeps_the_part_in_every_crop():
    a, b = (SyntheticFineGrained(64, num_classes=8, seed=1) for _ in range(2))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    other = SyntheticFineGrained(64, num_classes=8, seed=2)
    assert not torch.equal(a.images, other.images)
    val = SyntheticFineGrained(64, num_classes=8, seed=1, split="val")
    assert torch.equal(val.patterns, a.patterns) and not torch.equal(val.images, a.images)
    patch = 4
    shown = []
    for epoch in range(3):
        a.set_epoch(epoch)
        for i in range(64):
            image, label, index = a[i]
            top, left = a.crop_offset(i)
            shown.append(a.part_boxes[i] - torch.tensor([top, left]))
            assert image.shape == (3, 32, 32) and label == a.labels[i] and index == i
            assert torch.equal(image, a.images[i, :, top:top + 32, left:left + 32])
    shown = torch.stack(shown)
    assert shown.min() >= 0 and shown.max() <= 32 - a.part  # the part is inside every training crop
    assert set((shown % patch).flatten().tolist()) == set(range(patch))  # at every offset to the patch grid
    assert val.crop_offset(5) == (val.margin, val.margin)  # evaluation: the centre


def test_build_datasets_default_is_fine_grained():
    splits, classes = build_datasets(DataConfig(synthetic_train=32, synthetic_val=8, synthetic_test=8), 32, seed=0)
    assert isinstance(splits["train"], SyntheticFineGrained) and classes == 10


def test_deepfake_attention_none_starts_every_other_weight_as_the_gate_run():
    """The ablation compares like with like: at one seed the model without attention starts with
    the same backbone, LSTM and head weights as the model with the gate, and passes features through."""
    from deepfake_effnet_lstm.model import DeepfakeDetector, DetectorConfig

    torch.manual_seed(0)
    gate = DeepfakeDetector(DetectorConfig(attention="gate"))
    torch.manual_seed(0)
    none = DeepfakeDetector(DetectorConfig(attention="none"))
    gate_state, none_state = gate.state_dict(), none.state_dict()
    assert set(none_state) == {k for k in gate_state if not k.startswith("attention.")}
    assert all(torch.equal(none_state[k], gate_state[k]) for k in none_state)
    features = torch.randn(2, 40, 4, 4)
    passed, attention_map = none.attention(features)
    assert torch.equal(passed, features) and torch.equal(attention_map, torch.ones(2, 1, 4, 4))


def test_rollout_hits_known_answers():
    from dual_cross_attention.rollout_hits import hit_stats, part_patches

    # an 8 px part at (5, 6) on a 4 px grid of 8 x 8 patches covers rows 1-3 and columns 1-3
    assert part_patches(5, 6, 8, 4, 8) == [9, 10, 11, 17, 18, 19, 25, 26, 27]
    assert part_patches(4, 4, 8, 4, 8) == [9, 10, 17, 18]  # on the grid: 2 x 2 patches
    scores = torch.zeros(2, 64)
    scores[0, [9, 10, 40]] = 1.0  # image 0: two of its three picks on the part
    scores[1, [60, 61, 62]] = 1.0  # image 1: none
    stats = hit_stats(scores, torch.tensor([[4, 4], [4, 4]]), part=8, patch=4, top_r=3)
    assert stats["image_hit"] == 0.5 and stats["on_part"] == pytest.approx((2 / 3 + 0) / 2)
    assert stats["on_part_chance"] == pytest.approx(4 / 64)
    assert stats["image_hit_chance"] == pytest.approx(1 - (60 * 59 * 58) / (64 * 63 * 62))


def test_rollout_hits_scores_the_runs_of_the_ablation(ablations, capsys):
    from dual_cross_attention import rollout_hits

    out, _, _ = ablations("dual_cross_attention", capsys)
    rows = rollout_hits.main([str(out / "vit" / "seed0"), str(out / "dcal" / "seed0")])
    results = json.loads((out / "dcal" / "seed0" / "results.json").read_text())
    assert [r["test_top1"] for r in rows][1] == results["test"]["top1"]
    assert all(0 <= r[k] <= 1 for r in rows for k in ("image_hit", "on_part", "image_hit_chance", "on_part_chance"))
    assert "Pearson r" in capsys.readouterr().out
    assert rows[0]["glca_random_picks_change"] is None and rows[1]["glca_random_picks_change"] >= 0.0
