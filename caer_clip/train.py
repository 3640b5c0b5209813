"""Train CLIP-CAER. `python caer_clip/train.py` trains on built-in synthetic clips (tiny random
CLIP, CPU or GPU); `--data-root DIR --dataset raer|daisee|caer` trains on a real dataset with the
official recipe (ViT-B/16 CLIP, 16 frames, 20 epochs, batch 8, SGD, per-group lrs, steps at
epochs 10 and 15) for every setting the command line leaves unset. Runs under
`torchrun --nproc_per_node N caer_clip/train.py` too; `--resume <out>/last.pt` continues a run exactly.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make `common` and the project importable when run as a script

import argparse
import copy
import textwrap
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from caer_clip.clip import load_clip
from caer_clip.data import CLASS_DESCRIPTORS, ClassBalancedSampler, DataConfig, build_datasets
from caer_clip.losses import LossConfig, total_loss
from caer_clip.model import ModelConfig, build_model
from common.cli import above, add_args, arg, at_least, between, explicit_dests, from_args
from common.lifecycle import (
    Run,
    check_resume_config,
    checkpoint_bytes,
    is_main,
    load_model_state,
    load_run_checkpoint,
    parse_with_resume,
    run_args,
    run_cli,
)
from common.metrics import confusion_matrix, uar, war
from common.mixup import mixup
from common.tools.predict import pyplot_or_none
from common.runtime import (
    DataError,
    EpochSampler,
    LossBalanceMonitor,
    assert_replicas_in_sync,
    autocast,
    autocast_dtype,
    cleanup_distributed,
    gather_cat,
    make_grad_scaler,
    sample_generator,
    seed_everything,
    seed_worker,
    setup_distributed,
    unwrap,
    wrap_ddp,
)
from common.schedulers import multistep_lr, scaled_lr

PROJECT = "caer_clip"


@dataclass
class TrainConfig:
    batch_size: int = arg(16, "clips per step and per process", check=at_least(1))
    epochs: int = arg(4, "training epochs", check=at_least(1))
    max_iters: int | None = arg(None, "stop after this many optimizer steps (default: all epochs)", check=at_least(1))
    val_interval: int | None = arg(None, "optimizer steps between validations besides every epoch end "
                                   "(default: epoch ends only)", check=at_least(1))
    lr: float = arg(1e-2, "lr of the temporal models", check=above(0.0))
    lr_image: float = arg(2e-3, "lr of the CLIP image encoder (unused when it is frozen)", check=above(0.0))
    lr_prompt: float = arg(2e-3, "lr of the prompt learner's context vectors", check=above(0.0))
    lr_proj: float = arg(1e-2, "lr of the fusion projection", check=above(0.0))
    lr_adapter: float = arg(1e-2, "lr of the face adapter", check=above(0.0))
    momentum: float = arg(0.9, "SGD momentum", check=between(0.0, 1.0))
    weight_decay: float = arg(1e-4, "SGD weight decay, on weight matrices only", check=at_least(0.0, float))
    milestones: list[int] = arg([3], "epochs at which every lr is multiplied by --lr-gamma", check=at_least(0))
    lr_gamma: float = arg(0.1, "multi-step lr factor", check=above(0.0))
    warmup_steps: int = arg(10, "linear lr warm-up in optimizer steps", check=at_least(0))
    grad_clip: float = arg(10.0, "max global gradient norm (0: off); 1.0 starved the prompts on the tiny CLIP",
                           check=at_least(0.0, float))
    lr_rule: str = arg("none", "scale every lr by the effective batch / --lr-ref-batch (lrs printed at start)",
                       choices=["none", "linear", "sqrt"])
    lr_ref_batch: int = arg(8, "batch the lrs are quoted for", check=at_least(1))


@dataclass
class RunConfig:
    model: ModelConfig
    loss: LossConfig
    data: DataConfig
    train: TrainConfig


# The official CLIP-CAER recipe: with --data-root it replaces the default of every setting the
# command line leaves unset (printed at start). The dataclass defaults are the synthetic recipe.
OFFICIAL = dict(clip="openai:ViT-B-16", num_frames=16, epochs=20, batch_size=8, lr_image=1e-5, lr_prompt=1e-3,
                lr_proj=1e-5, lr_adapter=1e-3, milestones=[10, 15], warmup_steps=0, logit_scale=100.0)
# A resumed run must keep these: the architecture, and the frozen parts (they set the optimizer's groups).
RESUME_KEYS = ["clip", "num_classes", "num_frames", "n_ctx", "class_specific_ctx", "temporal", "temporal_layers",
               "temporal_heads", "use_context", "moco_queue", "adapter_reduction", "freeze_image_encoder"]
LOG_COLUMNS = ["step", "epoch", "lr", "loss", "loss_cls", "loss_mi", "loss_dc", "loss_moco", "share_cls",
               "share_mi", "share_dc", "share_moco", "train_acc", "val_uar", "val_war", "box_fallbacks"]
COMPONENTS = ["cls", "mi", "dc", "moco"]


def build_parser() -> argparse.ArgumentParser:
    recipe = textwrap.fill(", ".join(f"{k}={v}" for k, v in OFFICIAL.items()), 96, initial_indent="  ",
                           subsequent_indent="  ")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"official recipe (with --data-root, for every setting not given):\n{recipe}")
    for cls, title in ((DataConfig, "data"), (ModelConfig, "model"), (LossConfig, "loss"),
                       (TrainConfig, "optimisation")):
        add_args(p, cls, title)
    run_args(p, default_out="runs/caer_clip", ckpt_interval=100, log_interval=10)
    return p


def apply_official_recipe(args: argparse.Namespace, given: set[str]) -> dict:
    """Real data: the official recipe for every setting not in `given` (the flags on the command
    line). Returns what it set."""
    if args.data_root is None:
        return {}
    recipe = {k: copy.deepcopy(v) for k, v in OFFICIAL.items() if k not in given}
    vars(args).update(recipe)
    return recipe


def dataset_name(data: DataConfig) -> str:
    return "synthetic" if data.data_root is None else data.dataset


def configs_from(args: argparse.Namespace) -> RunConfig:
    # FIX(CAER-MIXUP-PLUMB): each section from all its flags by name; --mixup-alpha etc. were dropped.
    loss = from_args(LossConfig, args)
    data = from_args(DataConfig, args)
    model = from_args(ModelConfig, args)
    model.num_classes = len(CLASS_DESCRIPTORS[dataset_name(data)])
    return RunConfig(model, loss, data, from_args(TrainConfig, args))


# ----------------------------------------------------------------------------- data and model


def build_model_and_data(cfg: RunConfig, seed: int, device: torch.device):
    """The model (build_seeded_model) and the {train, val, test} datasets of a configuration."""
    if cfg.data.data_root is not None and not Path(cfg.data.data_root).is_dir():
        # A wrong path must fail now, not after CLIP's weights have been read or fetched.
        raise DataError(f"--data-root {cfg.data.data_root} is not a folder")
    model, clip = build_seeded_model(cfg.model, cfg.data, seed, device)
    splits = build_datasets(cfg.data, cfg.model.num_frames, clip.cfg.image_resolution, seed)
    return model, dict(zip(("train", "val", "test"), splits))


def build_seeded_model(model_cfg: ModelConfig, data_cfg: DataConfig, seed: int, device: torch.device):
    """(model, CLIP) seeded first: the tiny CLIP is random and its word tokenizer and the prompt
    learner's token buffers are not in a checkpoint, so training and predict.py rebuild them alike."""
    seed_everything(seed)
    descriptors = list(CLASS_DESCRIPTORS[dataset_name(data_cfg)].values())
    clip, tokenizer = load_clip(model_cfg.clip, [s for d in descriptors for s in d] + ["x", "a photo of ."])
    return build_model(model_cfg, clip, tokenizer, descriptors).to(device), clip


