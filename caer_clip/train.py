"""Train CLIP-CAER. `python caer_clip/train.py` trains on built-in synthetic clips (tiny random
CLIP, CPU or GPU); `--data-root DIR --dataset raer|daisee|caer` trains on a real dataset with
CLIP-CAER's own recipe (`--recipe rapt-clip`: RAPT-CLIP's) for every setting the command line leaves
unset, each value printed with the file of the original it comes from. Runs under
`torchrun --nproc_per_node N caer_clip/train.py` too; `--resume <out>/last.pt` continues a run exactly.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

import argparse
import copy
import json
import textwrap
import time
import warnings
from dataclasses import asdict, dataclass

import torch

from caer_clip.data import CLASS_DESCRIPTORS, DataConfig, build_datasets, build_seeded_model, dataset_name
from caer_clip.losses import LossConfig, total_loss
from caer_clip.model import ModelConfig, param_groups
from caer_clip.plots import save_confusion
from common import cli, runtime
from common.checkpoint import checkpoint_bytes, load_model_state, load_run_checkpoint
from common.cli import above, arg, at_least, between
from common.lifecycle import Run, RunSettings, State
from common.metrics import accuracy, confusion_matrix, precision_recall_f1
from common.mixup import mixup
from common.schedulers import scaled_lr

PROJECT = "caer_clip"
# A resumed run must keep these: the architecture, and the frozen parts (they set the optimizer's groups).
RESUME_KEYS = ["clip", "num_classes", "num_frames", "n_ctx", "class_specific_ctx", "temporal", "temporal_layers",
               "temporal_heads", "use_context", "moco_queue", "adapter_reduction", "freeze_image_encoder"]
COMPONENTS = ["cls", "mi", "dc", "moco"]  # the weighted loss terms, logged one by one
LOG_COLUMNS = ["step", "epoch", "lr", "loss", *[f"loss_{c}" for c in COMPONENTS], *[f"share_{c}" for c in COMPONENTS],
               "train_acc", "val_uar", "val_war", "box_fallbacks"]
# The originals' recipes: the commit each was read at, what it does not reproduce, and every setting as
# [value, the original's file and line]. The dataclass defaults are the synthetic demo's recipe.
RECIPES = json.loads(runtime.read_text(Path(__file__).with_name("recipes.json")))
MODEL_CHECKS = {"num_frames": at_least(1), "n_ctx": at_least(1), "temporal": ["cls", "attn"],
                "temporal_layers": at_least(1), "temporal_heads": at_least(1), "dropout": between(0.0, 1.0),
                "adapter_ratio": at_least(0.0, float), "adapter_reduction": at_least(1), "logit_scale": above(0.0),
                "moco_queue": at_least(0), "moco_momentum": between(0.0, 1.0)}


@dataclass
class TrainConfig:
    recipe: str = arg("auto", "an original's settings for every flag not given, printed with sources: 'clip-caer' "
                      "(zgsfer/CLIP-CAER), 'rapt-clip' (mngoc3110/RAPT-CLIP), 'none' (the synthetic demo's); 'auto': "
                      "clip-caer with --data-root, else none",
                      choices=["auto", "clip-caer", "rapt-clip", "none"])
    batch_size: int = arg(16, "clips per step and per process", check=at_least(1))
    epochs: int = arg(4, "training epochs", check=at_least(1))
    max_iters: int | None = arg(None, "stop after this many optimizer steps (default: all epochs)", check=at_least(1))
    val_interval: int | None = arg(None, "optimizer steps between extra validations (default: none)", check=at_least(1))
    lr: float = arg(1e-2, "lr of the temporal models", check=above(0.0))
    lr_image: float = arg(2e-3, "lr of the CLIP image encoder (unused when it is frozen)", check=above(0.0))
    lr_prompt: float = arg(2e-3, "lr of the prompt learner's context vectors", check=above(0.0))
    lr_proj: float = arg(1e-2, "lr of the fusion projection", check=above(0.0))
    lr_adapter: float = arg(1e-2, "lr of the face adapter", check=above(0.0))
    optimizer: str = arg("sgd", "optimiser of every group", choices=["sgd", "adamw"])
    momentum: float = arg(0.9, "SGD momentum", check=between(0.0, 1.0))
    weight_decay: float = arg(1e-4, "weight decay, on weight matrices only", check=at_least(0.0, float))
    milestones: list[int] = arg([3], "epochs at which every lr is multiplied by --lr-gamma", check=at_least(0))
    lr_gamma: float = arg(0.1, "multi-step lr factor", check=above(0.0))
    warmup_steps: int = arg(10, "linear lr warm-up in optimizer steps", check=at_least(0))
    grad_clip: float = arg(10.0, "max grad norm (0: off; 1 starved the tiny CLIP prompts)", check=at_least(0.0, float))
    lr_rule: str = arg("none", "scale every lr by effective batch / --lr-ref-batch", choices=["none", "linear", "sqrt"])
    lr_ref_batch: int = arg(8, "batch the lrs are quoted for", check=at_least(1))


@dataclass
class Config:
    model: ModelConfig
    loss: LossConfig
    data: DataConfig
    train: TrainConfig
    run: RunSettings


def build_parser() -> argparse.ArgumentParser:
    recipes = "\n".join(textwrap.fill(f"{name}: " + ", ".join(f"{k}={v}" for k, (v, _) in recipe["settings"].items()),
                                       96, initial_indent="  ", subsequent_indent="    ")
                         for name, recipe in RECIPES.items())
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"recipes (--recipe; for every setting not given):\n{recipes}")
    cli.add_args(p, DataConfig, "data")
    cli.add_args(p, ModelConfig, "model", checks=MODEL_CHECKS, exclude=["num_classes"],
                 flags={"use_context": "--context"})
    cli.add_args(p, LossConfig, "loss")
    cli.add_args(p, TrainConfig, "optimisation")
    cli.run_args(p, default_out="runs/caer_clip", ckpt_interval=100, log_interval=10)
    return p


def apply_recipe(args: argparse.Namespace, given: set[str]) -> dict:
    """--recipe's settings for those not in `given` (the flags given); returns {setting: (value, source)}."""
    name = ("clip-caer" if args.data_root else "none") if args.recipe == "auto" else args.recipe
    settings = RECIPES[name]["settings"] if name in RECIPES else {}
    recipe = {k: copy.deepcopy(v) for k, v in settings.items() if k not in given}
    if recipe.get("logit_scale", (0.0,))[0] > ModelConfig.logit_scale and recipe.get("clip", (args.clip,))[0] == "tiny":
        # A random tiny CLIP at scale 100 puts every clip in one class (val/test UAR 0.0 after an epoch).
        recipe["logit_scale"] = (ModelConfig.logit_scale, "kept for --clip tiny: scale 100 collapses a random CLIP")
    vars(args).update({k: v for k, (v, _) in recipe.items()})
    args.recipe = name
    return recipe


