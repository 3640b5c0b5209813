"""Train the EfficientNet-B0 + LSTM deepfake detector.

    python deepfake_effnet_lstm/train.py                       # synthetic demo (flickering fakes)
    python deepfake_effnet_lstm/train.py --data-root faces/ --frames 16 --pretrained   # ImageNet weights, 224 px
    python deepfake_effnet_lstm/train.py --data-root faces/ --pretrained efficientnet_b0.pth    # offline weights
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project, when run as a script

import argparse
import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from common import cli, runtime
from common.checkpoint import CheckpointError, checkpoint_bytes, load_model_state, load_run_checkpoint
from common.cli import arg, at_least
from common.lifecycle import Run, RunSettings, State
from common.metrics import accuracy, precision_recall_f1
from deepfake_effnet_lstm import model as model_lib
from deepfake_effnet_lstm import plots
from deepfake_effnet_lstm.data import DataConfig, default_image_size, make_datasets
from deepfake_effnet_lstm.metrics import PlateauController, average_precision, roc_auc

PROJECT = "deepfake_effnet_lstm"
DEFAULT_OUT = f"runs/{PROJECT}"
# keys that define the architecture and the class count: a resume with other values is refused
RESUME_KEYS = ["attention", "attention_stage", "lstm_hidden", "lstm_layers", "bidirectional", "num_logits",
               "image_size"]
METRICS = ["loss", "acc", "precision", "f1", "roc_auc", "ap"]
LOG_COLUMNS = ["step", "epoch", "split", "lr"] + METRICS + [f"video_{m}" for m in METRICS[1:]]
WINDOW = ("loss", "prob", "label", "video")  # training outputs kept between two train rows
MODEL_CHECKS = {"attention": ["gate", "cbam", "none"],
                "attention_stage": cli.between(0, len(model_lib.STAGE_CHANNELS) - 2, int),
                "lstm_hidden": at_least(1), "lstm_layers": at_least(1), "num_logits": [1, 2],
                "dropout": cli.between(0.0, 1.0)}


@dataclass
class TrainConfig:
    lr: float | None = arg(None, "Adam learning rate (default: 1e-5 with --data-root, icpr2020dfdc's; 1e-3 on the "
                           "synthetic demo, which starts from random weights on tiny frames)", check=cli.above(0.0))
    warmup_steps: int = arg(0, "linear lr warm-up in optimizer steps (0: none, as icpr2020dfdc)", check=at_least(0))
    batch_size: int = arg(8, "sequences per step and per process", check=at_least(1))
    max_iters: int = arg(200, "stop after this many optimizer steps", check=at_least(1))
    epochs: int | None = arg(None, "optional cap on epochs (default: none, --max-iters decides)", check=at_least(1))
    grad_clip: float = arg(1.0, "max gradient norm (0 = off)", check=at_least(0.0, float))
    attention_loss_weight: float = arg(0.0, "weight of the attention mask loss (needs masks: --mask-root, or the "
                                       "synthetic data; 0: off)", check=at_least(0.0, float))
    plateau_patience: int = arg(10, "validations without improvement before lr / 10", check=at_least(0))
    plateau_cooldown: int = arg(20, "validations to wait after a reduction", check=at_least(0))
    min_lr_factor: float = arg(1e-5, "min_lr = lr x this; the run stops when the lr sits there without improving",
                               check=cli.between(0.0, 1.0))


@dataclass
class EvalConfig:
    val_interval: int = arg(500, "optimizer steps between validations, as icpr2020dfdc (also at every epoch end and "
                            "at the last step)", check=at_least(1))
    test: bool = arg(False, "score best.pt on the test split at the end (results.json, test_metrics.json)")
    tensorboard: bool = arg(True, "TensorBoard scalars, PR curves and overlays (when tensorboard is installed)")
    overlays: bool = arg(True, "attention overlay PNGs (one real, one fake validation video) at every validation")


@dataclass
class Config:
    """The whole configuration, one object; main() adds what exists only once data and run folder do."""
    model: model_lib.DetectorConfig
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig
    run: RunSettings
    class_weights: torch.Tensor | None = None  # (real, fake) loss weights from the training split, on the device
    tb: object = None  # a TensorBoard SummaryWriter on rank 0 with --tensorboard, else None


SECTIONS = {"data": DataConfig, "model": model_lib.DetectorConfig, "train": TrainConfig, "eval": EvalConfig}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_args(parser, DataConfig, "data")
    model = cli.add_args(parser, model_lib.DetectorConfig, "model", checks=MODEL_CHECKS, exclude=["pretrained"])
    model.add_argument("--pretrained", nargs="?", const="imagenet", default=None, metavar="imagenet|FILE|none",
                       help="backbone weights: torchvision's ImageNet efficientnet_b0 (bare flag or 'imagenet', a "
                            "download), an efficientnet_b0 state_dict FILE (offline), or 'none' (random init). "
                            "Default: none on the synthetic demo; --data-root needs it said")
    cli.add_args(parser, TrainConfig, "optimisation")
    cli.add_args(parser, EvalConfig, "evaluation")
    cli.run_args(parser, DEFAULT_OUT, ckpt_interval=25, log_interval=25)
    return parser


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks that involve two flags: parse errors (exit 2) before anything runs."""
    if args.val_fraction + args.test_fraction >= 1:
        parser.error(f"--val-fraction {args.val_fraction} + --test-fraction {args.test_fraction} leave no "
                     f"training videos")
    if args.attention_loss_weight > 0 and args.data_root and not args.mask_root:
        parser.error("--attention-loss-weight needs masks: pass --mask-root (the synthetic data has them)")
    if args.data_root and args.pretrained is None and not args.resume:
        parser.error("--data-root: say which backbone weights to fine-tune, as icpr2020dfdc and the seed start from "
                     "ImageNet: --pretrained (torchvision's, a download) or --pretrained FILE (an efficientnet_b0 "
                     "state_dict); --pretrained none trains a random backbone on purpose")
    if args.attention_loss_weight > 0 and args.attention == "none":
        parser.error("--attention-loss-weight needs an attention module: --attention gate or cbam")