def check_split_sizes(splits: dict, batch_size: int, world_size: int) -> None:
    """A split too small for one batch is an error naming it, not an epoch of nothing."""
    for name, dataset in splits.items():
        need = batch_size * world_size if name == "train" else world_size  # training drops partial batches
        if len(dataset) < need:
            raise DataError(f"the {name} split holds {len(dataset)} clips, fewer than {need} (batch {batch_size} x "
                            f"{world_size} processes for training, one clip per process for evaluation)")


def train_sampler_for(dataset, cfg: RunConfig, seed: int, rank: int, world_size: int) -> EpochSampler:
    if cfg.data.balanced_sampler:
        return ClassBalancedSampler(dataset.labels, cfg.train.batch_size, cfg.data.balance_power, seed, rank,
                                    world_size)
    return EpochSampler(len(dataset), cfg.train.batch_size, shuffle=True, seed=seed, rank=rank, world_size=world_size)


def make_loader(dataset, sampler, batch_size: int, args: argparse.Namespace, device, epoch: int = 0):
    # An explicit generator keeps the DataLoader from drawing on the global RNG (exact resume).
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=args.workers, worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(args.seed * 1000 + epoch), pin_memory=device.type == "cuda")


def eval_loader(dataset, batch_size: int, args: argparse.Namespace, device, rank: int = 0, world_size: int = 1):
    """Every clip once; each rank scores its shard and `evaluate` gathers them."""
    sampler = EpochSampler(len(dataset), batch_size, shuffle=False, drop_last=False, seed=args.seed, rank=rank,
                           world_size=world_size)
    return make_loader(dataset, sampler, batch_size, args, device)


