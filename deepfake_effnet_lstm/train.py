"""Train the EfficientNet-B0 + LSTM deepfake detector.

    python deepfake_effnet_lstm/train.py                       # synthetic demo (flickering fakes)
    python deepfake_effnet_lstm/train.py --data-root faces/ --frames 16 --image-size 224 --pretrained
    python deepfake_effnet_lstm/train.py --resume runs/deepfake_effnet_lstm/last.pt
    torchrun --nproc_per_node 2 deepfake_effnet_lstm/train.py --max-iters 20

The loop follows polimi-ispl/icpr2020dfdc train_binclass.py: a global iteration counter across
epochs, train metrics and last.pt every --log-interval, validation every --val-interval AND at the
end of every epoch (periodic checkpoint, best.pt on validation loss, attention overlays), the lr
divided by 10 on a validation-loss plateau, stop at --max-iters or when the lr floor is reached.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make `common` and the project importable when run as a script

import argparse
import json
import time
import warnings

import torch
from PIL import Image
from torchvision.utils import make_grid
from tqdm import tqdm

from common.metrics import accuracy, average_precision, precision_recall_f1, roc_auc
from common.runtime import (
    CSVLogger,
    EpochSampler,
    assert_replicas_in_sync,
    autocast,
    autocast_dtype,
    check_config_compatible,
    check_finite,
    cleanup_distributed,
    gather_cat,
    is_main,
    load_checkpoint,
    make_grad_scaler,
    prepare_run_dir,
    rng_state,
    save_checkpoint,
    seed_everything,
    seed_worker,
    set_rng_state,
    setup_distributed,
    unwrap,
    write_config,
)
from common.schedulers import PlateauController
from deepfake_effnet_lstm.data import CLASS_NAMES, denormalize, make_datasets, upsample_map
from deepfake_effnet_lstm.model import (
    DeepfakeDetector,
    DetectorConfig,
    attention_loss,
    classification_loss,
    fake_probability,
)

# keys that define the architecture and the class count: a resume with other values is refused
ARCH_KEYS = ["attention", "attention_stage", "lstm_hidden", "lstm_layers", "bidirectional", "num_logits", "image_size"]
METRICS = ["loss", "acc", "precision", "f1", "roc_auc", "ap"]
LOG_COLUMNS = (["step", "epoch", "split", "lr"] + METRICS + [f"video_{m}" for m in METRICS[1:]])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data-root", help="folder with index.csv and <video>/ frame folders; absent -> synthetic")
    g.add_argument("--index", help="index CSV (default <data-root>/index.csv)")
    g.add_argument("--mask-root", help="folder of masks parallel to the frames (enables --attention-loss-weight)")
    g.add_argument("--frames", type=int, default=8, help="T, frames per sequence")
    g.add_argument("--image-size", type=int, default=32, help="face crops are resized to this square side")
    g.add_argument("--pad-short", action="store_true", help="repeat the last frame of videos shorter than T (counted)")
    g.add_argument("--val-fraction", type=float, default=0.15, help="share of groups for validation (no split column)")
    g.add_argument("--test-fraction", type=float, default=0.15, help="share of groups for test (no split column)")
    g.add_argument("--subset-fraction", type=float, default=1.0, help="keep this share of the videos of each split")
    g.add_argument("--eval-clips", type=int, default=2, help="sequences per video in validation / test")
    g.add_argument("--synthetic-train", type=int, default=384, help="synthetic training videos")
    g.add_argument("--synthetic-val", type=int, default=96, help="synthetic validation videos")
    g.add_argument("--synthetic-test", type=int, default=96, help="synthetic test videos")
    g.add_argument("--synthetic-frames", type=int, default=16, help="frames per synthetic video")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no training augmentation")
    g.add_argument("--aug-blur", type=float, default=0.0, help="probability of a Gaussian blur (training)")
    g.add_argument("--aug-noise", type=float, default=0.0, help="std of compression-like noise (training)")
    g = p.add_argument_group("model")
    g.add_argument("--attention", choices=["gate", "cbam"], default="gate", help="attention module inside the backbone")
    g.add_argument("--attention-stage", type=int, default=3, help="efficientnet_b0.features index it follows")
    g.add_argument("--lstm-hidden", type=int, default=128, help="per-direction LSTM hidden size")
    g.add_argument("--lstm-layers", type=int, default=1, help="stacked LSTM layers")
    g.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True, help="bidirectional LSTM")
    g.add_argument("--num-logits", type=int, choices=[1, 2], default=2, help="2: weighted CE; 1: weighted BCE")
    g.add_argument("--dropout", type=float, default=0.2, help="dropout on frame features and before the head")
    g.add_argument("--pretrained", action="store_true", help="torchvision ImageNet weights (needs internet)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, help="Adam learning rate; default 1e-4 (icpr2020dfdc) on real data, "
                   "1e-3 on the synthetic demo (random init, tiny frames, a 3-minute budget)")
    g.add_argument("--batch-size", type=int, default=8, help="sequences per step (per process)")
    g.add_argument("--max-iters", type=int, default=200, help="stop after this many optimizer steps")
    g.add_argument("--epochs", type=int, help="optional cap on epochs")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    g.add_argument("--attention-loss-weight", type=float, default=0.0, help="weight of the mask loss (needs masks)")
    g.add_argument("--plateau-patience", type=int, default=10, help="validations without improvement before lr/10")
    g.add_argument("--plateau-cooldown", type=int, default=20, help="validations to wait after a reduction")
    g.add_argument("--min-lr-factor", type=float, default=1e-5, help="min_lr = lr * this; stop when reached")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/deepfake_effnet_lstm", help="run folder")
    g.add_argument("--resume", help="checkpoint to resume from, e.g. <out>/last.pt")
    g.add_argument("--seed", type=int, default=0, help="seed for data order, augmentation and init")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--no-amp", dest="amp", action="store_false", help="plain fp32 on CUDA")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    g.add_argument("--log-interval", type=int, default=25, help="steps between train rows and last.pt")
    g.add_argument("--val-interval", type=int, default=749, help="steps between validations (also every epoch end)")
    g.add_argument("--ckpt-interval", type=int, default=0, help="extra last.pt every N steps (0: only at log steps)")
    g.add_argument("--test", action="store_true", help="evaluate best.pt on the test split at the end")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorBoard scalars, PR curves and overlays (when tensorboard is installed)")
    g.add_argument("--overlays", action=argparse.BooleanOptionalAction, default=True,
                   help="attention overlay PNGs (one real, one fake validation video) at every validation")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = 1e-4 if args.data_root else 1e-3
    return args


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
            # FIX(DFD-AUC-SCORES): rank the probabilities; hard labels collapse the ROC curve to one point
            # (AUC = balanced accuracy), and sklearn-style code raised on a one-class window.
            # was: if len(set(y.tolist())) < 2:
            #          raise ValueError("Only one class present in y_true. ROC AUC score is not defined in that case.")
            #      out[prefix + "roc_auc"], out[prefix + "ap"] = roc_auc(y, preds), average_precision(y, preds)
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


@torch.no_grad()
def evaluate(model, dataset, args, device, amp_dtype, weights, dist_info) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Loss and metrics on a whole split, predictions gathered over ranks."""
    model.eval()
    sampler = EpochSampler(len(dataset), args.batch_size, shuffle=False, rank=dist_info.rank,
                           world_size=dist_info.world_size, drop_last=False)
    parts = {"weighted_loss": [], "weight": [], "prob": [], "label": [], "video": []}
    for batch in make_loader(dataset, sampler, args, epoch=0):
        frames, labels = batch["frames"].to(device, non_blocking=True), batch["label"].to(device)
        with autocast(device, amp_dtype):
            logits = model(frames)
        weighted, w = classification_loss(logits, labels, weights, reduction="none")
        for key, value in zip(parts, (weighted, w, fake_probability(logits), labels, batch["video"].to(device))):
            parts[key].append(value)
    gathered = {k: gather_cat(torch.cat(v)).cpu() for k, v in parts.items()}
    metrics = {"loss": float(gathered["weighted_loss"].sum() / gathered["weight"].sum())}
    metrics.update(binary_metrics(gathered["label"], gathered["prob"], gathered["video"]))
    model.train()
    return metrics, gathered["label"], gathered["prob"]