def config_from(args: argparse.Namespace) -> Config:
    """The Config of parsed flags; the recipe-dependent defaults are written back into `args`, so
    checkpoints hold them: real data fine-tunes as icpr2020dfdc does (lr 1e-5, train_binclass.py:65;
    224 px, scripts/train_all.sh:18; noise, downscaling and JPEG, isplutils/utils.py:159-194)."""
    if args.lr is None:
        args.lr = 1e-5 if args.data_root else 1e-3
    if args.image_size is None:
        args.image_size = default_image_size(args.data_root)
    if args.aug_icpr is None:
        args.aug_icpr = bool(args.data_root)
    if args.pretrained is None:
        args.pretrained = "none"
    return Config(cli.from_args(model_lib.DetectorConfig, args), cli.from_args(DataConfig, args),
                  cli.from_args(TrainConfig, args), cli.from_args(EvalConfig, args), RunSettings.from_args(args))


def config_dict(cfg: Config, args: argparse.Namespace) -> dict:
    """config.json and the checkpoints' "config": the sections, plus every run flag."""
    own = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    return {**{name: dataclasses.asdict(getattr(cfg, name)) for name in SECTIONS},
            "run": {k: v for k, v in vars(args).items() if k not in own}}


def lr_at(step: int, plateau_lr: float, warmup_steps: int) -> float:
    """Linear warm-up to the plateau controller's lr over `warmup_steps`, then that lr."""
    if step < warmup_steps:
        return plateau_lr * (step + 1) / warmup_steps
    return plateau_lr


def plateau_controller(cfg: Config, saved: dict | None = None) -> PlateauController:
    """lr / 10 after --plateau-patience validations without a lower loss, down to lr x --min-lr-factor,
    where the run stops; `saved`: its state from state.meters["controller"] (where the run is)."""
    # FIX(DFD-MINLR-STOP): lands on min_lr; torch's scheduler skips steps below eps and never got there.
    controller = PlateauController(cfg.train.lr, 0.1, cfg.train.plateau_patience, cfg.train.plateau_cooldown,
                                   cfg.train.lr * cfg.train.min_lr_factor)
    if saved is not None:
        controller.load_state_dict(saved)
    return controller


