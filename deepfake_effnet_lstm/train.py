"""Train the EfficientNet-B0 + LSTM deepfake detector.

    python deepfake_effnet_lstm/train.py                       # synthetic demo (flickering fakes)
    python deepfake_effnet_lstm/train.py --data-root faces/ --frames 16 --image-size 224 --pretrained
    python deepfake_effnet_lstm/train.py --resume runs/deepfake_effnet_lstm/last.pt
    torchrun --nproc_per_node 2 deepfake_effnet_lstm/train.py --max-iters 20 --test

The loop follows polimi-ispl/icpr2020dfdc train_binclass.py: a global iteration counter across
epochs, a train metrics row every --log-interval, validation every --val-interval AND at the end
of every epoch and at the last step (each one writes a periodic step<N>.pt, best.pt on validation
loss, attention overlays), the lr divided by 10 on a validation-loss plateau, stop at --max-iters
or when the lr floor is reached. last.pt is written every --ckpt-interval steps, at every epoch
end and on a stop signal. Every checkpoint is a full run checkpoint: any of them resumes the run.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make `common` and the project importable when run as a script

import argparse
import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torchvision.utils import make_grid

from common.cli import above, add_args, arg, at_least, between, from_args
from common.lifecycle import (
    Run,
    check_resume_config,
    checkpoint_bytes,
    load_model_state,
    load_run_checkpoint,
    parse_with_resume,
    run_args,
    run_cli,
)
from common.metrics import accuracy, average_precision, precision_recall_f1, roc_auc
from common.tools.predict import colorbar, enlarge, pyplot_or_none, save_figure, sheet
from common.runtime import (
    DataError,
    DistInfo,
    EpochSampler,
    assert_replicas_in_sync,
    autocast,
    autocast_dtype,
    check_finite,
    cleanup_distributed,
    gather_cat,
    is_main,
    make_grad_scaler,
    seed_everything,
    seed_worker,
    setup_distributed,
    wrap_ddp,
)
from common.schedulers import PlateauController
from deepfake_effnet_lstm.data import CLASS_NAMES, DataConfig, denormalize, make_datasets, upsample_map
from deepfake_effnet_lstm.model import (
    DeepfakeDetector,
    DetectorConfig,
    attention_loss,
    classification_loss,
    fake_probability,
)

PROJECT = "deepfake_effnet_lstm"
DEFAULT_OUT = f"runs/{PROJECT}"
# keys that define the architecture and the class count: a resume with other values is refused
RESUME_KEYS = ["attention", "attention_stage", "lstm_hidden", "lstm_layers", "bidirectional", "num_logits", "image_size"]
METRICS = ["loss", "acc", "precision", "f1", "roc_auc", "ap"]
LOG_COLUMNS = ["step", "epoch", "split", "lr"] + METRICS + [f"video_{m}" for m in METRICS[1:]]
WINDOW = ("loss", "prob", "label", "video")  # training outputs kept between two train rows


@dataclass
class TrainConfig:
    lr: float | None = arg(None, "Adam learning rate (default: 1e-4 as icpr2020dfdc with --data-root, 1e-3 on the "
                           "synthetic demo, which starts from random weights on tiny frames)", check=above(0.0))
    warmup_steps: int | None = arg(None, "linear lr warm-up in optimizer steps (default: none, as icpr2020dfdc)",
                                   check=at_least(0))
    batch_size: int = arg(8, "sequences per step and per process", check=at_least(1))
    max_iters: int = arg(200, "stop after this many optimizer steps", check=at_least(1))
    epochs: int | None = arg(None, "optional cap on epochs (default: none, --max-iters decides)", check=at_least(1))
    grad_clip: float = arg(1.0, "max gradient norm (0 = off)", check=at_least(0.0, float))
    attention_loss_weight: float = arg(0.0, "weight of the attention mask loss (needs masks: --mask-root, or the "
                                       "synthetic data; 0: off)", check=at_least(0.0, float))
    plateau_patience: int = arg(10, "validations without improvement before lr / 10", check=at_least(0))
    plateau_cooldown: int = arg(20, "validations to wait after a reduction", check=at_least(0))
    min_lr_factor: float = arg(1e-5, "min_lr = lr x this; the run stops when the lr sits there without improving",
                               check=between(0.0, 1.0))


@dataclass
class EvalConfig:
    val_interval: int = arg(749, "optimizer steps between validations, as icpr2020dfdc (also at every epoch end and "
                            "at the last step)", check=at_least(1))
    test: bool = arg(False, "score best.pt on the test split at the end (results.json, test_metrics.json)")
    tensorboard: bool = arg(True, "TensorBoard scalars, PR curves and overlays (when tensorboard is installed)")
    overlays: bool = arg(True, "attention overlay PNGs (one real, one fake validation video) at every validation")


@dataclass
class Config:
    data: DataConfig
    model: DetectorConfig
    train: TrainConfig
    eval: EvalConfig


GROUPS = {"data": DataConfig, "model": DetectorConfig, "optimisation": TrainConfig, "evaluation": EvalConfig}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for title, cls in GROUPS.items():
        add_args(parser, cls, title)
    run_args(parser, DEFAULT_OUT, ckpt_interval=25, log_interval=25)
    return parser


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks that involve two flags: parse errors (exit 2) before anything runs."""
    if args.val_fraction + args.test_fraction >= 1:
        parser.error(f"--val-fraction {args.val_fraction} + --test-fraction {args.test_fraction} leave no "
                     f"training videos")
    if args.attention_loss_weight > 0 and args.data_root and not args.mask_root:
        parser.error("--attention-loss-weight needs masks: pass --mask-root (the synthetic data has them)")
    if args.attention_loss_weight > 0 and args.attention == "none":
        parser.error("--attention-loss-weight needs an attention module: --attention gate or cbam")


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The recipe-dependent defaults (flags left at None), written back so checkpoints hold them."""
    if args.lr is None:
        args.lr = 1e-4 if args.data_root else 1e-3
    if args.warmup_steps is None:
        args.warmup_steps = 0
    return args


def configs_from(args: argparse.Namespace) -> Config:
    return Config(*(from_args(cls, args) for cls in GROUPS.values()))


def config_dict(cfg: Config, args: argparse.Namespace) -> dict:
    """config.json and the checkpoints' "config": the dataclasses, plus the run flags."""
    own = {f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)}
    return {**dataclasses.asdict(cfg), "run": {k: v for k, v in vars(args).items() if k not in own}}