def config_from(args: argparse.Namespace) -> Config:
    # FIX(CAER-MIXUP-PLUMB): each section from all its flags by name; --mixup-alpha etc. were dropped.
    loss = cli.from_args(LossConfig, args)
    cfg = Config(cli.from_args(ModelConfig, args), loss, cli.from_args(DataConfig, args),
                 cli.from_args(TrainConfig, args), RunSettings.from_args(args))
    cfg.model.num_classes = len(CLASS_DESCRIPTORS[dataset_name(cfg.data)])
    return cfg


def build_model_and_data(cfg: Config, device: torch.device):
    """The model (data.build_seeded_model) on `device` and the {train, val, test} datasets."""
    if cfg.data.data_root is not None and not Path(cfg.data.data_root).is_dir():
        # A wrong path must fail now, not after CLIP's weights have been read or fetched.
        raise runtime.DataError(f"--data-root {cfg.data.data_root} is not a folder")
    model = build_seeded_model(cfg.model, cfg.data, cfg.run.seed).to(device)
    splits = build_datasets(cfg.data, cfg.model.num_frames, model.clip.cfg.image_resolution, cfg.run.seed)
    return model, dict(zip(("train", "val", "test"), splits))


def eval_loader(dataset, cfg: Config, rank: int = 0, world_size: int = 1):
    """Every clip once; each rank scores its shard and `evaluate` gathers them."""
    sampler = runtime.EpochSampler(len(dataset), cfg.train.batch_size, shuffle=False, drop_last=False,
                                   seed=cfg.run.seed, rank=rank, world_size=world_size)
    return runtime.make_loader(dataset, sampler, cfg.run.workers, cfg.run.seed)


