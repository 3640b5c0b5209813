"""GLCA's selected queries reach the prediction, the paper's GLCA ablations as flags, the
synthetic pre-training, sizes read from a --pretrained file, split sizes and the rollout
picture's colour scale."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.runtime import ConfigMismatchError
from dual_cross_attention import train as dcal_train
from dual_cross_attention.data import SyntheticFineGrained
from dual_cross_attention.model import DCAL, DCALConfig, rollout_step, to_timm_state_dict, vit_sizes
from dual_cross_attention.plots import blend, normalise_per_image
from dual_cross_attention.train import main
from tests.fixtures_dual_cross_attention import run_config, tiny_cfg  # noqa: F401
from tests.test_dual_cross_attention_model import _direct_rollout, _materialised_attention_maps, peaked

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest.py)

ROOT = Path(__file__).resolve().parents[1]


def _glca_input(model, images):
    """The tokens GLCA reads: the input of the last SA block."""
    x = model.embed(images)
    for blk in model.blocks[:-1]:
        x = blk(x)[0]
    return x


def test_dcal_glca_local_selected_queries_change_the_logits_and_get_a_gradient():
    """DCAL-GLCA-LOCAL: two different selections for the same input give different GLCA logits,
    and the GLCA outputs of the selected rows get a gradient from the GLCA loss (baseline: the
    classifier read the CLS row only, so both were exactly 0)."""
    torch.manual_seed(0)
    model = DCAL(tiny_cfg(top_ratio=0.25, depth=3))  # 16 patches -> R = 4
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([1, 3])
    x = _glca_input(model, images).detach()
    scores_a = torch.arange(16.0).expand(2, 16)  # picks patches 12-15
    scores_b = scores_a.flip(-1)  # picks patches 0-3
    logits_a, picks_a = model.glca_forward(x, scores_a)
    logits_b, picks_b = model.glca_forward(x, scores_b)
    assert set(picks_a[0].tolist()) == {12, 13, 14, 15} and set(picks_b[0].tolist()) == {0, 1, 2, 3}
    assert (logits_a - logits_b).abs().max() > 1e-4

    outputs = []

    def keep(module, inputs, output):
        output.retain_grad()
        outputs.append(output)

    model.glca_block.register_forward_hook(keep)
    x = x.requires_grad_()
    F.cross_entropy(model.glca_forward(x, scores_a)[0], labels).backward()
    local_grad = outputs[0].grad[:, 1:]  # (B, R, D): the R selected queries' outputs
    assert local_grad.abs().amax(dim=-1).min() > 0  # every selected row of every image
    rows = (picks_a + 1)[..., None].expand(-1, -1, x.shape[-1])
    assert x.grad.gather(1, rows).abs().sum() > 0  # and through them, the backbone's tokens


def test_glca_select_flags_choose_the_queries_rollout_last_layer_random():
    """--glca-select: rollout ranks by the CLS row of the rollout over all L layers, last-layer by
    the last SA block's map alone, random draws new patches at every call."""
    images = torch.randn(3, 3, 32, 32)
    picks = {}
    for select in ("rollout", "last-layer", "random"):
        cfg = run_config("--glca-select", select, "--depth", "3", "--top-ratio", "0.1").model  # 64 patches, R = 6
        torch.manual_seed(0)
        model = peaked(DCAL(cfg)).eval()
        with torch.no_grad():
            out = model(images, need_rollout=True)
            maps = _materialised_attention_maps(model, images)
        picks[select] = out["glca_picks"]
        assert picks[select].shape == (3, 6)
        if select == "rollout":
            expected = _direct_rollout(maps)[:, 0, 1:].topk(6, dim=-1).indices
            assert torch.equal(picks[select].sort(-1).values, expected.sort(-1).values)
        elif select == "last-layer":
            last = 0.5 * maps[-1].mean(dim=1) + 0.5 * torch.eye(65)  # the last layer's S_bar alone
            expected = last[:, 0, 1:].topk(6, dim=-1).indices
            assert torch.equal(picks[select].sort(-1).values, expected.sort(-1).values)
        else:
            with torch.no_grad():
                again = model(images, need_rollout=True)["glca_picks"]
            assert not torch.equal(picks[select].sort(-1).values, again.sort(-1).values)
            assert not torch.allclose(out["glca"], model(images)["glca"])  # other picks, other GLCA logits
    assert not torch.equal(picks["rollout"].sort(-1).values, picks["last-layer"].sort(-1).values)