# ----------------------------------------------------------------------------- optimiser and lr


def param_groups(model, cfg: TrainConfig, world_size: int) -> list[dict]:
    """SGD groups per part with their own lr (official recipe); no decay on 1-d tensors, embeddings,
    tokens and prompt context vectors. Every trainable parameter lands in exactly one group."""
    head = model.head
    parts = {"temporal": [head.face_temporal, head.context_temporal], "projection": [head.projection],
             "adapter": [head.adapter], "prompt": [model.prompt_learner], "image": [model.clip.visual]}
    lrs = {"temporal": cfg.lr, "projection": cfg.lr_proj, "adapter": cfg.lr_adapter, "prompt": cfg.lr_prompt,
           "image": cfg.lr_image}
    # FIX(CAER-LR-RULE): no hidden batch/20 factor on every lr; the rule is explicit (--lr-rule).
    # was: scale = cfg.batch_size / 20
    scale = scaled_lr(1.0, cfg.batch_size * world_size, cfg.lr_ref_batch, cfg.lr_rule)
    groups, seen = [], set()
    for name, modules in parts.items():
        decay, no_decay = [], []
        for module in filter(None, modules):
            for pname, p in module.named_parameters():
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                plain = p.ndim < 2 or any(k in pname for k in ("pos", "cls", "token", "embedding", "ctx"))
                (no_decay if plain else decay).append(p)
        for params, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "weight_decay": wd, "name": name, "base_lr": lrs[name] * scale})
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise RuntimeError(f"trainable parameters in no optimiser group: {missing}")
    return groups


def lr_at(step: int, base_lr: float, cfg: TrainConfig, steps_per_epoch: int) -> float:
    return multistep_lr(step, base_lr, [m * steps_per_epoch for m in cfg.milestones], cfg.lr_gamma, cfg.warmup_steps)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, loader, device, dtype, num_classes: int) -> dict:
    model.eval()
    preds, labels, fallbacks = [], [], torch.zeros((), dtype=torch.long, device=device)
    for face, context, y, fb in loader:
        with autocast(device, dtype):
            out = model(face.to(device, non_blocking=True), context.to(device, non_blocking=True))
        preds.append(out["logits"].argmax(dim=-1))
        labels.append(y.to(device))
        fallbacks += fb.to(device).sum()
    preds, labels = gather_cat(torch.cat(preds)).cpu().numpy(), gather_cat(torch.cat(labels)).cpu().numpy()
    fallbacks = int(gather_cat(fallbacks.view(1)).sum())
    # FIX(CAER-UAR-ALL-CLASSES): mean recall over all classes, not only those present in the split.
    uar_value = uar(labels, preds, num_classes)
    return {"uar": uar_value, "war": war(labels, preds), "fallbacks": fallbacks,
            "confusion": confusion_matrix(labels, preds, num_classes)}


def scores(metrics: dict) -> dict:
    """The flat floats a run reports for a split (results.json, evaluate_checkpoint)."""
    return {"uar": float(metrics["uar"]), "war": float(metrics["war"])}