def base_lrs(cfg: TrainConfig, world_size: int) -> dict[str, float]:
    """The lr of each part of the model (the originals' recipes differ), after the --lr-rule."""
    # FIX(CAER-LR-RULE): no hidden batch/20 factor on every lr; the rule is explicit (--lr-rule).
    # was: scale = cfg.batch_size / 20
    scale = scaled_lr(1.0, cfg.batch_size * world_size, cfg.lr_ref_batch, cfg.lr_rule)
    return {"temporal": cfg.lr * scale, "projection": cfg.lr_proj * scale, "adapter": cfg.lr_adapter * scale,
            "prompt": cfg.lr_prompt * scale, "image": cfg.lr_image * scale}


def multistep_lr(step: int, base_lr: float, milestones: list[int], gamma: float = 0.1, warmup_steps: int = 0) -> float:
    """base_lr * gamma^(milestones <= step) after a linear warm-up: the originals' MultiStepLR (CLIP-CAER
    main.py:274 at the train.sh:23 milestones) as a pure function of the step."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr * gamma ** sum(step >= m for m in milestones)


def at_max_iters(state: State, cfg: Config) -> bool:
    return cfg.train.max_iters is not None and state.step >= cfg.train.max_iters


def running_sums() -> dict:
    """Sums since the last log row of a kind: steps, the loss, its weighted terms, correct predictions."""
    return {"steps": 0, "loss": torch.zeros(()), **{c: torch.zeros(()) for c in COMPONENTS}, "correct": torch.zeros(())}


def loss_shares(weighted: dict[str, float], balance: dict | None = None, main: str = "cls",
                patience: int = 20) -> dict[str, float]:
    """Each weighted loss term's share of their total. With `balance` ({"streak": {}, "warned": []}, kept in
    the checkpoint), a warning, once per term, when an auxiliary term outweighs `main` for `patience` calls
    in a row (CAER-LOSS-WEIGHTS in FIXES.md: a term weighted 5 swamped cross-entropy unseen)."""
    total = sum(map(abs, weighted.values())) or 1.0
    for name, value in weighted.items() if balance is not None else ():
        if name == main:
            continue
        streak = balance["streak"][name] = balance["streak"].get(name, 0) + 1 if abs(value) > abs(weighted[main]) else 0
        if streak >= patience and name not in balance["warned"]:
            balance["warned"] = sorted({*balance["warned"], name})
            warnings.warn(f"loss balance: '{name}' ({abs(value):.4g}) has exceeded the main loss '{main}' "
                          f"({abs(weighted[main]):.4g}) for {streak} consecutive logs; its weight may be swamping "
                          "the main objective", stacklevel=2)
    return {f"share_{name}": abs(value) / total for name, value in weighted.items()}


def train_means(state: State, kind: str, lr: float, cfg: Config) -> dict:
    """A log row of the means since the last row of this kind ("window" or "epoch"); its sums start again."""
    sums, state.meters[kind] = state.meters[kind], running_sums()
    n = max(1, sums["steps"])
    weighted = {c: float(sums[c]) / n for c in COMPONENTS}
    return {"step": state.step, "epoch": state.epoch, "lr": lr, "loss": float(sums["loss"]) / n,
            **{f"loss_{c}": v for c, v in weighted.items()},
            **loss_shares(weighted, state.meters["balance"] if kind == "window" else None),
            "train_acc": float(sums["correct"]) / max(1, n * cfg.train.batch_size)}


def loss_summary(row: dict) -> str:
    """A log row's training loss, its weighted components and accuracy, for the printed lines."""
    parts = " ".join(f"{c} {row[f'loss_{c}']:.4f}" for c in COMPONENTS)
    return f"train loss {row['loss']:.4f} ({parts}) acc {row['train_acc']:.3f}"


def uar(y_true, y_pred, num_classes: int, zero_division: float = 0.0) -> float:
    """Unweighted average recall, the CAER / RAER / DAiSEE score (WAR is accuracy): mean recall over ALL
    `num_classes` classes, one absent from y_true scoring `zero_division` (nan leaves it out, as scikit-learn)."""
    return precision_recall_f1(y_true, y_pred, num_classes, "macro", zero_division)[1]