def make_train_sampler(datasets: dict, cfg: Config, dist_info: runtime.DistInfo) -> runtime.EpochSampler:
    """This rank's shard of the training order; splits too small to train or test on are a DataError."""
    sampler = runtime.EpochSampler(len(datasets["train"]), cfg.train.batch_size, shuffle=True, seed=cfg.run.seed,
                                   rank=dist_info.rank, world_size=dist_info.world_size, drop_last=True)
    if sampler.batches_per_epoch() == 0:
        raise runtime.DataError(f"the train split gives 0 batches: {len(datasets['train'])} sequences over "
                                f"{dist_info.world_size} process(es) at --batch-size {cfg.train.batch_size} "
                                f"(incomplete batches are dropped); lower --batch-size or add training videos")
    if cfg.eval.test and len(datasets["test"]) == 0:
        raise runtime.DataError("--test: the test split is empty (--test-fraction 0, or no test rows in the index)")
    return sampler


class WholeBatches(runtime.EpochSampler):
    """Evaluation order: the batches of a one-process run dealt whole to the ranks, so under torchrun
    every sequence is scored in the same batch as alone, bit for bit."""

    def _indices(self) -> list[int]:
        starts = range(0, self.num_samples, self.batch_size)[self.rank :: self.world_size]
        return [i for start in starts for i in range(start, min(start + self.batch_size, self.num_samples))]