def test_glca_mode_flags_cross_local_self_cls_query():
    """--glca-mode: cross reads keys/values of every token; local-self of the selected tokens only
    (the others can change freely); cls-query uses the CLS query alone, so the selection no longer
    matters (the Cross-ViT-like baseline, the behaviour before GLCA read its selected queries)."""
    images = torch.randn(2, 3, 32, 32)
    scores = torch.randn(2, 64)
    results = {}
    for mode in ("cross", "local-self", "cls-query"):
        torch.manual_seed(0)
        model = DCAL(run_config("--glca-mode", mode, "--depth", "2").model).eval()
        with torch.no_grad():
            x = _glca_input(model, images)
            logits, picks = model.glca_forward(x, scores)
            others = torch.ones(2, 65, dtype=torch.bool)
            others[:, 0] = False
            others.scatter_(1, picks + 1, False)
            changed = x + 5.0 * others[..., None] * torch.randn_like(x)  # only the tokens nobody picked
            results[mode] = (logits, model.glca_forward(changed, scores)[0], model.glca_forward(x, -scores)[0])
    cross, local_self, cls_query = results["cross"], results["local-self"], results["cls-query"]
    assert (cross[0] - cross[1]).abs().max() > 1e-4  # cross: keys/values of every token
    torch.testing.assert_close(local_self[0], local_self[1])  # local-self: the picked tokens only
    assert (local_self[0] - local_self[2]).abs().max() > 1e-4
    torch.testing.assert_close(cls_query[0], cls_query[2])  # cls-query: the selection does not matter
    assert (cls_query[0] - cls_query[1]).abs().max() > 1e-4


def test_bad_glca_flag_is_refused_at_parse_time(capsys):
    with pytest.raises(SystemExit):
        run_config("--glca-select", "penultimate")
    assert "--glca-select: invalid choice" in capsys.readouterr().err


def test_synthetic_demo_fine_tunes_a_pretrained_vit_other_sizes_start_from_scratch():
    assert run_config().train.pretrained == "synthetic"
    assert run_config("--embed-dim", "32").train.pretrained == "none"
    assert run_config("--embed-dim", "32", "--pretrained", "synthetic").train.pretrained == "synthetic"


def test_pretraining_task_has_other_parts_and_images_than_the_fine_task():
    fine = SyntheticFineGrained(20, 10, 32, seed=0, split="train")
    pre = SyntheticFineGrained(20, 30, 32, seed=0, split="pretrain-train")
    same_part = (fine.patterns[:, None] - pre.patterns[None]).abs().flatten(2).amax(-1) == 0  # (42, 42)
    assert not same_part.any()  # no class part, no distractor of the one is a part of the other
    assert not torch.equal(fine.images, pre.images)


def test_pretrain_writes_a_timm_file_that_pretrained_loads(tmp_path, monkeypatch, capfd):
    """pretrain.py on a tiny recipe, run by train.py in its own process: the cached file is a timm
    state_dict; `--pretrained synthetic` builds it once, loads it (SA weights equal the file's, GLCA
    starts from its last block) and reuses it."""
    monkeypatch.setattr(dcal_train, "PRETRAIN", [*dcal_train.PRETRAIN, "--cache", str(tmp_path / "cache"), "--classes",
                                                 "4", "--train-images", "32", "--val-images", "8", "--epochs", "1",
                                                 "--batch-size", "16"])
    tiny = ["--synthetic-train", "16", "--synthetic-val", "8", "--synthetic-test", "8", "--synthetic-classes", "4",
            "--image-size", "16", "--embed-dim", "32", "--depth", "2", "--heads", "2", "--batch-size", "8",
            "--max-iters", "1", "--num-overlays", "0", "--lr", "1e-12", "--pretrained", "synthetic"]
    main([*tiny, "--out", str(tmp_path / "a")])
    files = list((tmp_path / "cache").glob("*.pth"))
    assert len(files) == 1 and "pretrain: val top-1" in capfd.readouterr().err
    state = torch.load(files[0], weights_only=True)
    assert "patch_embed.proj.weight" in state and "blocks.1.mlp.fc2.weight" in state  # timm layout
    main([*tiny, "--out", str(tmp_path / "b")])
    assert "pretrain:" not in capfd.readouterr().err  # cached
    best = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["model"]
    torch.testing.assert_close(best["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"], atol=1e-6,
                               rtol=0)  # lr 1e-12: one step leaves the loaded weights