@torch.no_grad()
def evaluate(model, loader, cfg: Config) -> dict:
    """UAR, WAR, confusion matrix and box fallbacks of every clip, gathered from all ranks. `model` is the
    bare module (unwrap a DDP one): the ranks' shards may differ by one batch."""
    model.eval()
    device = next(model.parameters()).device
    dtype = runtime.autocast_dtype(device, cfg.run.amp)
    preds, labels, fallbacks = [], [], torch.zeros((), dtype=torch.long, device=device)
    for face, context, y, fb in loader:
        with runtime.autocast(device, dtype):
            out = model(face.to(device, non_blocking=True), context.to(device, non_blocking=True))
        preds.append(out["logits"].argmax(dim=-1))
        labels.append(y.to(device))
        fallbacks += fb.to(device).sum()
    preds, labels = (runtime.gather_cat(torch.cat(t)).cpu().numpy() for t in (preds, labels))
    # FIX(CAER-UAR-ALL-CLASSES): mean recall over all classes, not only those present in the split.
    uar_value = uar(labels, preds, cfg.model.num_classes)
    return {"uar": uar_value, "war": accuracy(labels, preds),
            "fallbacks": int(runtime.gather_cat(fallbacks.view(1)).sum()),
            "confusion": confusion_matrix(labels, preds, cfg.model.num_classes)}


def scores(metrics: dict) -> dict:
    """The flat floats a run reports for a split (results.json, evaluate_checkpoint)."""
    return {"uar": float(metrics["uar"]), "war": float(metrics["war"])}


def evaluate_checkpoint(path, split: str = "test", device: str = "cpu") -> dict:
    """main()'s results[split] for these weights, from one process, rebuilt from the checkpoint's settings."""
    checkpoint = load_run_checkpoint(path, PROJECT)
    cfg = config_from(argparse.Namespace(**checkpoint["args"]))
    model, splits = build_model_and_data(cfg, torch.device(device))
    load_model_state(model, checkpoint["model"], path)
    return scores(evaluate(model, eval_loader(splits[split], cfg), cfg))


def validate(state: State, loader, cfg: Config, run: Run, row: dict) -> dict:
    """Log `row` (the step, or the epoch's training means) with the validation scores, best.pt when they
    beat every earlier one; every rank calls it (gathered scores, a shared save). Returns the row + "improved"."""
    metrics = evaluate(runtime.unwrap(state.model), loader, cfg)
    row = {**row, "val_uar": metrics["uar"], "val_war": metrics["war"],
           "box_fallbacks": row.get("box_fallbacks", 0) + metrics["fallbacks"]}
    run.log(row)
    state.meters["val"] = scores(metrics)
    improved = run.improved(metrics["uar"], state.step, row["epoch"])
    if improved:
        run.save("best.pt", state)
    return {**row, "improved": improved}


def train_one_epoch(state: State, loader, val_loader, cfg: Config, run: Run) -> bool:
    """From the state's position to the end of its epoch, or to --max-iters; True when a stop signal came."""
    tc, model, meters, epoch = cfg.train, runtime.unwrap(state.model), state.meters, state.epoch
    device, steps_per_epoch = next(model.parameters()).device, loader.sampler.batches_per_epoch()
    dtype = runtime.autocast_dtype(device, cfg.run.amp)
    if at_max_iters(state, cfg):  # a resumed run that had reached its cap
        return False
    state.model.train()
    for face, context, labels, fallbacks in loader:
        for group in state.optimizer.param_groups:
            group["lr"] = multistep_lr(state.step, group["base_lr"], [m * steps_per_epoch for m in tc.milestones],
                                       tc.lr_gamma, tc.warmup_steps)
        face, context, labels = (t.to(device, non_blocking=True) for t in (face, context, labels))
        # Mixup randomness from (seed, epoch, batch): identical after a resume.
        mix_gen = runtime.sample_generator(cfg.run.seed, epoch, 10**9 + state.batch_in_epoch)
        # FIX(CAER-MIXUP-TARGET): y_b = y[perm], not the permutation index; one perm for both streams.
        (face, context), y_a, y_b, lam = mixup([face, context], labels, cfg.loss.mixup_alpha, generator=mix_gen)
        with runtime.autocast(device, dtype):
            out = state.model(face, context)
        queue = (model.queue, model.queue_labels) if cfg.model.moco_queue > 0 else None
        epoch_progress = epoch + state.batch_in_epoch / steps_per_epoch
        loss, _, weighted = total_loss(out, y_a, y_b, lam, epoch, epoch_progress, cfg.loss, queue, state.step)
        state.scaler.scale(loss).backward()
        state.scaler.unscale_(state.optimizer)
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        if queue is not None and "key" in out:  # keys exist in training mode only
            keys, key_labels = out["key"].detach().float(), y_a if lam >= 0.5 else y_b
            model.enqueue(runtime.gather_cat(keys), runtime.gather_cat(key_labels))
        correct = (out["logits"].argmax(-1) == labels).sum()
        for sums in (meters["window"], meters["epoch"]):  # on the device: no host sync before a log row
            sums["steps"] += 1
            for name, value in (("loss", loss), *weighted.items(), ("correct", correct)):
                sums[name] = sums[name] + value.detach().float()
        meters["box_fallbacks"] += int(fallbacks.sum())
        state.step += 1
        state.batch_in_epoch += 1
        lr = state.optimizer.param_groups[0]["lr"]
        if state.step % cfg.run.log_interval == 0:
            row = train_means(state, "window", lr, cfg)
            run.log(row)
            run.print(f"epoch {epoch} step {state.step}: {loss_summary(row)} | lr {lr:.2e}")
        if tc.val_interval and state.step % tc.val_interval == 0 and state.batch_in_epoch < steps_per_epoch:
            validate(state, val_loader, cfg, run, {"step": state.step, "epoch": epoch, "lr": lr})
            state.model.train()
        if cfg.run.ckpt_interval and state.step % cfg.run.ckpt_interval == 0:
            run.save("last.pt", state)
        if run.should_stop():
            return True
        if at_max_iters(state, cfg):
            return False
    return False