def evaluate_checkpoint(path, split: str = "test", device: str = "cpu") -> dict:
    """What main() reports as results[split] for these weights, from one process: data and model
    are rebuilt from the checkpoint's own settings."""
    checkpoint = load_run_checkpoint(path, PROJECT)
    args = argparse.Namespace(**checkpoint["args"])
    cfg, device = configs_from(args), torch.device(device)
    model, splits = build_model_and_data(cfg, args.seed, device)
    load_model_state(model, checkpoint["model"], path)
    loader = eval_loader(splits[split], cfg.train.batch_size, args, device)
    return scores(evaluate(model, loader, device, autocast_dtype(device, args.amp), cfg.model.num_classes))


def save_confusion(cm: np.ndarray, names: list[str], path: Path, title: str) -> None:
    """CSV always; PNG when matplotlib is installed: counts per cell in a colour that reads on the
    cell (white on dark, black on light), each row's recall beside it, a colour bar, `title` on top."""
    with open(path.with_suffix(".csv"), "w") as f:
        f.write("true\\pred," + ",".join(names) + "\n")
        for name, row in zip(names, cm):
            f.write(name + "," + ",".join(str(int(v)) for v in row) + "\n")
    plt = pyplot_or_none()
    if plt is None:
        print("confusion matrix PNG skipped: pip install matplotlib")
        return
    n = len(names)
    cell = 1.1  # inches per cell: 110 px at dpi 100
    fig, ax = plt.subplots(figsize=(cell * n + 4.2, cell * n + 2.6), dpi=100)
    shown = ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, int(cm.max())))
    totals = cm.sum(axis=1)
    ax.set_xticks(range(n), names, rotation=30, ha="right", fontsize=11)
    ax.set_yticks(range(n), [f"{name} ({int(t)})" for name, t in zip(names, totals)], fontsize=11)
    for i in range(n):
        for j in range(n):
            red, green, blue, _ = shown.cmap(shown.norm(cm[i, j]))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # perceived brightness of the cell
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=14,
                    fontweight="bold" if i == j else "normal", color="white" if dark else "black")
        recall = f"{cm[i, i] / totals[i]:.0%}" if totals[i] else "-"
        ax.text(n - 0.5 + 0.15, i, recall, ha="left", va="center", fontsize=11, color="dimgray")
    ax.text(n - 0.5 + 0.15, -0.75, "recall", ha="left", va="center", fontsize=11, color="dimgray")
    ax.set_xlabel("predicted class", fontsize=12)
    ax.set_ylabel("true class (clips)", fontsize=12)
    ax.set_title(textwrap.fill(title, 72), fontsize=12, pad=22)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.12)
    bar.set_label("clips")
    bar.ax.yaxis.get_major_locator().set_params(integer=True)  # counts: whole numbers only
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- training


@dataclass
class TrainState:
    """Where the run stands and the running sums behind the next log rows. All of it goes into
    every checkpoint, so a resumed run writes the rows an uninterrupted one would."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    # Sums of loss, the 4 weighted components and correct predictions since the last training row
    # ("window") and since the epoch began ("epoch"); counts: steps in each, box fallbacks this epoch.
    meters: dict = field(default_factory=lambda: {"window": torch.zeros(6), "epoch": torch.zeros(6)})
    counts: dict = field(default_factory=lambda: {"window": 0, "epoch": 0, "fallbacks": 0})
    val: dict = field(default_factory=dict)  # the last validation scores
    monitor: LossBalanceMonitor = field(default_factory=lambda: LossBalanceMonitor("cls"))

    def progress(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def extra(self) -> dict:
        return {"meters": {k: v.clone() for k, v in self.meters.items()}, "counts": dict(self.counts),
                "val": dict(self.val), "monitor": {"streak": dict(self.monitor.streak),
                                                   "warned": sorted(self.monitor.warned)}}

    @classmethod
    def restored(cls, progress: dict | None) -> "TrainState":
        """From run.restore(...): None for a fresh run."""
        if progress is None:
            return cls()
        extra = progress["extra"]
        state = cls(progress["step"], progress["epoch"], progress["batch_in_epoch"], extra["meters"],
                    extra["counts"], extra["val"])
        state.monitor.streak, state.monitor.warned = extra["monitor"]["streak"], set(extra["monitor"]["warned"])
        return state


def log_row(run: Run, state: TrainState, kind: str, lr: float, batch_size: int, extra: dict) -> dict:
    """One log.csv row of means since the last row of this kind ("window" or "epoch"), each
    component's share of the total, and `extra`."""
    sums, n = state.meters[kind].tolist(), max(1, state.counts[kind])
    weighted = {c: sums[1 + i] / n for i, c in enumerate(COMPONENTS)}
    shares = state.monitor.update(weighted) if kind == "window" else \
        {f"share_{c}": abs(v) / (sum(map(abs, weighted.values())) or 1.0) for c, v in weighted.items()}
    row = {"step": state.step, "epoch": state.epoch, "lr": lr, "loss": sums[0] / n,
           **{f"loss_{c}": v for c, v in weighted.items()}, **shares,
           "train_acc": sums[5] / max(1, n * batch_size), **extra}
    state.meters[kind].zero_()
    state.counts[kind] = 0
    run.log(row)
    return row


