"""Train CLIP-CAER. `python caer_clip/train.py` trains on built-in synthetic clips (tiny random
CLIP, CPU or GPU); `--data-root DIR --dataset raer|daisee|caer` trains on a real dataset with the
official recipe (ViT-B/16 CLIP, 16 frames, 20 epochs, batch 8, SGD, per-group lrs, steps at
epochs 10 and 15). Runs under `torchrun --nproc_per_node N caer_clip/train.py` too.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make `common` and the project importable when run as a script

import argparse
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from caer_clip.clip import load_clip
from caer_clip.data import CLASS_DESCRIPTORS, ClassBalancedSampler, DataConfig, build_datasets
from caer_clip.losses import LossConfig, total_loss
from caer_clip.model import ModelConfig, build_model
from common.metrics import confusion_matrix, uar, war
from common.mixup import mixup
from common.runtime import (
    CSVLogger,
    DataError,
    EpochSampler,
    LossBalanceMonitor,
    assert_replicas_in_sync,
    autocast,
    autocast_dtype,
    check_config_compatible,
    cleanup_distributed,
    gather_cat,
    is_main,
    load_checkpoint,
    make_grad_scaler,
    prepare_run_dir,
    rng_state,
    sample_generator,
    save_checkpoint,
    seed_everything,
    seed_worker,
    set_rng_state,
    setup_distributed,
    unwrap,
    write_config,
)
from common.schedulers import multistep_lr, scaled_lr


@dataclass
class TrainConfig:
    out: str = "runs/caer_clip"  # run folder: config.json, log.csv, last.pt, best.pt, confusion matrix
    resume: str | None = None  # checkpoint to continue from (e.g. runs/caer_clip/last.pt)
    seed: int = 0  # seeds weights, data order, augmentation and mixup
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # autocast on CUDA (bf16 where supported)
    workers: int = 0  # DataLoader worker processes
    batch_size: int = 16  # clips per step and per process
    epochs: int = 4  # training epochs
    max_iters: int = 0  # stop after this many steps (0 = run all epochs)
    lr: float = 1e-2  # lr of the temporal models
    lr_image: float = 2e-3  # lr of the CLIP image encoder (ignored when it is frozen)
    lr_prompt: float = 2e-3  # lr of the prompt learner's context vectors
    lr_proj: float = 1e-2  # lr of the fusion projection
    lr_adapter: float = 1e-2  # lr of the face adapter
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # on weight matrices only
    milestones: list[int] = field(default_factory=lambda: [3])  # epochs at which the lr is multiplied by lr_gamma
    lr_gamma: float = 0.1  # multi-step lr factor
    warmup_iters: int = 10  # linear lr warm-up steps
    grad_clip: float = 10.0  # max global gradient norm (0 = off); 1.0 starved the prompts on the tiny CLIP
    lr_rule: str = "none"  # none | linear | sqrt: scale every lr by the effective batch / lr_ref_batch
    lr_ref_batch: int = 8  # batch the lrs were quoted for (official recipe: 8)
    log_interval: int = 10  # steps between log rows
    ckpt_interval: int = 100  # steps between last.pt writes (also at every epoch end)


@dataclass
class RunConfig:
    model: ModelConfig
    loss: LossConfig
    data: DataConfig
    train: TrainConfig


# Settings left unset on the command line come from the recipe of the data in use.
RECIPES = {
    "synthetic": {},  # the dataclass defaults
    "official": dict(clip="openai:ViT-B-16", num_frames=16, epochs=20, batch_size=8, lr=1e-2, lr_image=1e-5,
                     lr_prompt=1e-3, lr_proj=1e-5, lr_adapter=1e-3, milestones=[10, 15], warmup_iters=0, logit_scale=100.0,
                     num_classes=None),
}
ARCH_KEYS = ["clip", "num_classes", "num_frames", "n_ctx", "class_specific_ctx", "temporal", "temporal_layers",
             "temporal_heads", "use_context", "moco_queue", "adapter_reduction"]
LOG_COLUMNS = ["step", "epoch", "lr", "loss", "loss_cls", "loss_mi", "loss_dc", "loss_moco", "share_cls",
               "share_mi", "share_dc", "share_moco", "train_acc", "val_uar", "val_war", "box_fallbacks"]
COMPONENTS = ["cls", "mi", "dc", "moco"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bool_flag = argparse.BooleanOptionalAction
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=None, help="dataset folder (absent: built-in synthetic clips)")
    g.add_argument("--dataset", default="raer", choices=["raer", "daisee", "caer"], help="format of --data-root")
    g.add_argument("--train-list", default="train.txt", help="training list / label CSV, relative to the root")
    g.add_argument("--val-list", default="", help="validation list (empty: a stratified share of train)")
    g.add_argument("--test-list", default="test.txt", help="test list, scored once at the end")
    g.add_argument("--val-fraction", type=float, default=0.1, help="share of each class held out for validation")
    g.add_argument("--face-boxes", default="face_boxes.json", help="per-frame face boxes JSON")
    g.add_argument("--body-boxes", default="", help="per-clip body boxes JSON (empty: whole frame as context)")
    g.add_argument("--frames-subdir", default="frames", help="DAiSEE: folder of per-clip frame folders")
    g.add_argument("--allow-missing-boxes", action="store_true", help="centre-crop clips without a face box")
    g.add_argument("--face-margin", type=float, default=0.1, help="face box growth per side, share of its size")
    g.add_argument("--flip", action=bool_flag, default=True, help="random horizontal flip (one per clip)")
    g.add_argument("--rotate-degrees", type=float, default=10.0, help="random rotation range (one per clip)")
    g.add_argument("--balanced-sampler", action="store_true", help="class-balanced training epochs")
    g.add_argument("--balance-power", type=float, default=0.0, help="class share ~ count^power (0 = balanced)")
    g.add_argument("--synthetic-train", type=int, default=600, help="synthetic training clips")
    g.add_argument("--synthetic-val", type=int, default=200, help="synthetic validation clips")
    g.add_argument("--synthetic-test", type=int, default=200, help="synthetic test clips")
    g = p.add_argument_group("model")
    g.add_argument("--clip", default=None, help="'tiny', an OpenAI .pt file, or 'openai:ViT-B-16'")
    g.add_argument("--num-classes", type=int, default=None, help="classes (default: from the dataset)")
    g.add_argument("--num-frames", type=int, default=None, help="frames sampled per clip")
    g.add_argument("--n-ctx", type=int, default=8, help="learnable prompt context vectors")
    g.add_argument("--class-specific-ctx", action=bool_flag, default=True, help="context vectors per class")
    g.add_argument("--temporal", default="cls", choices=["cls", "attn"], help="temporal model")
    g.add_argument("--temporal-layers", type=int, default=1, help="temporal transformer blocks")
    g.add_argument("--temporal-heads", type=int, default=8, help="temporal attention heads")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout in the temporal models")
    g.add_argument("--adapter-ratio", type=float, default=0.2, help="residual share of the face adapter")
    g.add_argument("--adapter-reduction", type=int, default=4, help="face adapter bottleneck factor")
    g.add_argument("--no-context", dest="use_context", action="store_false", help="face stream only")
    g.add_argument("--freeze-image-encoder", action="store_true", help="freeze the CLIP image encoder")
    g.add_argument("--logit-scale", type=float, default=None, help="fixed cosine-logit scale (official: 100)")
    g.add_argument("--moco-queue", type=int, default=4096, help="MoCo queue length (0: no MoCo)")
    g.add_argument("--moco-momentum", type=float, default=0.99, help="MoCo key-encoder momentum")
    g = p.add_argument_group("loss")
    g.add_argument("--cls-loss", default="lsr", choices=["ce", "lsr"], help="hard-label loss")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing of 'lsr'")
    g.add_argument("--ldl", dest="use_ldl", action=bool_flag, default=False, help="semantic LDL after the warm-up")
    g.add_argument("--ldl-warmup", type=int, default=2, help="epochs of hard labels before LDL")
    g.add_argument("--ldl-temperature", type=float, default=0.1, help="LDL target temperature")
    g.add_argument("--mixup-alpha", type=float, default=0.0, help="mixup Beta(alpha, alpha); 0 = off")
    g.add_argument("--w-mi", type=float, default=LossConfig.w_mi, help="MI loss weight")
    g.add_argument("--w-dc", type=float, default=LossConfig.w_dc, help="DC loss weight")
    g.add_argument("--w-moco", type=float, default=0.1, help="MoCo loss weight")
    g.add_argument("--aux-warmup", type=float, default=1.0, help="epochs to ramp the auxiliary weights in")
    g.add_argument("--mi-temperature", type=float, default=0.07, help="MI InfoNCE temperature")
    g.add_argument("--moco-temperature", type=float, default=0.07, help="MoCo InfoNCE temperature")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=None, help="clips per step and per process")
    g.add_argument("--epochs", type=int, default=None, help="training epochs")
    g.add_argument("--max-iters", type=int, default=0, help="stop after this many steps (0: all epochs)")
    g.add_argument("--lr", type=float, default=None, help="lr of the temporal models")
    g.add_argument("--lr-image", type=float, default=None, help="lr of the CLIP image encoder")
    g.add_argument("--lr-prompt", type=float, default=None, help="lr of the prompt context vectors")
    g.add_argument("--lr-proj", type=float, default=None, help="lr of the fusion projection")
    g.add_argument("--lr-adapter", type=float, default=None, help="lr of the face adapter")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay on matrices")
    g.add_argument("--milestones", type=int, nargs="+", default=None, help="epochs where lr *= --lr-gamma")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="multi-step lr factor")
    g.add_argument("--warmup-iters", type=int, default=None, help="linear lr warm-up steps")
    g.add_argument("--grad-clip", type=float, default=10.0, help="max gradient norm (0: off)")
    g.add_argument("--lr-rule", default="none", choices=["none", "linear", "sqrt"],
                   help="scale the lrs by effective batch / --lr-ref-batch (printed at start)")
    g.add_argument("--lr-ref-batch", type=int, default=8, help="batch the lrs are quoted for")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/caer_clip", help="run folder")
    g.add_argument("--resume", default=None, help="checkpoint to continue from (e.g. <out>/last.pt)")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--no-amp", dest="amp", action="store_false", help="disable autocast on CUDA")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    g.add_argument("--log-interval", type=int, default=10, help="steps between log rows")
    g.add_argument("--ckpt-interval", type=int, default=100, help="steps between last.pt writes")
    return p


def _fill(cls, values: dict):
    """A config dataclass from the parsed values of its fields (every field must be a flag)."""
    return cls(**{f.name: values[f.name] for f in fields(cls)})


def build_configs(args: argparse.Namespace) -> RunConfig:
    values = dict(vars(args))
    recipe = RECIPES["synthetic" if values["data_root"] is None else "official"]
    dataset = "synthetic" if values["data_root"] is None else values["dataset"]
    defaults = {**asdict(ModelConfig()), **asdict(TrainConfig())}
    defaults["num_classes"] = len(CLASS_DESCRIPTORS[dataset])
    for key, value in values.items():
        if value is None and key not in ("data_root", "resume"):
            values[key] = recipe.get(key) if recipe.get(key) is not None else defaults[key]
    # FIX(CAER-MIXUP-PLUMB): the loss settings were passed field by field and mixup_alpha,
    # use_ldl and ldl_warmup were forgotten, so --mixup-alpha etc. were parsed and silently
    # dropped. Every config section is now filled from all of its flags by name.
    # was: loss = LossConfig(cls_loss=values["cls_loss"], smoothing=values["smoothing"],
    #                        ldl_temperature=values["ldl_temperature"], w_mi=values["w_mi"], w_dc=values["w_dc"],
    #                        w_moco=values["w_moco"], aux_warmup=values["aux_warmup"],
    #                        mi_temperature=values["mi_temperature"], moco_temperature=values["moco_temperature"])
    loss = _fill(LossConfig, values)
    return RunConfig(_fill(ModelConfig, values), loss, _fill(DataConfig, values), _fill(TrainConfig, values))


# ----------------------------------------------------------------------------- optimiser and lr


def param_groups(model, cfg: TrainConfig, world_size: int) -> list[dict]:
    """SGD groups per part with their own lr (official recipe); no decay on 1-d tensors, embeddings,
    tokens and prompt context vectors. Every trainable parameter lands in exactly one group."""
    head = model.head
    parts = {"temporal": [head.face_temporal, head.context_temporal], "projection": [head.projection],
             "adapter": [head.adapter], "prompt": [model.prompt_learner], "image": [model.clip.visual]}
    lrs = {"temporal": cfg.lr, "projection": cfg.lr_proj, "adapter": cfg.lr_adapter, "prompt": cfg.lr_prompt,
           "image": cfg.lr_image}
    # FIX(CAER-LR-RULE): every lr was silently multiplied by batch/20 (seed 000, section 3), so a
    # batch of 8 trained at 0.4x the lr on the command line; the scaling rule is now explicit
    # (--lr-rule, default none) and the resulting lrs are printed at start.
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
    return multistep_lr(step, base_lr, [m * steps_per_epoch for m in cfg.milestones], cfg.lr_gamma, cfg.warmup_iters)


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
    # FIX(CAER-UAR-ALL-CLASSES): the mean recall ran over the classes present in the split, so a
    # class missing from it dropped out and UAR was inflated; it now runs over all classes.
    # was: uar_value = _uar_present_classes(labels, preds)
    uar_value = uar(labels, preds, num_classes)
    return {"uar": uar_value, "war": war(labels, preds), "fallbacks": fallbacks,
            "confusion": confusion_matrix(labels, preds, num_classes)}


def save_confusion(cm: np.ndarray, names: list[str], path: Path) -> None:
    """CSV always; PNG when matplotlib is installed."""
    with open(path.with_suffix(".csv"), "w") as f:
        f.write("true\\pred," + ",".join(names) + "\n")
        for name, row in zip(names, cm):
            f.write(name + "," + ",".join(str(int(v)) for v in row) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("confusion matrix PNG skipped: pip install matplotlib")
        return
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.2 * len(names) + 1))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- training


def make_loader(dataset, sampler, cfg: TrainConfig, device, epoch: int):
    # An explicit generator keeps the DataLoader from drawing on the global RNG (exact resume).
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
        worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
        pin_memory=device.type == "cuda")


def main(argv: list[str] | None = None) -> dict:
    start_time = time.time()
    cfg = build_configs(build_parser().parse_args(argv))
    tc = cfg.train
    run_dir = prepare_run_dir(tc.out)
    dist_info = setup_distributed(tc.device)
    device, main_rank = dist_info.device, is_main()
    log = print if main_rank else (lambda *a, **k: None)
    seed_everything(tc.seed)

    if cfg.data.data_root is not None and not Path(cfg.data.data_root).is_dir():
        # A wrong path must fail now, not after CLIP's weights have been read or fetched.
        raise DataError(f"--data-root {cfg.data.data_root} is not a folder")
    dataset = "synthetic" if cfg.data.data_root is None else cfg.data.dataset
    names = list(CLASS_DESCRIPTORS[dataset])
    descriptors = list(CLASS_DESCRIPTORS[dataset].values())
    clip, tokenizer = load_clip(cfg.model.clip, [s for d in descriptors for s in d] + ["x", "a photo of ."])
    model = build_model(cfg.model, clip, tokenizer, descriptors).to(device)
    train_set, val_set, test_set = build_datasets(cfg.data, cfg.model.num_frames, clip.cfg.image_resolution, tc.seed)
    rank_args = dict(seed=tc.seed, rank=dist_info.rank, world_size=dist_info.world_size)
    if cfg.data.balanced_sampler:
        train_sampler = ClassBalancedSampler(train_set.labels, tc.batch_size, cfg.data.balance_power, **rank_args)
    else:
        train_sampler = EpochSampler(len(train_set), tc.batch_size, shuffle=True, **rank_args)
    steps_per_epoch = train_sampler.batches_per_epoch()
    eval_samplers = {name: EpochSampler(len(ds), tc.batch_size, shuffle=False, drop_last=False, **rank_args)
                     for name, ds in (("val", val_set), ("test", test_set))}

    optimizer = torch.optim.SGD(param_groups(model, tc, dist_info.world_size), lr=0.0, momentum=tc.momentum)
    dtype = autocast_dtype(device, tc.amp)
    scaler = make_grad_scaler(device, dtype)
    step, start_epoch, start_batch, best_uar, best_epoch = 0, 0, 0, -1.0, -1
    meters = {"window": torch.zeros(6), "epoch": torch.zeros(6)}  # sums of loss, 4 components, correct; count
    counts = {"window": 0, "epoch": 0, "fallbacks": 0}
    if tc.resume:
        ckpt = load_checkpoint(tc.resume)
        check_config_compatible(ckpt["config"]["model"], asdict(cfg.model), ARCH_KEYS)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, start_epoch, start_batch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        best_uar, best_epoch, meters, counts = ckpt["best_uar"], ckpt["best_epoch"], ckpt["meters"], ckpt["counts"]
        log(f"resumed from {tc.resume} at step {step} (epoch {start_epoch}, batch {start_batch})")
    if main_rank:
        write_config(run_dir, asdict(cfg))
    logger = CSVLogger(run_dir / "log.csv", LOG_COLUMNS, resume_step=step if tc.resume else None) if main_rank else None
    ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist_info.enabled else model
    monitor = LossBalanceMonitor("cls")

    log(f"caer_clip: {dataset} data, {len(train_set)}/{len(val_set)}/{len(test_set)} train/val/test clips, "
        f"CLIP '{cfg.model.clip}', T={cfg.model.num_frames}, context {'on' if cfg.model.use_context else 'off'}, "
        f"{tc.epochs} epochs x {steps_per_epoch} steps, batch {tc.batch_size} x {dist_info.world_size}, device {device}")
    log(f"lr rule '{tc.lr_rule}' (reference batch {tc.lr_ref_batch}); per-group lrs: "
        + ", ".join(sorted({f"{g['name']} {g['base_lr']:.2e}" for g in optimizer.param_groups})))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"parameters: {sum(p.numel() for p in model.parameters()):,} total, {trainable:,} trainable")
    if tc.resume:
        set_rng_state(ckpt["rng"])

    def checkpoint(path: Path, epoch: int, batch_in_epoch: int) -> None:
        if main_rank:
            save_checkpoint(path, {
                "model": unwrap(ddp_model).state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "best_uar": best_uar, "best_epoch": best_epoch, "meters": {k: v.clone() for k, v in meters.items()},
                "counts": dict(counts), "rng": rng_state(), "config": asdict(cfg)})

    def log_row(kind: str, extra: dict) -> dict:
        """Means since the last row of this kind, their shares of the total, and `extra`."""
        sums, n = meters[kind].tolist(), max(1, counts[kind])
        weighted = {c: sums[1 + i] / n for i, c in enumerate(COMPONENTS)}
        shares = monitor.update(weighted) if kind == "window" else \
            {f"share_{c}": abs(v) / (sum(map(abs, weighted.values())) or 1.0) for c, v in weighted.items()}
        row = {"step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "loss": sums[0] / n,
               **{f"loss_{c}": v for c, v in weighted.items()}, **shares,
               "train_acc": sums[5] / max(1, n * tc.batch_size), **extra}
        meters[kind].zero_()
        counts[kind] = 0
        if logger is not None:
            logger.log(row)
        return row

    val_metrics = {"uar": float("nan")}
    stopped = False
    epoch = start_epoch
    for epoch in range(start_epoch, tc.epochs):
        train_sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
        train_set.set_epoch(epoch)
        ddp_model.train()
        batch_in_epoch = start_batch if epoch == start_epoch else 0
        bar = tqdm(make_loader(train_set, train_sampler, tc, device, epoch), desc=f"epoch {epoch}", leave=False,
                   disable=not main_rank or not sys.stderr.isatty(), total=steps_per_epoch - batch_in_epoch)
        for face, context, labels, fallbacks in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, group["base_lr"], tc, steps_per_epoch)
            face, context = face.to(device, non_blocking=True), context.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            # Mixup randomness from (seed, epoch, batch): identical after a resume.
            mix_gen = sample_generator(tc.seed, epoch, 10**9 + batch_in_epoch)
            # FIX(CAER-MIXUP-TARGET): the local mixup returned the permutation index as y_b, so the
            # second loss term trained towards class "index" (a random class id); common.mixup
            # returns y[perm] and mixes face and context with the same permutation and lambda.
            # was: (face, context), y_a, y_b, lam = _mixup_data(face, context, labels, cfg.loss.mixup_alpha, mix_gen)
            (face, context), y_a, y_b, lam = mixup([face, context], labels, cfg.loss.mixup_alpha, generator=mix_gen)
            with autocast(device, dtype):
                out = ddp_model(face, context)
            base = unwrap(ddp_model)
            queue = (base.queue, base.queue_labels) if cfg.model.moco_queue > 0 else None
            progress = epoch + batch_in_epoch / steps_per_epoch
            loss, parts, weighted = total_loss(out, y_a, y_b, lam, epoch, progress, cfg.loss, queue, step)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if queue is not None and "key" in out:  # keys exist in training mode only
                key_labels = y_a if lam >= 0.5 else y_b
                base.enqueue(gather_cat(out["key"].detach().float()), gather_cat(key_labels))
            with torch.no_grad():
                correct = (out["logits"].argmax(-1) == labels).sum().float()
                values = torch.stack([loss.detach().float(), *[weighted[c].detach().float() for c in COMPONENTS],
                                      correct]).cpu()
            for kind in ("window", "epoch"):
                meters[kind] += values
                counts[kind] += 1
            counts["fallbacks"] += int(fallbacks.sum())
            step += 1
            batch_in_epoch += 1
            if step % tc.log_interval == 0:
                row = log_row("window", {})
                bar.set_postfix(loss=f"{row['loss']:.3f}", uar=f"{val_metrics['uar']:.3f}", lr=f"{row['lr']:.1e}")
            if tc.ckpt_interval and step % tc.ckpt_interval == 0:
                checkpoint(run_dir / "last.pt", epoch, batch_in_epoch)
            if tc.max_iters and step >= tc.max_iters:
                stopped = True
                break
        bar.close()
        start_batch = 0
        if stopped and batch_in_epoch < steps_per_epoch:
            break  # mid-epoch stop: last.pt below, no epoch row (a resumed run writes it)
        val_set.set_epoch(epoch)
        val_metrics = evaluate(unwrap(ddp_model), make_loader(val_set, eval_samplers["val"], tc, device, 0),
                               device, dtype, cfg.model.num_classes)
        fallback_total = counts["fallbacks"] + val_metrics["fallbacks"]
        row = log_row("epoch", {"val_uar": val_metrics["uar"], "val_war": val_metrics["war"],
                                "box_fallbacks": fallback_total})
        counts["fallbacks"] = 0
        improved = val_metrics["uar"] > best_uar
        if improved:
            best_uar, best_epoch = val_metrics["uar"], epoch
        log(f"epoch {epoch:3d} step {step:6d} | loss {row['loss']:.4f} (cls {row['loss_cls']:.4f} "
            f"mi {row['loss_mi']:.4f} dc {row['loss_dc']:.4f} moco {row['loss_moco']:.4f}) "
            f"train acc {row['train_acc']:.3f} | val UAR {val_metrics['uar']:.4f} WAR {val_metrics['war']:.4f}"
            f"{' *' if improved else ''} | box fallbacks {fallback_total} | lr {row['lr']:.2e}")
        checkpoint(run_dir / "last.pt", epoch + 1, 0)
        if improved:
            checkpoint(run_dir / "best.pt", epoch + 1, 0)
        if stopped:
            break
    if stopped:
        checkpoint(run_dir / "last.pt", epoch, batch_in_epoch)

    # Final test: best-on-validation weights, scored once.
    if (run_dir / "best.pt").is_file():
        unwrap(ddp_model).load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    test = evaluate(unwrap(ddp_model), make_loader(test_set, eval_samplers["test"], tc, device, 0),
                    device, dtype, cfg.model.num_classes)
    elapsed = time.time() - start_time
    if main_rank:
        save_confusion(test["confusion"], names, run_dir / "confusion_test")
        log(f"confusion matrix (rows true, columns predicted; {', '.join(names)}):\n{test['confusion']}")
        log(f"best val UAR {best_uar:.4f} (epoch {best_epoch}) | test UAR {test['uar']:.4f} WAR {test['war']:.4f} "
            f"| {elapsed:.1f} s")
    assert_replicas_in_sync(ddp_model)  # under torchrun: every rank must end with the same weights
    cleanup_distributed()
    return {"best_val_uar": best_uar, "best_epoch": best_epoch, "val_uar": val_metrics["uar"],
            "test_uar": test["uar"], "test_war": test["war"], "steps": step, "run_dir": str(run_dir),
            "elapsed_s": elapsed}




if __name__ == "__main__":
    main()