def describe(cfg: Config, recipe: dict, splits: dict, model, optimizer, steps_per_epoch, world_size, device) -> str:
    """The set-up, printed at start: recipe, data, model, per-group lrs (the lr rule's result)."""
    tc, lines = cfg.train, []
    if recipe:  # every value the recipe set, with the file and line of the original
        values = "; ".join(f"{k} {f'{v:.4g}' if isinstance(v, float) else v} ({src})" for k, (v, src) in recipe.items())
        lines = [textwrap.fill(text, 110, subsequent_indent="  ") for text in (
            f"recipe {tc.recipe} ({RECIPES[tc.recipe]['origin']}) for the settings not given: {values}",
            f"not reproduced: {'; '.join(RECIPES[tc.recipe]['not reproduced'])}")]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return "\n".join(lines + [
        f"caer_clip: {dataset_name(cfg.data)} data, "
        f"{'/'.join(str(len(d)) for d in splits.values())} train/val/test clips, CLIP '{cfg.model.clip}', "
        f"T={cfg.model.num_frames}, context {'on' if cfg.model.use_context else 'off'}, "
        f"{tc.epochs} epochs x {steps_per_epoch} steps, batch {tc.batch_size} x {world_size}, device {device}",
        f"lr rule '{tc.lr_rule}' (reference batch {tc.lr_ref_batch}); per-group lrs: "
        + ", ".join(sorted({f"{g['name']} {g['base_lr']:.2e}" for g in optimizer.param_groups})),
        f"parameters: {sum(p.numel() for p in model.parameters()):,} total, {trainable:,} trainable"]
        + [line for line in [splits["train"].box_summary] if line])  # "face boxes: N of M clips" on real data