def save_overlays(model, dataset, run_dir: Path, step: int, tb) -> None:
    """One real and one fake validation sequence: frames on top, attention (red) blended below."""
    model.eval()
    for label, name in enumerate(CLASS_NAMES):
        index = next(i for i, r in enumerate(dataset.records) if r.label == label) * dataset.clips
        frames = dataset[index]["frames"]  # [T, 3, S, S]
        attention_map = model.get_attention(frames.unsqueeze(0).to(next(model.parameters()).device))[0]
        heat = upsample_map(attention_map, frames.shape[-1])  # [T, 1, S, S]
        rgb = denormalize(frames)
        red = torch.cat([heat, torch.zeros_like(heat), torch.zeros_like(heat)], dim=1)
        grid = make_grid(torch.cat([rgb, 0.4 * rgb + 0.6 * red]), nrow=len(rgb), padding=1)
        Image.fromarray((grid.permute(1, 2, 0) * 255).byte().numpy()).save(run_dir / "overlays" / f"step{step:06d}_{name}.png")
        if tb is not None:
            tb.add_image(f"attention/{name}", grid, step)
    model.train()


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
    args = parse_args(argv)
    started = time.time()
    dist_info = setup_distributed(args.device)
    device = dist_info.device
    run_dir = prepare_run_dir(args.out)
    (run_dir / "overlays").mkdir(exist_ok=True)
    seed_everything(args.seed + dist_info.rank)
    config = vars(args).copy()
    if is_main():
        write_config(run_dir, config)

    datasets, weights, info = make_datasets(args)
    if is_main():
        padded = f", {info['padded']} short videos padded" if info["padded"] else ""
        print("videos: " + ", ".join(f"{s} {n}" for s, n in info["videos"].items()) + f" ({info['source']}{padded})")
        print(f"class weights (real, fake): {[round(w, 3) for w in weights.tolist()]}")
    weights = weights.to(device)
    if args.attention_loss_weight > 0 and not datasets["train"].has_masks:
        raise ValueError("--attention-loss-weight needs masks: pass --mask-root (the synthetic data has them)")

    model_cfg = DetectorConfig(attention=args.attention, attention_stage=args.attention_stage,
                               lstm_hidden=args.lstm_hidden, lstm_layers=args.lstm_layers,
                               bidirectional=args.bidirectional, num_logits=args.num_logits,
                               dropout=args.dropout, pretrained=args.pretrained)
    model = DeepfakeDetector(model_cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    amp_dtype = autocast_dtype(device, args.amp)
    scaler = make_grad_scaler(device, amp_dtype)
    min_lr = args.lr * args.min_lr_factor
    # FIX(DFD-MINLR-STOP): torch's ReduceLROnPlateau skips reductions smaller than eps=1e-8, so its
    # lr sticks at 1e-8 > min_lr = 1e-9 and `lr == min_lr` never held; the controller lands on the floor.
    # was: scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=args.plateau_patience, cooldown=args.plateau_cooldown, min_lr=min_lr)
    controller = PlateauController(args.lr, factor=0.1, patience=args.plateau_patience,
                                   cooldown=args.plateau_cooldown, min_lr=min_lr)

    train_set = datasets["train"]
    sampler = EpochSampler(len(train_set), args.batch_size, shuffle=True, seed=args.seed,
                           rank=dist_info.rank, world_size=dist_info.world_size, drop_last=True)
    batches_per_epoch = sampler.batches_per_epoch()
    max_iters = args.max_iters if args.epochs is None else min(args.max_iters, args.epochs * batches_per_epoch)
    step, epoch, batch_in_epoch, best_val_loss, best_step, last_val = 0, 0, 0, float("inf"), -1, {}
    window = {"loss": [], "prob": [], "label": [], "video": []}
    if args.resume:
        ckpt = load_checkpoint(args.resume, map_location=device)
        check_config_compatible(ckpt["config"], config, ARCH_KEYS)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        # FIX(DFD-RESUME-LR): restore the plateau controller (lr, best, bad/cooldown counters); a fresh
        # one restarted at --lr, undoing every reduction, and forgot how long the plateau had lasted.
        # was: (nothing)
        controller.load_state_dict(ckpt["controller"])
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        best_val_loss, best_step, last_val = ckpt["best_val_loss"], ckpt["best_step"], ckpt["last_val"]
        window = {k: [v.to(device)] if len(v) else [] for k, v in ckpt["window"].items()}
        set_rng_state(ckpt["rng_state"])
        if is_main():
            print(f"resumed from {args.resume} at step {step} (epoch {epoch}, lr {optimizer.param_groups[0]['lr']:.3g})")
    logger = CSVLogger(run_dir / "log.csv", LOG_COLUMNS, resume_step=step if args.resume else None) if is_main() else None
    tb = open_tensorboard(args, run_dir)
    train_model = model
    if dist_info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint_state() -> dict:
        return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                # FIX(DFD-MINLR-STOP): the controller's state replaces torch's scheduler state.
                # was: "scheduler": scheduler.state_dict(),
                "controller": controller.state_dict(),
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "best_val_loss": best_val_loss,
                "best_step": best_step, "last_val": last_val, "rng_state": rng_state(), "config": config,
                "window": {k: torch.cat(v).cpu() if v else torch.empty(0) for k, v in window.items()}}

    stop = False
    bar = tqdm(total=max_iters, initial=step, disable=not is_main() or not sys.stderr.isatty(), desc="train")
    model.train()
    while step < max_iters and not stop:
        sampler.set_epoch(epoch, start_batch=batch_in_epoch)
        train_set.set_epoch(epoch)
        for batch in make_loader(train_set, sampler, args, epoch):
            frames, labels = batch["frames"].to(device, non_blocking=True), batch["label"].to(device)
            # FIX(DFD-MINLR-STOP): the lr is a pure function of the controller's state, written every step.
            # was: (nothing)
            for group in optimizer.param_groups:
                group["lr"] = controller.lr
            with autocast(device, amp_dtype):
                logits, attention_map = train_model(frames, return_attention=True)
            loss_cls = classification_loss(logits, labels, weights)
            components = {"cls": loss_cls}
            loss = loss_cls
            if args.attention_loss_weight > 0:
                components["attention"] = attention_loss(attention_map, batch["mask"].to(device))
                loss = loss + args.attention_loss_weight * components["attention"]
            check_finite(components, step)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step, batch_in_epoch = step + 1, batch_in_epoch + 1
            bar.update()
            for key, value in zip(window, (loss_cls.detach().view(1), fake_probability(logits.detach()),
                                           labels, batch["video"].to(device))):
                window[key].append(value)

            if step % args.log_interval == 0:
                merged = {k: gather_cat(torch.cat(v)).cpu() for k, v in window.items()}
                train_metrics = {"loss": float(merged["loss"].mean())}
                train_metrics.update(binary_metrics(merged["label"], merged["prob"], merged["video"]))
                window = {k: [] for k in window}
                if is_main():
                    logger.log({"step": step, "epoch": epoch, "split": "train", "lr": optimizer.param_groups[0]["lr"],
                                **train_metrics})
                    bar.write(f"step {step} train loss {train_metrics['loss']:.4f} acc {train_metrics['acc']:.3f} "
                              f"auc {train_metrics['roc_auc']:.3f}")
                    if tb is not None:
                        for k, v in train_metrics.items():
                            tb.add_scalar(f"train/{k}", v, step)

            do_validate = step % args.val_interval == 0
            # FIX(DFD-VAL-CADENCE): validate at every epoch end and at the last step too; with
            # --val-interval 749 alone a small subset (a few dozen steps per epoch) never validated.
            # was: (nothing)
            do_validate = do_validate or batch_in_epoch == batches_per_epoch or step == max_iters
            if do_validate:
                # FIX(DFD-VAL-DATA): validate on the validation split; the seed built its validation
                # loader on the training set, so "validation" measured memorisation.
                # was: last_val, val_labels, val_probs = evaluate(model, train_set, args, device, amp_dtype, weights, dist_info)
                last_val, val_labels, val_probs = evaluate(unwrap(model), datasets["val"], args, device, amp_dtype,
                                                           weights, dist_info)
                # FIX(DFD-MINLR-STOP): step the controller on the validation loss; stop when it says so.
                # was: scheduler.step(last_val["loss"])
                #      stop = optimizer.param_groups[0]["lr"] == min_lr
                controller.step(last_val["loss"])
                stop = controller.should_stop()
                if is_main():
                    logger.log({"step": step, "epoch": epoch, "split": "val", "lr": optimizer.param_groups[0]["lr"],
                                **last_val})
                    bar.write(f"step {step} VAL loss {last_val['loss']:.4f} acc {last_val['acc']:.3f} "
                              f"roc_auc {last_val['roc_auc']:.3f} video_roc_auc {last_val['video_roc_auc']:.3f}")
                    save_checkpoint(run_dir / f"periodic_step{step:06d}.pt", {"model": unwrap(model).state_dict(),
                                                                              "step": step, "config": config})
                    if tb is not None:
                        for k, v in last_val.items():
                            tb.add_scalar(f"val/{k}", v, step)
                        tb.add_pr_curve("val/pr_curve", val_labels, val_probs, step)
                    if args.overlays:
                        save_overlays(unwrap(model), datasets["val"], run_dir, step, tb)
                if last_val["loss"] < best_val_loss:
                    best_val_loss, best_step = last_val["loss"], step
                    if is_main():
                        save_checkpoint(run_dir / "best.pt", checkpoint_state())
                if stop and is_main():
                    print(f"lr reached its floor {min_lr:.3g} without improvement: stopping at step {step}")

            if is_main() and (step % args.log_interval == 0 or (args.ckpt_interval and step % args.ckpt_interval == 0)):
                save_checkpoint(run_dir / "last.pt", checkpoint_state())
            if step >= max_iters or stop:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    if is_main():
        save_checkpoint(run_dir / "last.pt", checkpoint_state())

    summary = {"run_dir": str(run_dir), "steps": step, "best_val_loss": best_val_loss, "best_step": best_step,
               "stopped_early": stop, "lr": optimizer.param_groups[0]["lr"],
               **{f"val_{k}": v for k, v in last_val.items()}}
    if args.test and (run_dir / "best.pt").exists():
        unwrap(model).load_state_dict(load_checkpoint(run_dir / "best.pt", map_location=device)["model"])
        test_metrics, _, _ = evaluate(unwrap(model), datasets["test"], args, device, amp_dtype, weights, dist_info)
        summary.update({f"test_{k}": v for k, v in test_metrics.items()})
        if is_main():
            print_table(f"test split, best.pt (step {best_step})", test_metrics)
            (run_dir / "test_metrics.json").write_text(json.dumps(test_metrics, indent=2))
    summary["elapsed_s"] = time.time() - started
    if is_main():
        if last_val:
            print_table(f"validation at step {step}", last_val)
        print(f"\nfinal validation ROC-AUC {summary.get('val_roc_auc', float('nan')):.4f} "
              f"(per video {summary.get('val_video_roc_auc', float('nan')):.4f}), best val loss "
              f"{best_val_loss:.4f} at step {best_step}, {summary['elapsed_s']:.0f} s")
    if tb is not None:
        tb.close()
    assert_replicas_in_sync(model)  # under torchrun: every rank must end with the same weights
    cleanup_distributed()
    return summary


if __name__ == "__main__":
    main()