def eval_loader(dataset, cfg: Config) -> torch.utils.data.DataLoader:
    """The loader of a validation or test split (this rank's batches, in sample order)."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    sampler = WholeBatches(len(dataset), cfg.train.batch_size, shuffle=False, rank=rank, world_size=world,
                           drop_last=False)
    return runtime.make_loader(dataset, sampler, cfg.run.workers, cfg.run.seed)


def binary_metrics(labels: torch.Tensor, probs: torch.Tensor, videos: torch.Tensor) -> dict:
    """Per sequence and per video (mean P(fake) over the video's sequences). Threshold 0.5 for the
    label-based metrics; ROC-AUC and AP rank the probabilities. A window holding one class gives
    NaN ROC-AUC (logged as nan), not a crash."""
    out = {}
    for prefix, (y, p) in {"": (labels, probs), "video_": model_lib.per_video(labels, probs, videos)}.items():
        preds = (p >= 0.5).long()
        out[prefix + "acc"] = accuracy(y, preds)
        out[prefix + "precision"], _, out[prefix + "f1"] = precision_recall_f1(y, preds, 2, average="weighted")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one-class windows: NaN is the honest value
            # FIX(DFD-AUC-SCORES): rank probabilities; hard labels collapse the ROC curve to one point.
            out[prefix + "roc_auc"], out[prefix + "ap"] = roc_auc(y, p), average_precision(y, p)
    return out


def log_train_window(state: State, cfg: Config, run: Run) -> None:
    """Metrics of the training outputs since the last train row, over all ranks."""
    device = next(state.model.parameters()).device  # a resumed window was loaded on the CPU
    merged = {k: runtime.gather_cat(torch.cat([t.to(device) for t in v])).cpu()
              for k, v in state.meters["window"].items()}
    metrics = {"loss": float(merged["loss"].mean()), **binary_metrics(merged["label"], merged["prob"], merged["video"])}
    state.meters["window"] = {k: [] for k in WINDOW}
    run.log({"step": state.step, "epoch": state.epoch, "split": "train", "lr": state.optimizer.param_groups[0]["lr"],
             **metrics})
    run.print(f"step {state.step} train loss {metrics['loss']:.4f} acc {metrics['acc']:.3f} "
              f"auc {metrics['roc_auc']:.3f}")
    plots.log_scalars(cfg.tb, "train", metrics, state.step)


def share_windows(state: State) -> None:
    """Before a checkpoint under torchrun: every rank's training window into state.meters["windows"],
    since rank 0 alone writes the checkpoint and its own window would not resume the others."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    own = {k: [torch.cat(v).cpu()] if v else [] for k, v in state.meters["window"].items()}
    state.meters["windows"] = [None] * dist.get_world_size()
    dist.all_gather_object(state.meters["windows"], own)


def print_table(title: str, metrics: dict) -> None:
    print(f"\n{title}\n{'':10s}" + "".join(f"{m:>10s}" for m in METRICS))
    print(f"{'sequence':10s}" + "".join(f"{metrics[m]:10.4f}" for m in METRICS))
    print(f"{'video':10s}{'':10s}" + "".join(f"{metrics['video_' + m]:10.4f}" for m in METRICS[1:]))


@torch.no_grad()
def score(model, loader, cfg: Config) -> dict[str, torch.Tensor]:
    """Per sequence of a whole split, in sample order, gathered over the ranks: the class-weighted loss
    and its weight, P(fake), label and video. Equal to a one-process scoring under torchrun too (the
    loader deals whole batches, see WholeBatches). The model is handed back in training mode."""
    model.eval()
    device = next(model.parameters()).device
    dtype = runtime.autocast_dtype(device, cfg.run.amp)
    indices, size = list(loader.sampler), loader.batch_size
    rows = [torch.zeros(0, 6, dtype=torch.float64, device=device)]  # a rank may get no batch
    for start, batch in zip(range(0, len(indices), size), loader):
        frames, labels = batch["frames"].to(device, non_blocking=True), batch["label"].to(device)
        with runtime.autocast(device, dtype):
            logits = model(frames)
        weighted, weights = model_lib.classification_loss(logits, labels, cfg.class_weights, reduction="none")
        columns = (torch.tensor(indices[start : start + size], device=device), weighted, weights,
                   model_lib.fake_probability(logits), labels, batch["video"].to(device))
        rows.append(torch.stack([c.double() for c in columns], dim=1))  # [B, 6], exact for these values
    table = runtime.gather_cat(torch.cat(rows))
    table = table[table[:, 0].argsort()].cpu()  # rank by rank -> sample order
    model.train()
    return {"weighted_loss": table[:, 1].float(), "weight": table[:, 2].float(), "p_fake": table[:, 3].float(),
            "label": table[:, 4].long(), "video": table[:, 5].long()}


def split_metrics(scores: dict[str, torch.Tensor], split: str = "validation") -> dict:
    """The split's class-weighted loss, and the metrics per sequence and per video. Non-finite model
    outputs stop the run here, named, before the metrics see them."""
    bad = ~torch.isfinite(scores["p_fake"]) | ~torch.isfinite(scores["weighted_loss"])
    if bool(bad.any()):
        raise runtime.NonFiniteLossError(f"{split}: the model's output is NaN/Inf for {int(bad.sum())} of {len(bad)} "
                                         f"sequences (P(fake) and loss): weights or BatchNorm running statistics went "
                                         f"non-finite (too high a --lr?)")
    loss = float(scores["weighted_loss"].sum() / scores["weight"].sum())
    return {"loss": loss, **binary_metrics(scores["label"], scores["p_fake"], scores["video"])}


@torch.no_grad()
def evaluate(model, loader, cfg: Config, split: str = "test") -> dict:
    """Loss and metrics of a whole split (every rank calls it)."""
    return split_metrics(score(model, loader, cfg), split)


def evaluate_checkpoint(path, split: str = "test", device: str = "cpu") -> dict:
    """The metrics of a checkpoint on one split in this one process, data and model rebuilt from the
    checkpoint's own settings: the flat dict main() puts in results["test"]."""
    checkpoint = load_run_checkpoint(path, PROJECT)
    args = build_parser().parse_args([])
    vars(args).update(checkpoint["args"])
    cfg = config_from(args)
    datasets, class_weights, _ = make_datasets(cfg.data, cfg.run.seed)
    cfg.class_weights = class_weights.to(device)
    model = model_lib.DeepfakeDetector(dataclasses.replace(cfg.model, pretrained="none")).to(device)
    load_model_state(model, checkpoint["model"], path)  # weights: the checkpoint's
    return evaluate(model, eval_loader(datasets[split], cfg), cfg, split)


def validate(state: State, loader, cfg: Config, run: Run) -> dict:
    """Validation metrics, the plateau controller, the log row, a periodic checkpoint and best.pt
    on the validation loss (every rank); TensorBoard and overlays on rank 0."""
    model = runtime.unwrap(state.model)
    scores = score(model, loader, cfg)
    metrics = split_metrics(scores, f"validation at step {state.step}")
    # FIX(DFD-MINLR-STOP): the controller steps on the validation loss and decides when to stop.
    controller = plateau_controller(cfg, state.meters["controller"])
    controller.step(metrics["loss"])
    state.meters["controller"], state.meters["last_val"] = controller.state_dict(), metrics
    lr = state.optimizer.param_groups[0]["lr"]  # the lr this step trained at
    run.log({"step": state.step, "epoch": state.epoch, "split": "val", "lr": lr, **metrics})
    run.print(f"step {state.step} VAL loss {metrics['loss']:.4f} acc {metrics['acc']:.3f} "
              f"roc_auc {metrics['roc_auc']:.3f} video_roc_auc {metrics['video_roc_auc']:.3f}")
    share_windows(state)
    if run.improved(metrics["loss"], state.step, state.epoch):
        run.save("best.pt", state)
    run.save_periodic(state)
    if runtime.is_main():
        plots.log_scalars(cfg.tb, "val", metrics, state.step)
        plots.log_pr_curve(cfg.tb, scores["label"], scores["p_fake"], state.step)
        if cfg.eval.overlays:
            plots.save_overlays(model, loader.dataset, run.dir, state.step, state.epoch, cfg.tb)
    if controller.should_stop():
        run.print(f"lr reached its floor {controller.min_lr:.3g} without improvement: stopping at step {state.step}")
    return metrics


def train_one_epoch(state: State, loader, val_loader, cfg: Config, run: Run) -> bool:
    """From state's position to the end of its epoch, --max-iters or the lr floor, with train rows,
    validations and last.pt at their intervals. True when a stop signal came."""
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    device = next(model.parameters()).device
    dtype = runtime.autocast_dtype(device, cfg.run.amp)
    batches_per_epoch = loader.sampler.batches_per_epoch()
    model.train()
    for batch in loader:
        frames, labels = batch["frames"].to(device, non_blocking=True), batch["label"].to(device)
        # FIX(DFD-MINLR-STOP): the lr is written from the controller's state at every step.
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state.step, state.meters["controller"]["lr"], cfg.train.warmup_steps)
        with runtime.autocast(device, dtype):
            logits, attention_map = model(frames, return_attention=True)
        loss_cls = model_lib.classification_loss(logits, labels, cfg.class_weights)
        components = {"cls": loss_cls}
        loss = loss_cls
        if cfg.train.attention_loss_weight > 0:
            components["attention"] = model_lib.attention_loss(attention_map, batch["mask"].to(device))
            loss = loss + cfg.train.attention_loss_weight * components["attention"]
        runtime.check_finite(components, state.step)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1
        outputs = (loss_cls.detach().view(1), model_lib.fake_probability(logits.detach()), labels,
                   batch["video"].to(device))
        for key, value in zip(WINDOW, outputs):
            state.meters["window"][key].append(value)

        if state.step % cfg.run.log_interval == 0:
            log_train_window(state, cfg, run)
        do_validate = state.step % cfg.eval.val_interval == 0
        # FIX(DFD-VAL-CADENCE): validate at every epoch end and the last step too, not only every N steps.
        do_validate = do_validate or state.batch_in_epoch == batches_per_epoch or state.step == cfg.train.max_iters
        if do_validate:
            validate(state, val_loader, cfg, run)
        if cfg.run.ckpt_interval and state.step % cfg.run.ckpt_interval == 0:
            share_windows(state)
            run.save("last.pt", state)
        if run.should_stop():
            return True
        if state.step >= cfg.train.max_iters or state.meters["controller"]["stopped"]:
            return False
    return False


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args, resumed = cli.parse_with_resume(parser, argv, PROJECT)
    check_flags(parser, args)
    cfg = config_from(args)
    config = config_dict(cfg, args)
    dist_info = runtime.setup_distributed(cfg.run.device)
    device = dist_info.device
    if resumed:
        cli.check_resume_config(resumed, config, RESUME_KEYS, args.resume)
    run = Run(PROJECT, args, config, DEFAULT_OUT, resumed, best_metric="val_loss", best_mode="min")
    with run:
        started = time.time()
        # per-rank dropout streams; DDP copies rank 0's initial weights
        runtime.seed_everything(cfg.run.seed + dist_info.rank)
        datasets, class_weights, info = make_datasets(cfg.data, cfg.run.seed)
        padded = f", {info['padded']} short videos padded" if info["padded"] else ""
        sequences, videos = (", ".join(f"{s} {n}" for s, n in info[k].items()) for k in ("sequences", "videos"))
        run.print(f"sequences (one per person in a video): {sequences}; videos: {videos} ({info['source']}{padded})")
        run.print(f"class weights (real, fake): {[round(w, 3) for w in class_weights.tolist()]}")
        cfg.class_weights = class_weights.to(device)
        sampler = make_train_sampler(datasets, cfg, dist_info)
        batches_per_epoch = sampler.batches_per_epoch()
        # FIX(DFD-VAL-DATA): validate on the validation split; the seed validated on the training set.
        val_loader = eval_loader(datasets["val"], cfg)

        try:
            # channels_last on CUDA (bench.py: EfficientNet-B0 frames fwd+bwd 0.52x the time even on CPU); the CPU
            # keeps the contiguous layout and its results bit for bit
            layout = torch.channels_last if device.type == "cuda" else torch.preserve_format
            model = model_lib.DeepfakeDetector(cfg.model).to(device, memory_format=layout)
        except model_lib.WeightsFileError as e:  # one line naming the file, printed by run_cli
            raise CheckpointError(str(e)) from None
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=device.type == "cuda")  # see bench.py
        scaler = runtime.make_grad_scaler(device, runtime.autocast_dtype(device, cfg.run.amp))
        state = State(runtime.compile_model(runtime.wrap_ddp(model, dist_info), cfg.run.compile), optimizer, scaler)
        # FIX(DFD-RESUME-LR): the controller's state is a meter, saved and restored; a fresh one restarted at --lr.
        state.meters = {"controller": plateau_controller(cfg).state_dict(), "last_val": {},
                        "window": {k: [] for k in WINDOW}}  # this rank's training outputs since the last train row
        if run.restore(state) and "windows" in state.meters:  # torchrun: every rank's window; this rank's own
            state.meters["window"] = state.meters.pop("windows")[dist_info.rank]
        run.open(LOG_COLUMNS, checkpoint_bytes(model, optimizer))
        run.restore_rng()
        cfg.tb = plots.open_tensorboard(cfg.eval.tensorboard, run.dir)
        plots.say_if_no_matplotlib(cfg.eval.overlays, run)

        for epoch in range(state.epoch, cfg.train.epochs or math.ceil(cfg.train.max_iters / batches_per_epoch)):
            if state.step >= cfg.train.max_iters or state.meters["controller"]["stopped"]:
                break  # a resumed run that had already finished
            sampler.set_epoch(epoch, start_batch=state.batch_in_epoch)
            datasets["train"].set_epoch(epoch)
            loader = runtime.make_loader(datasets["train"], sampler, cfg.run.workers, cfg.run.seed, epoch)
            stopped = train_one_epoch(state, loader, val_loader, cfg, run)
            if state.batch_in_epoch == batches_per_epoch:
                state.epoch, state.batch_in_epoch = epoch + 1, 0
            share_windows(state)
            run.save("last.pt", state)
            if stopped:
                run.exit_stopped(state.step)

        last_val, controller = state.meters["last_val"], state.meters["controller"]
        results = {"run_dir": str(run.dir), "step": state.step, "best": run.best, "val": last_val,
                   "stopped_early": controller["stopped"], "lr": controller["lr"]}
        if cfg.eval.test:
            run.load_best(model)
            results["test"] = evaluate(model, eval_loader(datasets["test"], cfg), cfg)
            if runtime.is_main():
                print_table(f"test split, best.pt (step {run.best['step']})", results["test"])
                (run.dir / "test_metrics.json").write_text(json.dumps(results["test"], indent=2))
        if runtime.is_main() and last_val:
            print_table(f"validation at step {state.step}", last_val)
        nan = float("nan")
        run.print(f"\nfinal validation ROC-AUC {last_val.get('roc_auc', nan):.4f} (per video "
                  f"{last_val.get('video_roc_auc', nan):.4f}), best val loss {run.best['value'] or nan:.4f} at "
                  f"step {run.best['step']}, {time.time() - started:.0f} s")
        if cfg.tb is not None:
            cfg.tb.close()
        runtime.assert_replicas_in_sync(model)  # under torchrun: every rank must end with the same weights
        run.finish(results)
    del state  # its DDP wrapper must not outlive the process group
    runtime.cleanup_distributed()
    return results


if __name__ == "__main__":
    cli.run_cli(main)