def loss_summary(row: dict) -> str:
    """A log row's training loss, its weighted components and accuracy, for the printed lines."""
    parts = " ".join(f"{c} {row[f'loss_{c}']:.4f}" for c in COMPONENTS)
    return f"train loss {row['loss']:.4f} ({parts}) acc {row['train_acc']:.3f}"


def keep_if_best(metrics: dict, epoch: int, state: TrainState, run: Run, model, optimizer, scaler) -> bool:
    """Remember the validation scores and write best.pt when they beat every earlier one (all
    ranks: they hold the same gathered scores and all take part in the save)."""
    state.val = scores(metrics)
    improved = run.improved(state.val["uar"], state.step, epoch)
    if improved:
        run.save("best.pt", model, optimizer, scaler, state.progress(), state.extra())
    return improved


def train_one_epoch(ddp_model, optimizer, scaler, train_set, sampler, val_loader, state: TrainState,
                    cfg: RunConfig, args: argparse.Namespace, run: Run, dtype) -> str:
    """Train from the state's position to the end of its epoch. Returns "epoch", "max_iters" (the
    step cap is reached) or "stopped" (a stop signal: the caller saves last.pt and exits)."""
    tc, model = cfg.train, unwrap(ddp_model)
    device, epoch, steps_per_epoch = next(model.parameters()).device, state.epoch, sampler.batches_per_epoch()
    if tc.max_iters and state.step >= tc.max_iters:
        return "max_iters"
    sampler.set_epoch(epoch, state.batch_in_epoch)
    train_set.set_epoch(epoch)
    ddp_model.train()
    loader = make_loader(train_set, sampler, tc.batch_size, args, device, epoch)
    with tqdm(loader, desc=f"epoch {epoch}", leave=False, total=steps_per_epoch - state.batch_in_epoch,
              disable=not is_main() or not sys.stderr.isatty()) as bar:
        for face, context, labels, fallbacks in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(state.step, group["base_lr"], tc, steps_per_epoch)
            face, context = face.to(device, non_blocking=True), context.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            # Mixup randomness from (seed, epoch, batch): identical after a resume.
            mix_gen = sample_generator(args.seed, epoch, 10**9 + state.batch_in_epoch)
            # FIX(CAER-MIXUP-TARGET): y_b = y[perm], not the permutation index; one perm for both streams.
            (face, context), y_a, y_b, lam = mixup([face, context], labels, cfg.loss.mixup_alpha, generator=mix_gen)
            with autocast(device, dtype):
                out = ddp_model(face, context)
            queue = (model.queue, model.queue_labels) if cfg.model.moco_queue > 0 else None
            epoch_progress = epoch + state.batch_in_epoch / steps_per_epoch
            loss, parts, weighted = total_loss(out, y_a, y_b, lam, epoch, epoch_progress, cfg.loss, queue, state.step)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if queue is not None and "key" in out:  # keys exist in training mode only
                key_labels = y_a if lam >= 0.5 else y_b
                model.enqueue(gather_cat(out["key"].detach().float()), gather_cat(key_labels))
            with torch.no_grad():
                correct = (out["logits"].argmax(-1) == labels).sum().float()
                values = torch.stack([loss.detach().float(), *[weighted[c].detach().float() for c in COMPONENTS],
                                      correct]).cpu()
            for kind in ("window", "epoch"):
                state.meters[kind] += values
                state.counts[kind] += 1
            state.counts["fallbacks"] += int(fallbacks.sum())
            state.step += 1
            state.batch_in_epoch += 1
            lr = optimizer.param_groups[0]["lr"]
            if state.step % args.log_interval == 0:
                row = log_row(run, state, "window", lr, tc.batch_size, {})
                if is_main():  # above the progress bar, not through it
                    bar.write(f"epoch {epoch} step {state.step}: {loss_summary(row)} | lr {lr:.2e}")
                bar.set_postfix(loss=f"{row['loss']:.3f}", uar=f"{state.val.get('uar', float('nan')):.3f}",
                                lr=f"{lr:.1e}")
            if tc.val_interval and state.step % tc.val_interval == 0 and state.batch_in_epoch < steps_per_epoch:
                metrics = evaluate(model, val_loader, device, dtype, cfg.model.num_classes)
                run.log({"step": state.step, "epoch": epoch, "lr": lr, "val_uar": metrics["uar"],
                         "val_war": metrics["war"], "box_fallbacks": metrics["fallbacks"]})
                keep_if_best(metrics, epoch, state, run, ddp_model, optimizer, scaler)
                ddp_model.train()
            if args.ckpt_interval and state.step % args.ckpt_interval == 0:
                run.save("last.pt", ddp_model, optimizer, scaler, state.progress(), state.extra())
            if run.should_stop():
                return "stopped"
            if tc.max_iters and state.step >= tc.max_iters:
                return "max_iters"
    return "epoch"