def lr_at(step: int, plateau_lr: float, warmup_steps: int) -> float:
    """Linear warm-up to the plateau controller's lr over `warmup_steps`, then that lr."""
    if step < warmup_steps:
        return plateau_lr * (step + 1) / warmup_steps
    return plateau_lr


def binary_metrics(labels: torch.Tensor, probs: torch.Tensor, videos: torch.Tensor) -> dict:
    """Per sequence and per video (mean P(fake) over the video's sequences). Threshold 0.5 for the
    label-based metrics; ROC-AUC and AP rank the probabilities. A window holding one class gives
    NaN ROC-AUC (logged as nan), not a crash."""
    out = {}
    for prefix, (y, p) in {"": (labels, probs), "video_": per_video(labels, probs, videos)}.items():
        preds = (p >= 0.5).long()
        out[prefix + "acc"] = accuracy(y, preds)
        out[prefix + "precision"], _, out[prefix + "f1"] = precision_recall_f1(y, preds, 2, average="weighted")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one-class windows: NaN is the honest value
            # FIX(DFD-AUC-SCORES): rank probabilities; hard labels collapse the ROC curve to one point.
            out[prefix + "roc_auc"], out[prefix + "ap"] = roc_auc(y, p), average_precision(y, p)
    return out


def per_video(labels: torch.Tensor, probs: torch.Tensor, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids, inverse = torch.unique(videos, return_inverse=True)
    counts = torch.zeros(len(ids)).index_add_(0, inverse, torch.ones(len(videos)))
    video_probs = torch.zeros(len(ids)).index_add_(0, inverse, probs.float()) / counts
    video_labels = torch.zeros(len(ids), dtype=torch.long).scatter_(0, inverse, labels)
    return video_labels, video_probs


def make_loader(dataset, sampler: EpochSampler, args, epoch: int) -> torch.utils.data.DataLoader:
    # A private generator for the workers' base seed keeps the global RNG (dropout) untouched,
    # so creating a loader mid-run after a resume does not shift the random stream.
    generator = torch.Generator().manual_seed(args.seed * 7919 + epoch)
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                                       num_workers=args.workers, worker_init_fn=seed_worker,
                                       generator=generator, pin_memory=torch.cuda.is_available())