def main(argv: list[str] | None = None) -> dict:
    start_time = time.time()
    parser = build_parser()
    args, resumed = cli.parse_with_resume(parser, argv, PROJECT)
    # A resumed run has its recipe already in the checkpoint's settings.
    recipe = {} if resumed else apply_recipe(args, cli.explicit_dests(parser, argv))
    cfg = config_from(args)
    dist_info = runtime.setup_distributed(cfg.run.device)
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    config = asdict(cfg)
    config["run"]["world_size"] = world_size
    if resumed:
        cli.check_resume_config(resumed, config, RESUME_KEYS, args.resume)
    run = Run(PROJECT, args, config, "runs/caer_clip", resumed, best_metric="val_uar", best_mode="max")
    with run:
        model, splits = build_model_and_data(cfg, device)
        for name, dataset in splits.items():  # a split too small for one batch: an error naming it
            need = cfg.train.batch_size * world_size if name == "train" else world_size  # training drops partial
            if len(dataset) < need:
                raise runtime.DataError(f"the {name} split holds {len(dataset)} clips, fewer than {need} (batch "
                                f"{cfg.train.batch_size} x {world_size} processes for training, one clip per process "
                                "for evaluation)")
        sampler = splits["train"].sampler(cfg.train.batch_size, rank, world_size)
        groups = param_groups(model, base_lrs(cfg.train, world_size), cfg.train.weight_decay)
        fused = device.type == "cuda"  # one kernel for all parameters; plain on CPU (see the README's bench)
        optimizer = (torch.optim.SGD(groups, lr=0.0, momentum=cfg.train.momentum, fused=fused)
                     if cfg.train.optimizer == "sgd" else torch.optim.AdamW(groups, lr=0.0, fused=fused))
        scaler = runtime.make_grad_scaler(device, runtime.autocast_dtype(device, cfg.run.amp))
        # Sums since the last training row and since the epoch began, this epoch's box fallbacks, the last
        # validation scores, loss_shares' counters.
        meters = {"window": running_sums(), "epoch": running_sums(), "box_fallbacks": 0, "val": {},
                  "balance": {"streak": {}, "warned": []}}
        state = State(runtime.compile_model(runtime.wrap_ddp(model, dist_info), cfg.run.compile), optimizer, scaler,
                      meters=meters)
        run.restore(state)  # a checkpoint holds the meters too: a resumed run writes the rows it would have
        run.open(LOG_COLUMNS, checkpoint_bytes(model, optimizer))
        run.print(describe(cfg, recipe, splits, model, optimizer, sampler.batches_per_epoch(), world_size, device))
        val_loader, test_loader = (eval_loader(splits[s], cfg, rank, world_size) for s in ("val", "test"))
        run.restore_rng()  # after everything above that draws random numbers
        for epoch in range(state.epoch, cfg.train.epochs):
            sampler.set_epoch(epoch, state.batch_in_epoch)
            splits["train"].set_epoch(epoch)
            loader = runtime.make_loader(splits["train"], sampler, cfg.run.workers, cfg.run.seed, epoch)
            if train_one_epoch(state, loader, val_loader, cfg, run):
                run.save("last.pt", state)
                run.exit_stopped(state.step)
            if state.batch_in_epoch < sampler.batches_per_epoch():  # --max-iters reached mid-epoch
                run.save("last.pt", state)
                break  # no validation row (a resumed run with a higher cap writes it)
            # A checkpoint from the epoch's last step resumes here: validation, then the epoch row.
            row = {**train_means(state, "epoch", optimizer.param_groups[0]["lr"], cfg),
                   "box_fallbacks": state.meters["box_fallbacks"]}
            state.epoch, state.batch_in_epoch, state.meters["box_fallbacks"] = epoch + 1, 0, 0
            row = validate(state, val_loader, cfg, run, row)
            run.print(f"epoch {epoch} (mean): {loss_summary(row)} | lr {row['lr']:.2e}\n"
                      f"epoch {epoch} step {state.step}: val UAR {row['val_uar']:.4f} WAR {row['val_war']:.4f}"
                      f"{' (best)' if row['improved'] else ''} | box fallbacks {row['box_fallbacks']}")
            run.save("last.pt", state)
            run.save_periodic(state)
            if at_max_iters(state, cfg):
                break

        # Final test: best-on-validation weights (this run's best.pt, on every rank), scored once.
        run.load_best(model)
        test, names = evaluate(model, test_loader, cfg), list(CLASS_DESCRIPTORS[dataset_name(cfg.data)])
        if runtime.is_main():
            save_confusion(test["confusion"], names, run.dir / "confusion_test",
                           f"caer_clip, test split: best.pt (epoch {run.best['epoch']}, step {run.best['step']}), "
                           f"UAR {test['uar']:.3f}, WAR {test['war']:.3f}")
        best = "none" if run.best["value"] is None else f"{run.best['value']:.4f}"
        run.print(textwrap.fill(f"test confusion matrix (rows true, columns predicted; {', '.join(names)}):", 100)
                  + f"\n{test['confusion']}\nbest val UAR {best} (epoch {run.best['epoch']}) | test UAR "
                  f"{test['uar']:.4f} WAR {test['war']:.4f} | {time.time() - start_time:.1f} s")
        runtime.assert_replicas_in_sync(model)  # under torchrun: every rank must end with the same weights
        results = {"run_dir": str(run.dir), "step": state.step, "best": dict(run.best), "val": state.meters["val"],
                   "test": scores(test)}
        run.finish(results)
    del state  # its DDP wrapper holds the process group: release it first
    runtime.cleanup_distributed()
    return results


if __name__ == "__main__":
    cli.run_cli(main)