def describe(cfg: RunConfig, recipe: dict, splits: dict, model, optimizer, steps_per_epoch: int, world_size: int,
             device) -> str:
    """The set-up, printed at start: recipe, data, model, per-group lrs (the lr rule's result)."""
    tc = cfg.train
    lines = [f"official recipe for the settings not given: {', '.join(f'{k}={v}' for k, v in recipe.items())}"] \
        if recipe else []
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return "\n".join(lines + [
        f"caer_clip: {dataset_name(cfg.data)} data, {'/'.join(str(len(d)) for d in splits.values())} train/val/test "
        f"clips, CLIP '{cfg.model.clip}', T={cfg.model.num_frames}, context {'on' if cfg.model.use_context else 'off'}, "
        f"{tc.epochs} epochs x {steps_per_epoch} steps, batch {tc.batch_size} x {world_size}, device {device}",
        f"lr rule '{tc.lr_rule}' (reference batch {tc.lr_ref_batch}); per-group lrs: "
        + ", ".join(sorted({f"{g['name']} {g['base_lr']:.2e}" for g in optimizer.param_groups})),
        f"parameters: {sum(p.numel() for p in model.parameters()):,} total, {trainable:,} trainable"]
        + [line for line in [splits["train"].box_summary] if line])  # "face boxes: N of M clips" on real data