def make_train_sampler(datasets: dict, args, dist_info: DistInfo) -> EpochSampler:
    """This rank's shard of the training order; splits too small to train or test on are a DataError."""
    sampler = EpochSampler(len(datasets["train"]), args.batch_size, shuffle=True, seed=args.seed,
                           rank=dist_info.rank, world_size=dist_info.world_size, drop_last=True)
    if sampler.batches_per_epoch() == 0:
        raise DataError(f"the train split gives 0 batches: {len(datasets['train'])} sequences over "
                        f"{dist_info.world_size} process(es) at --batch-size {args.batch_size} (incomplete batches "
                        f"are dropped); lower --batch-size or add training videos")
    if args.test and len(datasets["test"]) == 0:
        raise DataError("--test: the test split is empty (--test-fraction 0, or no test rows in the index)")
    return sampler


@torch.no_grad()
def evaluate(model, dataset, args, dist_info: DistInfo, class_weights) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Loss and metrics on a whole split, equal to a one-process evaluation's under torchrun too:
    the one-process batches are dealt out whole to the ranks (so every sequence is scored in the
    same batch, bit for bit) and the gathered results are put back in sample order."""
    model.eval()
    device = dist_info.device
    amp_dtype = autocast_dtype(device, args.amp)
    n, size = len(dataset), args.batch_size
    batches = [list(range(i, min(i + size, n))) for i in range(0, n, size)][dist_info.rank :: dist_info.world_size]
    # a private generator for the workers' base seed: evaluating must not move the global RNG (dropout)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=args.workers,
                                         worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(args.seed),
                                         pin_memory=torch.cuda.is_available())
    rows = [torch.zeros(0, 6, dtype=torch.float64, device=device)]  # a rank may get no batch
    for indices, batch in zip(batches, loader):
        frames, labels = batch["frames"].to(device, non_blocking=True), batch["label"].to(device)
        with autocast(device, amp_dtype):
            logits = model(frames)
        weighted, w = classification_loss(logits, labels, class_weights, reduction="none")
        columns = (torch.tensor(indices, device=device), weighted, w, fake_probability(logits), labels,
                   batch["video"].to(device))
        rows.append(torch.stack([c.double() for c in columns], dim=1))  # [B, 6], exact for these values
    table = gather_cat(torch.cat(rows))
    table = table[table[:, 0].argsort()].cpu()  # rank by rank -> sample order
    weighted, w, probs = table[:, 1].float(), table[:, 2].float(), table[:, 3].float()
    labels, videos = table[:, 4].long(), table[:, 5].long()
    metrics = {"loss": float(weighted.sum() / w.sum())}
    metrics.update(binary_metrics(labels, probs, videos))
    model.train()
    return metrics, labels, probs


def evaluate_checkpoint(path, split: str = "test", device: str = "cpu") -> dict:
    """The metrics of a checkpoint on one split in this one process, data and model rebuilt from the
    checkpoint's own settings: the flat dict main() puts in results["test"]."""
    checkpoint = load_run_checkpoint(path, PROJECT)
    args = build_parser().parse_args([])
    vars(args).update(checkpoint["args"])
    cfg = configs_from(args)
    datasets, class_weights, _ = make_datasets(cfg.data, args.seed)
    model = DeepfakeDetector(dataclasses.replace(cfg.model, pretrained=False)).to(device)  # weights: the checkpoint's
    load_model_state(model, checkpoint["model"], path)
    dist_info = DistInfo(device=torch.device(device))
    return evaluate(model, datasets[split], args, dist_info, class_weights.to(device))[0]