def test_pretrain_trains_at_one_thread_whatever_the_callers_count(tmp_path, monkeypatch):
    """The cached file every fine-tuning inherits must not depend on the thread count: at 2 threads the
    demo's pre-training came out otherwise and the fine-tuning from it stalled (README). pretrain.py trains
    at one thread and gives the caller its count back."""
    from dual_cross_attention import pretrain as pretrain_lib

    seen, real, before = [], pretrain_lib.pretrain, torch.get_num_threads()
    monkeypatch.setattr(pretrain_lib, "pretrain", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    torch.set_num_threads(2)
    try:
        path = pretrain_lib.main(["--cache", str(tmp_path), "--embed-dim", "32", "--depth", "1", "--heads", "2",
                                  "--image-size", "16", "--classes", "4", "--train-images", "16", "--val-images",
                                  "8", "--epochs", "1", "--batch-size", "16"])
        assert seen == [1] and torch.get_num_threads() == 2 and path.is_file()
    finally:
        torch.set_num_threads(before)


def _deit_tiny_timm_file(path: Path, depth: int = 12) -> dict:
    """A timm-layout DeiT-Tiny state_dict with random weights, built from our own model through the
    timm key map."""
    torch.manual_seed(0)
    cfg = DCALConfig(preset="deit-tiny", image_size=224, num_classes=1000, depth=depth, glca=False, pwca=False)
    state = to_timm_state_dict(DCAL(cfg))
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save(state, path)
    return state


def test_vit_sizes_of_a_deit_tiny_state_dict_agree_with_timm():
    state = to_timm_state_dict(DCAL(DCALConfig(preset="deit-tiny", image_size=224, num_classes=1000, glca=False,
                                               pwca=False)))
    sizes = dict(embed_dim=192, depth=12, patch_size=16, image_size=224, num_heads=3, mlp_ratio=4.0)
    assert vit_sizes(state) == sizes
    timm = pytest.importorskip("timm", reason="timm is optional: the cross-check against timm's own DeiT-Tiny")
    theirs = timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict()
    assert vit_sizes(theirs) == sizes
    assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in state.items()}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_deit_tiny_file_loads_with_no_size_flags(suffix, tmp_path, capsys):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors", reason="safetensors is optional (requirements-optional.txt)")
    path = tmp_path / f"deit_tiny{suffix}"
    state = _deit_tiny_timm_file(path)
    results = main(["--pretrained", str(path), "--synthetic-train", "4", "--synthetic-val", "2", "--synthetic-test",
                    "2", "--synthetic-classes", "2", "--batch-size", "2", "--max-iters", "1", "--num-overlays", "0",
                    "--no-pwca", "--lr", "1e-12", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "'source': 'timm', 'loaded': 150" in out
    saved = torch.load(Path(results["run_dir"]) / "best.pt", weights_only=True)
    model = saved["config"]["model"]
    assert (model["embed_dim"], model["depth"], model["num_heads"], model["patch_size"], model["image_size"]) == (
        192, 12, 3, 16, 224)
    torch.testing.assert_close(saved["model"]["pos_embed"], state["pos_embed"], atol=1e-6, rtol=0)


def test_pretrained_file_that_contradicts_the_size_flags_is_one_line(tmp_path):
    path = tmp_path / "deit_tiny.pth"
    _deit_tiny_timm_file(path, depth=2)
    with pytest.raises(ConfigMismatchError, match=r"deit_tiny.pth holds a ViT of width 192, depth 2, patch 16; "
                                                  r"--depth 4 \(file: 2\)"):
        main(["--pretrained", str(path), "--depth", "4", "--out", str(tmp_path / "run")])
    done = subprocess.run([sys.executable, "dual_cross_attention/train.py", "--pretrained", str(path), "--model",
                           "tiny", "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model tiny: --embed-dim 64 (file: 192), --depth 4 (file: 2)" in lines[0], lines


def test_rollout_colours_span_each_image_and_the_image_shows_through():
    """The CLS row of a rollout spans a narrow band (0.0140-0.0152): per image it is stretched to
    [0, 1]; the blend keeps the image where the rollout is low and under every colour."""
    scores = torch.tensor([[0.0140, 0.0146, 0.0152], [0.5, 0.2, 0.3]])
    heat = normalise_per_image(scores)
    torch.testing.assert_close(heat, torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 1 / 3]]))
    picture, tint = torch.rand(3, 2, 2), torch.rand(3, 2, 2)
    cells = torch.tensor([[0.0, 1.0], [0.5, 0.0]])
    shown = blend(picture, tint, cells)
    torch.testing.assert_close(shown[:, 0, 0], picture[:, 0, 0])  # no heat: the image as it is
    torch.testing.assert_close(shown[:, 0, 1], 0.3 * picture[:, 0, 1] + 0.7 * tint[:, 0, 1])  # image still 30%


def test_rollout_step_of_one_layer_is_that_layers_map():
    q, k = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    attn = (q @ k.transpose(-2, -1) * 0.5).softmax(-1).mean(1)
    torch.testing.assert_close(rollout_step(None, q, k), 0.5 * attn + 0.5 * torch.eye(5))


def test_synthetic_seed_keeps_one_task_across_run_seeds():
    """The ablation fixes the task (--synthetic-seed 0) so that run seeds differ in training only: the
    seed picks which textures are the classes, and with it how hard the task is."""
    from dual_cross_attention.data import build_datasets

    cfg = run_config("--synthetic-seed", "0", "--synthetic-train", "8", "--synthetic-val", "4", "--synthetic-test",
                     "4").data
    one, _ = build_datasets(cfg, 32, seed=1)
    other, _ = build_datasets(cfg, 32, seed=2)
    assert torch.equal(one["test"].images, other["test"].images) and torch.equal(one["train"].labels,
                                                                                   other["train"].labels)
    default = run_config("--synthetic-train", "8", "--synthetic-val", "4", "--synthetic-test", "4").data
    assert not torch.equal(build_datasets(default, 32, seed=1)[0]["test"].images, one["test"].images)


def test_pretrained_file_that_is_no_vit_state_dict_is_a_data_error_naming_it(tmp_path):
    from common.runtime import DataError

    garbage, other = tmp_path / "garbage.pth", tmp_path / "other.pth"
    garbage.write_text("not a checkpoint")
    torch.save({"x": torch.ones(3)}, other)
    with pytest.raises(DataError, match=r"garbage.pth: cannot read it as a state_dict \(UnpicklingError"):
        main(["--pretrained", str(garbage), "--out", str(tmp_path / "run")])
    with pytest.raises(DataError, match=r"other.pth: not a ViT state_dict whose sizes can be read"):
        main(["--pretrained", str(other), "--out", str(tmp_path / "run")])


def test_resume_of_a_run_from_a_pretrained_file_needs_the_file_no_more(tmp_path):
    """The sizes read from --pretrained FILE are the run's: --resume takes them from the checkpoint
    (the weights are in it), so a moved or deleted weights file does not stop a resume."""
    path = tmp_path / "vit.pth"
    cfg = DCALConfig(embed_dim=64, depth=1, num_heads=1, patch_size=8, image_size=16, num_classes=3, glca=False,
                     pwca=False)
    torch.save(to_timm_state_dict(DCAL(cfg)), path)
    flags = ["--synthetic-train", "16", "--synthetic-val", "4", "--synthetic-test", "4", "--synthetic-classes", "2",
             "--batch-size", "8", "--epochs", "2", "--num-overlays", "0", "--no-pwca"]
    first = main([*flags, "--pretrained", str(path), "--max-iters", "2", "--out", str(tmp_path / "run")])
    path.unlink()
    again = main(["--resume", str(Path(first["run_dir"]) / "last.pt")])
    assert again["step"] == first["step"]