def main(argv: list[str] | None = None) -> dict:
    start_time = time.time()
    parser = build_parser()
    args, resumed = parse_with_resume(parser, argv, PROJECT)
    # A resumed run has its recipe already in the checkpoint's settings.
    recipe = {} if resumed else apply_official_recipe(args, explicit_dests(parser, argv))
    cfg = configs_from(args)
    tc = cfg.train
    dist_info = setup_distributed(args.device)
    device = dist_info.device
    config = {**asdict(cfg), "run": {"seed": args.seed, "amp": args.amp, "world_size": dist_info.world_size}}
    if resumed:
        check_resume_config(resumed, config, RESUME_KEYS, args.resume)
    run = Run(PROJECT, args, config, "runs/caer_clip", resumed, best_metric="val_uar", best_mode="max")
    with run:
        model, splits = build_model_and_data(cfg, args.seed, device)
        check_split_sizes(splits, tc.batch_size, dist_info.world_size)
        sampler = train_sampler_for(splits["train"], cfg, args.seed, dist_info.rank, dist_info.world_size)
        optimizer = torch.optim.SGD(param_groups(model, tc, dist_info.world_size), lr=0.0, momentum=tc.momentum)
        dtype = autocast_dtype(device, args.amp)
        scaler = make_grad_scaler(device, dtype)
        state = TrainState.restored(run.restore(model, optimizer, scaler))
        run.open(LOG_COLUMNS, checkpoint_bytes(model, optimizer))
        steps_per_epoch = sampler.batches_per_epoch()
        run.print(describe(cfg, recipe, splits, model, optimizer, steps_per_epoch, dist_info.world_size, device))
        ddp_model = wrap_ddp(model, dist_info)
        val_loader, test_loader = (eval_loader(splits[s], tc.batch_size, args, device, dist_info.rank,
                                               dist_info.world_size) for s in ("val", "test"))
        run.restore_rng()  # after everything above that draws random numbers
        for epoch in range(state.epoch, tc.epochs):
            ended = train_one_epoch(ddp_model, optimizer, scaler, splits["train"], sampler, val_loader, state, cfg,
                                    args, run, dtype)
            if ended == "stopped":
                run.save("last.pt", ddp_model, optimizer, scaler, state.progress(), state.extra())
                run.exit_stopped(state.step)
            if ended == "max_iters" and state.batch_in_epoch < steps_per_epoch:
                run.save("last.pt", ddp_model, optimizer, scaler, state.progress(), state.extra())
                break  # mid-epoch: no validation row (a resumed run with a higher cap writes it)
            # A checkpoint from the epoch's last step resumes here: validation, then the epoch row.
            metrics = evaluate(model, val_loader, device, dtype, cfg.model.num_classes)
            fallbacks = state.counts["fallbacks"] + metrics["fallbacks"]
            row = log_row(run, state, "epoch", optimizer.param_groups[0]["lr"], tc.batch_size,
                          {"val_uar": metrics["uar"], "val_war": metrics["war"], "box_fallbacks": fallbacks})
            state.epoch, state.batch_in_epoch, state.counts["fallbacks"] = epoch + 1, 0, 0
            improved = keep_if_best(metrics, epoch, state, run, ddp_model, optimizer, scaler)
            run.print(f"epoch {epoch} (mean): {loss_summary(row)} | lr {row['lr']:.2e}\n"
                      f"epoch {epoch} step {state.step}: val UAR {metrics['uar']:.4f} WAR {metrics['war']:.4f}"
                      f"{' (best)' if improved else ''} | box fallbacks {fallbacks}")
            run.save("last.pt", ddp_model, optimizer, scaler, state.progress(), state.extra())
            run.save_periodic(state.step, ddp_model, optimizer, scaler, state.progress(), state.extra())
            if ended == "max_iters":
                break

        # Final test: best-on-validation weights (this run's best.pt, on every rank), scored once.
        run.load_best(model)
        test = evaluate(model, test_loader, device, dtype, cfg.model.num_classes)
        names = list(CLASS_DESCRIPTORS[dataset_name(cfg.data)])
        if is_main():
            save_confusion(test["confusion"], names, run.dir / "confusion_test",
                           f"caer_clip, test split: best.pt (epoch {run.best['epoch']}, step {run.best['step']}), "
                           f"UAR {test['uar']:.3f}, WAR {test['war']:.3f}")
        run.print(textwrap.fill(f"test confusion matrix (rows true, columns predicted; {', '.join(names)}):", 100)
                  + f"\n{test['confusion']}")
        best = "none" if run.best["value"] is None else f"{run.best['value']:.4f}"
        run.print(f"best val UAR {best} (epoch {run.best['epoch']}) | test UAR {test['uar']:.4f} "
                  f"WAR {test['war']:.4f} | {time.time() - start_time:.1f} s")
        assert_replicas_in_sync(model)  # under torchrun: every rank must end with the same weights
        results = {"run_dir": str(run.dir), "step": state.step, "best": dict(run.best), "val": state.val,
                   "test": scores(test)}
        run.finish(results)
    del ddp_model  # DDP holds the process group: release it first
    cleanup_distributed()
    return results


if __name__ == "__main__":
    run_cli(main)