@dataclass
class LoopState:
    """Where the run is, and what a resume needs besides weights, optimizer, controller and RNG."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    last_val: dict = field(default_factory=dict)  # metrics of the latest validation
    window: dict = field(default_factory=lambda: {k: [] for k in WINDOW})  # this rank's outputs since the last train row


def resumed_state(progress: dict, dist_info: DistInfo) -> LoopState:
    windows = progress["extra"]["windows"]  # one per rank of the run that saved it
    own = windows[dist_info.rank] if dist_info.rank < len(windows) else {}
    window = {k: [own[k].to(dist_info.device)] if len(own.get(k, [])) else [] for k in WINDOW}
    return LoopState(progress["step"], progress["epoch"], progress["batch_in_epoch"], progress["extra"]["last_val"],
                     window)


@dataclass
class Setup:
    """The fixed pieces the loop, the validation and the checkpoints share."""
    run: Run
    args: argparse.Namespace
    dist_info: DistInfo
    datasets: dict
    class_weights: torch.Tensor
    sampler: EpochSampler  # this rank's training order
    batches_per_epoch: int
    max_iters: int  # --max-iters, or fewer under --epochs
    tb: object = None  # a SummaryWriter on rank 0 with --tensorboard, else None
    plt: object = None  # pyplot on rank 0 with --overlays when matplotlib is installed, else None


def save(setup: Setup, name: str, model, optimizer, scaler, controller, state: LoopState) -> None:
    """A full run checkpoint; `name` "periodic" writes step<N>.pt. Every rank must call it."""
    own = {k: torch.cat(v).cpu() if v else torch.empty(0) for k, v in state.window.items()}
    windows = [own]
    if setup.dist_info.enabled:  # each rank's own window: rank 0's alone would not resume rank 1
        windows = [None] * setup.dist_info.world_size
        dist.all_gather_object(windows, own)
    extra = {
        # FIX(DFD-MINLR-STOP): the controller's state replaces torch's scheduler state.
        # was: "scheduler": scheduler.state_dict(),
        "controller": controller.state_dict(),
        "last_val": state.last_val, "windows": windows}
    progress = {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch}
    if name == "periodic":
        setup.run.save_periodic(state.step, model, optimizer, scaler, progress, extra)
    else:
        setup.run.save(name, model, optimizer, scaler, progress, extra)


def train_one_epoch(model, ddp_model, optimizer, scaler, controller, setup: Setup, state: LoopState) -> bool:
    """Optimizer steps until the epoch, --max-iters or the lr floor ends them, with train rows,
    validations and last.pt at their intervals. True when a stop signal asks to save and exit."""
    args, run, device = setup.args, setup.run, setup.dist_info.device
    amp_dtype = autocast_dtype(device, args.amp)
    train_set = setup.datasets["train"]
    setup.sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
    train_set.set_epoch(state.epoch)
    ddp_model.train()
    for batch in make_loader(train_set, setup.sampler, args, state.epoch):
        frames, labels = batch["frames"].to(device, non_blocking=True), batch["label"].to(device)
        # FIX(DFD-MINLR-STOP): the lr is written from the controller's state at every step.
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state.step, controller.lr, args.warmup_steps)
        with autocast(device, amp_dtype):
            logits, attention_map = ddp_model(frames, return_attention=True)
        loss_cls = classification_loss(logits, labels, setup.class_weights)
        components = {"cls": loss_cls}
        loss = loss_cls
        if args.attention_loss_weight > 0:
            components["attention"] = attention_loss(attention_map, batch["mask"].to(device))
            loss = loss + args.attention_loss_weight * components["attention"]
        check_finite(components, state.step)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1
        for key, value in zip(WINDOW, (loss_cls.detach().view(1), fake_probability(logits.detach()), labels,
                                       batch["video"].to(device))):
            state.window[key].append(value)

        if state.step % args.log_interval == 0:
            log_train_window(setup, state, optimizer.param_groups[0]["lr"])
        do_validate = state.step % args.val_interval == 0
        # FIX(DFD-VAL-CADENCE): validate at every epoch end and the last step too, not only every N steps.
        do_validate = do_validate or state.batch_in_epoch == setup.batches_per_epoch or state.step == setup.max_iters
        if do_validate:
            validate(model, optimizer, scaler, controller, setup, state)
        if args.ckpt_interval and state.step % args.ckpt_interval == 0:
            save(setup, "last.pt", model, optimizer, scaler, controller, state)
        if run.should_stop():
            return True
        if state.step >= setup.max_iters or controller.should_stop():
            break
    return False


def log_train_window(setup: Setup, state: LoopState, lr: float) -> None:
    """Metrics of the training outputs since the last train row, over all ranks."""
    merged = {k: gather_cat(torch.cat(v)).cpu() for k, v in state.window.items()}
    metrics = {"loss": float(merged["loss"].mean())}
    metrics.update(binary_metrics(merged["label"], merged["prob"], merged["video"]))
    state.window = {k: [] for k in WINDOW}
    setup.run.log({"step": state.step, "epoch": state.epoch, "split": "train", "lr": lr, **metrics})
    setup.run.print(f"step {state.step} train loss {metrics['loss']:.4f} acc {metrics['acc']:.3f} "
                    f"auc {metrics['roc_auc']:.3f}")
    if setup.tb is not None:
        for k, v in metrics.items():
            setup.tb.add_scalar(f"train/{k}", v, state.step)


def validate(model, optimizer, scaler, controller, setup: Setup, state: LoopState) -> None:
    """Validation metrics, the plateau controller, the log row, a periodic checkpoint and best.pt
    on the validation loss (every rank); TensorBoard and overlays on rank 0."""
    run, args, data = setup.run, setup.args, setup.datasets
    # FIX(DFD-VAL-DATA): validate on the validation split; the seed validated on the training set.
    metrics, val_labels, val_probs = evaluate(model, data["val"], args, setup.dist_info, setup.class_weights)
    # FIX(DFD-MINLR-STOP): the controller steps on the validation loss and decides when to stop.
    controller.step(metrics["loss"])
    state.last_val = metrics
    run.log({"step": state.step, "epoch": state.epoch, "split": "val", "lr": optimizer.param_groups[0]["lr"], **metrics})
    run.print(f"step {state.step} VAL loss {metrics['loss']:.4f} acc {metrics['acc']:.3f} "
              f"roc_auc {metrics['roc_auc']:.3f} video_roc_auc {metrics['video_roc_auc']:.3f}")
    if run.improved(metrics["loss"], state.step, state.epoch):
        save(setup, "best.pt", model, optimizer, scaler, controller, state)
    save(setup, "periodic", model, optimizer, scaler, controller, state)
    if is_main():
        if setup.tb is not None:
            for k, v in metrics.items():
                setup.tb.add_scalar(f"val/{k}", v, state.step)
            setup.tb.add_pr_curve("val/pr_curve", val_labels, val_probs, state.step)
        if args.overlays:
            save_overlays(setup.plt, model, data["val"], run.dir, state.step, state.epoch, setup.tb)
    if controller.should_stop():
        run.print(f"lr reached its floor {controller.min_lr:.3g} without improvement: stopping at step {state.step}")


@torch.no_grad()
def save_overlays(plt, model, dataset, run_dir: Path, step: int, epoch: int, tb) -> None:
    """The first real and the first fake validation video (its first sequence): the T frames on top,
    the backbone's attention map over the same frames below with a colour bar; true and predicted class
    in the caption. PNG with matplotlib (`plt`), the plain frame/heat grid to TensorBoard."""
    if plt is None and tb is None:
        return
    model.eval()
    if plt is not None:
        (run_dir / "overlays").mkdir(exist_ok=True)
    for label, name in enumerate(CLASS_NAMES):
        video = next(i for i, r in enumerate(dataset.records) if r.label == label)
        frames = dataset[video * dataset.clips]["frames"]  # [T, 3, S, S]
        logits, attention_map = model(frames.unsqueeze(0).to(next(model.parameters()).device), return_attention=True)
        p_fake = float(fake_probability(logits)[0])
        if tb is not None:
            heat, rgb = upsample_map(attention_map[0], frames.shape[-1]), denormalize(frames)  # [T, 1, S, S], [T, 3, S, S]
            red = torch.cat([heat, torch.zeros_like(heat), torch.zeros_like(heat)], dim=1)
            tb.add_image(f"attention/{name}", make_grid(torch.cat([rgb, 0.4 * rgb + 0.6 * red]), nrow=len(rgb), padding=1),
                         step)
        if plt is None:
            continue
        rgb, _ = enlarge(denormalize(frames))  # each frame at least TILE px
        heat = upsample_map(attention_map[0], rgb.shape[-1])  # [T, 1, S', S']
        grid = make_grid(rgb, nrow=len(rgb), padding=8, pad_value=1.0)
        heat_grid = make_grid(heat, nrow=len(rgb), padding=8, pad_value=float("nan"))[0]  # NaN: gaps not drawn
        predicted = CLASS_NAMES[int(p_fake >= 0.5)]
        caption = (f"video {dataset.records[video].video}: true {name}, predicted {predicted} (P(fake) {p_fake:.2f}, "
                   f"{'right' if predicted == name else 'wrong'}); frames 1-{len(rgb)} of its first sequence")
        title = (f"deepfake_effnet_lstm attention, validation split, step {step} (epoch {epoch}): "
                 f"the first {name} video")
        fig, (_, bottom) = sheet(plt, [(grid, caption), (grid, "attention map of the backbone on each frame")], title)
        shown = bottom.imshow(heat_grid.numpy(), cmap="inferno", alpha=0.6, vmin=0.0, vmax=1.0, interpolation="nearest")
        colorbar(fig, bottom, shown, "attention (0-1)")
        save_figure(plt, fig, run_dir / "overlays" / f"step{step:06d}_{name}.png")
    model.train()


def overlay_pyplot(args, run: Run):
    """pyplot on rank 0 with --overlays, else None; says once when matplotlib is missing."""
    if not args.overlays or not is_main():
        return None
    plt = pyplot_or_none()
    if plt is None:
        run.print("attention overlay PNGs skipped: pip install matplotlib")
    return plt


def open_tensorboard(args, run_dir: Path):
    if not args.tensorboard or not is_main():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("TensorBoard logging off: `pip install tensorboard` to enable it (or pass --no-tensorboard)")
        return None
    return SummaryWriter(str(run_dir / "tb"))


def print_table(title: str, metrics: dict) -> None:
    print(f"\n{title}\n{'':10s}" + "".join(f"{m:>10s}" for m in METRICS))
    print(f"{'sequence':10s}" + "".join(f"{metrics[m]:10.4f}" for m in METRICS))
    print(f"{'video':10s}{'':10s}" + "".join(f"{metrics['video_' + m]:10.4f}" for m in METRICS[1:]))


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args, resumed = parse_with_resume(parser, argv, PROJECT)
    check_flags(parser, args)
    cfg = configs_from(resolve_defaults(args))
    config = config_dict(cfg, args)
    dist_info = setup_distributed(args.device)
    device = dist_info.device
    if resumed:
        check_resume_config(resumed, config, RESUME_KEYS, args.resume)
    run = Run(PROJECT, args, config, DEFAULT_OUT, resumed, best_metric="val_loss", best_mode="min")
    with run:
        started = time.time()
        seed_everything(args.seed + dist_info.rank)  # per-rank dropout streams; DDP copies rank 0's initial weights
        datasets, class_weights, info = make_datasets(cfg.data, args.seed)
        padded = f", {info['padded']} short videos padded" if info["padded"] else ""
        run.print("videos: " + ", ".join(f"{s} {n}" for s, n in info["videos"].items()) + f" ({info['source']}{padded})")
        run.print(f"class weights (real, fake): {[round(w, 3) for w in class_weights.tolist()]}")
        sampler = make_train_sampler(datasets, args, dist_info)
        batches_per_epoch = sampler.batches_per_epoch()
        max_iters = args.max_iters if args.epochs is None else min(args.max_iters, args.epochs * batches_per_epoch)

        model = DeepfakeDetector(cfg.model).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        scaler = make_grad_scaler(device, autocast_dtype(device, args.amp))
        min_lr = args.lr * args.min_lr_factor
        # FIX(DFD-MINLR-STOP): lands on min_lr; torch's scheduler skips steps below eps and never got there.
        controller = PlateauController(args.lr, 0.1, args.plateau_patience, args.plateau_cooldown, min_lr)
        state = LoopState()
        progress = run.restore(model, optimizer, scaler)
        if progress is not None:
            state = resumed_state(progress, dist_info)
            # FIX(DFD-RESUME-LR): restore the plateau controller; a fresh one restarted at --lr.
            controller.load_state_dict(progress["extra"]["controller"])
        run.open(LOG_COLUMNS, checkpoint_bytes(model, optimizer))
        run.restore_rng()
        ddp_model = wrap_ddp(model, dist_info)
        setup = Setup(run, args, dist_info, datasets, class_weights.to(device), sampler, batches_per_epoch,
                      max_iters, open_tensorboard(args, run.dir), overlay_pyplot(args, run))

        while state.step < max_iters and not controller.should_stop():
            stopped = train_one_epoch(model, ddp_model, optimizer, scaler, controller, setup, state)
            if state.batch_in_epoch == batches_per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            save(setup, "last.pt", model, optimizer, scaler, controller, state)
            if stopped:
                run.exit_stopped(state.step)

        results = {"run_dir": str(run.dir), "step": state.step, "best": run.best, "val": state.last_val,
                   "stopped_early": controller.should_stop(), "lr": controller.lr}
        if args.test:
            run.load_best(model)
            results["test"] = evaluate(model, datasets["test"], args, dist_info, setup.class_weights)[0]
            if is_main():
                print_table(f"test split, best.pt (step {run.best['step']})", results["test"])
                (run.dir / "test_metrics.json").write_text(json.dumps(results["test"], indent=2))
        if is_main() and state.last_val:
            print_table(f"validation at step {state.step}", state.last_val)
        nan = float("nan")
        run.print(f"\nfinal validation ROC-AUC {state.last_val.get('roc_auc', nan):.4f} (per video "
                  f"{state.last_val.get('video_roc_auc', nan):.4f}), best val loss {run.best['value'] or nan:.4f} at "
                  f"step {run.best['step']}, {time.time() - started:.0f} s")
        if setup.tb is not None:
            setup.tb.close()
        assert_replicas_in_sync(model)  # under torchrun: every rank must end with the same weights
        run.finish(results)
    del ddp_model  # a DDP wrapper must not outlive its process group
    cleanup_distributed()
    return results


if __name__ == "__main__":
    run_cli(main)
