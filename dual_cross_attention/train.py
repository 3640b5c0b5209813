"""Train DCAL (SA + GLCA + PWCA) on CUB-200-2011, a class-folder tree, or the built-in synthetic set.

    python dual_cross_attention/train.py                      # synthetic demo, tiny ViT, CPU ok
    python dual_cross_attention/train.py --data-root CUB_200_2011 --model base --pretrained torchvision
    torchrun --nproc_per_node 2 dual_cross_attention/train.py ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make `common` and the project importable when run as a script

import argparse
import contextlib
import dataclasses
import time

import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from tqdm import tqdm

from common.metrics import accuracy
from common.runtime import (
    CSVLogger,
    EpochSampler,
    all_reduce_mean,
    assert_replicas_in_sync,
    check_config_compatible,
    check_finite,
    cleanup_distributed,
    decay_param_groups,
    gather_cat,
    is_main,
    load_checkpoint,
    make_grad_scaler,
    prepare_run_dir,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    setup_distributed,
    unwrap,
    write_config,
)
from common.runtime import autocast as autocast_ctx
from common.runtime import autocast_dtype as pick_autocast_dtype
from common.schedulers import scaled_lr, warmup_cosine_lr
from dual_cross_attention.data import SyntheticParts, build_real_datasets
from dual_cross_attention.model import (
    DCAL,
    DCALConfig,
    derangement,
    fetch_torchvision_vit_b_16,
    load_pretrained,
)

# NOTE(deviation): the synthetic demo trains a tiny ViT from scratch, which needs a far larger lr
# than the paper's fine-tuning of a pretrained one: 1.6e-2 at the reference batch 512 is 1e-3 at
# batch 32. Real data keeps the paper's 5e-4.
SYNTHETIC_BASE_LR = 1.6e-2
# presets: (embed_dim, depth, heads, patch_size)
PRESETS = {"tiny": (64, 4, 4, 4), "small": (384, 12, 6, 16), "base": (768, 12, 12, 16)}
ARCH_KEYS = ["model", "embed_dim", "depth", "heads", "patch_size", "image_size", "num_classes", "glca", "pwca"]
LOG_COLUMNS = ["step", "epoch", "lr", "loss", "loss_sa", "loss_glca", "loss_pwca", "w_sa", "w_glca", "w_pwca",
               "grad_norm", "val_top1_sa", "val_top1_glca", "val_top1"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=None, help="CUB_200_2011 folder or train/val class-folder tree; "
                   "absent: built-in synthetic data")
    g.add_argument("--synthetic-train", type=int, default=3000, help="synthetic training images")
    g.add_argument("--synthetic-val", type=int, default=600, help="synthetic validation images")
    g.add_argument("--synthetic-classes", type=int, default=10, help="synthetic classes")
    g.add_argument("--synthetic-decoys", type=int, default=3, help="decoy parts per synthetic image (same "
                   "palette and size as the class part, random patterns)")
    g.add_argument("--image-size", type=int, default=None, help="crop side (default 448 real, 32 synthetic)")
    g.add_argument("--resize", type=int, default=550, help="shorter side before cropping (real data)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=sorted(PRESETS), default=None, help="ViT size (default tiny synthetic, base real)")
    g.add_argument("--embed-dim", type=int, default=None, help="override the preset's width")
    g.add_argument("--depth", type=int, default=None, help="override the preset's number of blocks")
    g.add_argument("--heads", type=int, default=None, help="override the preset's heads")
    g.add_argument("--patch-size", type=int, default=None, help="override the preset's patch size")
    g.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate of the last block")
    g.add_argument("--top-ratio", type=float, default=0.1, help="GLCA local queries R as a fraction of patches")
    g.add_argument("--no-glca", action="store_true", help="disable the GLCA branch")
    g.add_argument("--no-pwca", action="store_true", help="disable the PWCA branch")
    g.add_argument("--pretrained", default=None, help="'torchvision' (download vit_b_16 ImageNet weights; "
                   "needs --model base) or a torchvision / timm ViT or DeiT state_dict file")
    g.add_argument("--grad-checkpoint", action="store_true", help="recompute blocks in backward (less memory)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=None, help="images per device per micro-batch "
                   "(default 32 synthetic, 16 real as in the paper)")
    g.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=None, help="peak lr (default: scaled from --base-lr)")
    g.add_argument("--base-lr", type=float, default=None, help="lr quoted at the reference batch (default "
                   f"5e-4 = the paper's fine-tuning lr at 512; synthetic from scratch {SYNTHETIC_BASE_LR:g})")
    g.add_argument("--lr-rule", choices=["linear", "sqrt", "none"], default="linear",
                   help="scaling of --base-lr to the effective batch (batch x accum x world size): linear "
                   "(paper: 5e-4/512 x batch) or sqrt (the seed's 5e-4 x sqrt(batch/16))")
    g.add_argument("--ref-batch", type=int, default=None, help="reference batch of --base-lr "
                   "(default 512 for linear, 16 for sqrt as in the seed)")
    g.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up length (default 5 real, "
                   "1 synthetic)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="weight decay")
    g.add_argument("--clip-grad", type=float, default=1.0, help="max global grad norm (0: off)")
    g.add_argument("--epochs", type=int, default=3, help="training epochs")
    g.add_argument("--max-iters", type=int, default=None, help="stop after this many optimizer steps")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/dual_cross_attention", help="run folder")
    g.add_argument("--resume", default=None, help="checkpoint to resume from (e.g. <out>/last.pt)")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--no-amp", action="store_true", help="disable autocast on CUDA")
    g.add_argument("--log-interval", type=int, default=20, help="optimizer steps between log rows")
    g.add_argument("--ckpt-interval", type=int, default=200, help="optimizer steps between last.pt writes")
    g.add_argument("--num-overlays", type=int, default=4, help="validation images whose rollout maps are "
                   "saved as PNG overlays at each evaluation (0: none)")
    g.add_argument("--interrupt-after", type=int, default=None, help="stop after this many steps as a killed "
                   "run would, keeping the schedule of the full run (to exercise --resume)")
    g.add_argument("--eval-interval", type=int, default=None, help="optimizer steps between evaluations "
                   "(default: once per epoch)")
    args = p.parse_args(argv)
    synthetic = args.data_root is None
    args.model = args.model or ("tiny" if synthetic else "base")
    dim, depth, heads, patch = PRESETS[args.model]
    args.embed_dim, args.depth = args.embed_dim or dim, args.depth or depth
    args.heads, args.patch_size = args.heads or heads, args.patch_size or patch
    args.image_size = args.image_size or (32 if synthetic else 448)
    args.batch_size = args.batch_size or (32 if synthetic else 16)
    args.glca, args.pwca = not args.no_glca, not args.no_pwca
    if args.pwca and args.batch_size < 2:
        p.error("PWCA pairs images within a batch: use --batch-size >= 2 (or --no-pwca)")
    args.base_lr = args.base_lr or (SYNTHETIC_BASE_LR if synthetic else 5e-4)
    args.ref_batch = args.ref_batch or (512 if args.lr_rule == "linear" else 16)
    args.warmup_epochs = args.warmup_epochs if args.warmup_epochs is not None else (1.0 if synthetic else 5.0)
    return args


def read_pretrained(spec: str) -> dict:
    if spec == "torchvision":
        return fetch_torchvision_vit_b_16()
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--pretrained: {path} does not exist (give 'torchvision' or a state_dict file)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # DeiT / timm training checkpoints wrap the weights
    return state.get("model", state.get("state_dict", state))


def build_data(args, dist_info):
    if args.data_root is None:
        kw = dict(num_classes=args.synthetic_classes, image_size=args.image_size, decoys=args.synthetic_decoys,
                  seed=args.seed)
        train_set = SyntheticParts(args.synthetic_train, train=True, **kw)
        val_set = SyntheticParts(args.synthetic_val, train=False, **kw)
        classes = args.synthetic_classes
    else:
        train_set, val_set = build_real_datasets(args.data_root, args.resize, args.image_size, args.seed)
        classes = len(train_set.classes)
    rank, world = dist_info.rank, dist_info.world_size
    train_sampler = EpochSampler(len(train_set), args.batch_size, shuffle=True, seed=args.seed, rank=rank,
                                 world_size=world, drop_last=True)
    val_sampler = EpochSampler(len(val_set), args.batch_size, shuffle=False, rank=rank, world_size=world,
                               drop_last=False)
    return train_set, val_set, train_sampler, val_sampler, classes


def make_loader(dataset, sampler, args):
    # own generator: creating an iterator must not consume the global RNG (exact resume)
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                                       num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed),
                                       pin_memory=torch.cuda.is_available())


class RunningMeans:
    """Sums of detached scalars per name, kept on the device; synced with `.item()` only when a
    log row is written. Part of the checkpoint, so a resumed run logs the same means."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def update(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def pop_means(self) -> dict[str, float]:
        """Means since the last call, averaged over ranks (every rank must call it)."""
        names = list(self.sums)
        if not names:
            return {}
        means = all_reduce_mean(torch.stack([self.sums[n] for n in names]) / max(1, self.count)).tolist()
        self.sums, self.count = {}, 0
        return dict(zip(names, means))

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "count": self.count}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.count = state["count"]


@torch.no_grad()
def save_rollout_overlays(model, images: torch.Tensor, path: Path) -> None:
    """Top row: the images; bottom row: the same images lit by the CLS row of the attention
    rollout (the ranking GLCA picks its local queries from): dark patches are ranked low. PIL only."""
    was_training = model.training
    model.eval()
    rollout = model(images, need_rollout=True)["rollout"].float()
    model.train(was_training)
    grid = model.cfg.grid
    heat = rearrange(rollout[:, 0, 1:], "k (gh gw) -> k 1 gh gw", gh=grid)  # CLS row back onto the patch grid
    scale = max(1, 128 // images.shape[-1])  # small synthetic images are enlarged to be seen
    size = (images.shape[-2] * scale, images.shape[-1] * scale)
    heat = F.interpolate(heat, size=size, mode="nearest")  # one flat square per patch
    pictures = F.interpolate(images.float(), size=size, mode="nearest")

    def unit(t):  # per-image min-max to [0, 1]
        lo, hi = t.amin(dim=(1, 2, 3), keepdim=True), t.amax(dim=(1, 2, 3), keepdim=True)
        return (t - lo) / (hi - lo).clamp_min(1e-8)

    pictures, heat = unit(pictures), unit(heat)
    overlay = pictures * (0.15 + 0.85 * heat)  # patches the rollout ranks low fade to dark
    sheet = rearrange(torch.stack([pictures, overlay]), "row k c h w -> (row h) (k w) c")  # 2 x K image grid
    Image.fromarray((sheet.clamp(0, 1) * 255).byte().cpu().numpy()).save(path)


def build_optimizer(model, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, decoupled decay on weight matrices; norms, biases, pos/CLS tokens and the
    uncertainty log-variances (all 1-d or named) are not decayed."""
    return torch.optim.AdamW(decay_param_groups(model, weight_decay), lr=lr)


def compute_losses(model, images, labels, use_pwca: bool):
    """Forward one micro-batch; returns (total, {branch: CE}, outputs)."""
    partner = derangement(labels.shape[0], images.device) if use_pwca else None
    out = model(images, partner=partner)
    parts = {name: F.cross_entropy(out[name].float(), labels) for name in ("sa", "glca", "pwca") if name in out}
    weighting = unwrap(model).loss_weighting
    total = weighting(list(parts.values())) if weighting is not None else parts["sa"]
    return total, parts, out


def backward_micro_batch(model, images, labels, scaler, accum_steps: int, sync: bool, use_pwca: bool,
                         device, dtype, step: int):
    """Forward and backward of one micro-batch; its gradients add up in .grad until the step.

    `sync`: this is the last micro-batch before the optimizer step (DDP all-reduces only then)."""
    # FIX(DCAL-ACCUM): the loss is divided by accum_steps so the summed gradient is the mean over
    # the effective batch (un-normalised, it was accum_steps x too large, which also changed what
    # clip_grad_norm_ clipped), and DDP skips the all-reduce on non-stepping micro-batches.
    # was: scaler.scale(total).backward()   (and no no_sync)
    sync_context = contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()
    with sync_context:
        with autocast_ctx(device, dtype):
            total, parts, _ = compute_losses(model, images, labels, use_pwca)
        # FIX(DCAL-NONFINITE): stop, naming the component that went bad; a printed warning let
        # the run go on training NaN weights. One host sync per micro-batch.
        # was: if not torch.isfinite(total): print(f"Warning: NaN/Inf in total loss at step {step}")
        check_finite({**parts, "total": total}, step)
        scaler.scale(total / accum_steps).backward()
    return total, parts


@torch.no_grad()
def evaluate(model, loader, device, dtype) -> dict[str, float]:
    """Top-1 of SA alone, GLCA alone (NaN without GLCA), and softmax(SA) + softmax(GLCA), the
    prediction used at inference (FGVC)."""
    model.eval()
    preds = {"sa": [], "glca": [], "combined": []}
    targets = []
    for images, labels, _ in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast_ctx(device, dtype):
            # FIX(DCAL-EVAL): PWCA is a training-only regulariser: no partner at evaluation (a
            # prediction must not depend on the other images of the batch), and the paper's FGVC
            # inference adds the SA and GLCA class PROBABILITIES (logit scales differ per head).
            # was: out = model(images, partner=derangement(...)); combined = sa + glca + pwca logits
            out = model(images)
        prob_sa = out["sa"].float().softmax(-1)
        preds["sa"].append(prob_sa.argmax(-1))
        if "glca" in out:
            prob_glca = out["glca"].float().softmax(-1)
            preds["glca"].append(prob_glca.argmax(-1))
            preds["combined"].append((prob_sa + prob_glca).argmax(-1))
        else:
            preds["combined"].append(prob_sa.argmax(-1))
        targets.append(labels)
    model.train()
    y = gather_cat(torch.cat(targets)).cpu()
    result = {k: accuracy(y, gather_cat(torch.cat(v)).cpu()) if v else float("nan") for k, v in preds.items()}
    return {"val_top1_sa": result["sa"], "val_top1_glca": result["glca"], "val_top1": result["combined"]}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    dist_info = setup_distributed(args.device)
    device = dist_info.device
    run_dir = prepare_run_dir(args.out)
    seed_everything(args.seed)

    train_set, val_set, train_sampler, val_sampler, num_classes = build_data(args, dist_info)
    args.num_classes = num_classes
    cfg = DCALConfig(image_size=args.image_size, patch_size=args.patch_size, num_classes=num_classes,
                     embed_dim=args.embed_dim, depth=args.depth, num_heads=args.heads, drop_path=args.drop_path,
                     glca=args.glca, pwca=args.pwca, top_ratio=args.top_ratio, grad_checkpoint=args.grad_checkpoint)
    config = {**vars(args), "model_config": dataclasses.asdict(cfg)}
    if is_main():
        write_config(run_dir, config)
    model = DCAL(cfg)
    if args.pretrained and not args.resume:
        info = load_pretrained(model, read_pretrained(args.pretrained))
        if is_main():
            print(f"pretrained: {info}")
    model = model.to(device)

    effective_batch = args.batch_size * args.accum_steps * dist_info.world_size
    # FIX(DCAL-LR): the paper's rule is 5e-4/512 x the EFFECTIVE batch (batch x accumulation x
    # world size); the seed's sqrt rule on the per-device batch gave ~30x that lr for fine-tuning
    # a pretrained ViT. The sqrt rule stays available as --lr-rule sqrt.
    # was: lr = args.lr if args.lr is not None else args.base_lr * math.sqrt(args.batch_size / 16)
    lr = args.lr if args.lr is not None else scaled_lr(args.base_lr, effective_batch, args.ref_batch, args.lr_rule)
    # FIX(DCAL-WD): Adam's weight_decay is an L2 term added to the gradient, then divided by
    # Adam's running RMS, so every parameter (LayerNorm gains, biases, pos-embed, CLS, the loss
    # log-variances) is pulled to 0 by ~lr per step whatever its gradient: the collapse of
    # accuracy. Decoupled decay (AdamW) on matrices only, none on norms/biases/tokens/loss weights.
    # was: optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    optimizer = build_optimizer(model, lr, args.weight_decay)
    dtype = pick_autocast_dtype(device, not args.no_amp)
    scaler = make_grad_scaler(device, dtype)

    steps_per_epoch = train_sampler.batches_per_epoch() // args.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"an epoch holds fewer than {args.accum_steps} micro-batches of {args.batch_size}")
    total_steps = args.max_iters or args.epochs * steps_per_epoch
    eval_interval = args.eval_interval or steps_per_epoch
    # FIX(DCAL-LR): a warm-up before the cosine, so the new heads do not wreck the pretrained
    # features in the first steps; the lr is printed so a wrong scale is seen at once.
    # was: warmup_steps = 0
    warmup_steps = round(args.warmup_epochs * steps_per_epoch)
    if is_main():
        print(f"peak lr {lr:.4g} (rule {args.lr_rule if args.lr is None else 'fixed --lr'}, base {args.base_lr:g} "
              f"at batch {args.ref_batch}, effective batch {effective_batch}), warm-up {warmup_steps} steps, "
              f"{total_steps} steps in all")

    step, best = 0, -1.0
    meter = RunningMeans()
    if args.resume:
        ckpt = load_checkpoint(args.resume, map_location=device)
        check_config_compatible(ckpt["config"], config, ARCH_KEYS)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, best = ckpt["step"], ckpt["best"]
        set_rng_state(ckpt["rng_state"])
        meter.load_state_dict(ckpt["meter"], device)
    logger = CSVLogger(run_dir / "log.csv", LOG_COLUMNS, resume_step=step if args.resume else None) if is_main() else None

    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    val_loader = make_loader(val_set, val_sampler, args)
    overlay_images = None
    if args.num_overlays > 0:
        overlay_images = torch.stack([val_set[i][0] for i in range(min(args.num_overlays, len(val_set)))]).to(device)
    metrics = {}

    def checkpoint_state(epoch):
        return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "best": best,
                "rng_state": rng_state(), "config": config, "meter": meter.state_dict()}

    while step < total_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        train_set.set_epoch(epoch)
        train_sampler.set_epoch(epoch, start_batch=done_in_epoch * args.accum_steps)
        loader = make_loader(train_set, train_sampler, args)
        micro = 0
        bar = tqdm(total=steps_per_epoch, initial=done_in_epoch, desc=f"epoch {epoch}",
                   disable=not is_main() or not sys.stderr.isatty())
        for images, labels, _ in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            lr_now = warmup_cosine_lr(step, lr, warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            micro += 1
            stepping = micro % args.accum_steps == 0
            total, parts = backward_micro_batch(model, images, labels, scaler, args.accum_steps, stepping,
                                                cfg.pwca, device, dtype, step)
            # FIX(DCAL-MEMORY): keep detached sums, not the output tensors: each kept tensor held
            # its step's outputs and autograd graph alive, so memory grew every step (the seed's
            # OOM at epoch 16, which empty_cache() every 100 batches could not cure).
            # was: history.append({"loss": total, **out})
            meter.update({"loss": total, **{f"loss_{name}": value for name, value in parts.items()}})
            if not stepping:
                continue
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad or float("inf"))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)

            if step % args.log_interval == 0:
                row = {"step": step, "epoch": epoch, "lr": lr_now, "grad_norm": grad_norm.item(), **meter.pop_means()}
                weights = unwrap(model).loss_weighting
                w = weights.effective_weights().tolist() if weights is not None else [1.0]
                row.update({f"w_{name}": value for name, value in zip(unwrap(model).branches(), w)})
                if is_main():
                    logger.log(row)
            if step % eval_interval == 0 or step == total_steps:
                metrics = evaluate(model, val_loader, device, dtype)
                if is_main():
                    logger.log({"step": step, "epoch": epoch, **metrics})
                    print(f"step {step} epoch {epoch}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                    if overlay_images is not None:
                        save_rollout_overlays(unwrap(model), overlay_images, run_dir / f"rollout_step{step:06d}.png")
                if metrics["val_top1"] > best:
                    best = metrics["val_top1"]
                    if is_main():
                        save_checkpoint(run_dir / "best.pt", checkpoint_state(epoch))
            if is_main() and (step % args.ckpt_interval == 0 or step == total_steps):
                save_checkpoint(run_dir / "last.pt", checkpoint_state(epoch))
            if args.interrupt_after and step >= args.interrupt_after:
                if is_main():
                    save_checkpoint(run_dir / "last.pt", checkpoint_state(epoch))
                total_steps = step  # end here, as a killed run would (last.pt is up to date)
            if step >= total_steps or step % steps_per_epoch == 0:
                break
        bar.close()

    elapsed = time.time() - t_start
    summary = {**metrics, "best_val_top1": best, "peak_lr": lr, "warmup_steps": warmup_steps, "step": step, "run_dir": str(run_dir), "elapsed_s": elapsed,
               "effective_batch": effective_batch}
    if is_main():
        if metrics:
            print(f"final: val top-1 {metrics['val_top1']:.4f} (SA {metrics['val_top1_sa']:.4f}, GLCA "
                  f"{metrics['val_top1_glca']:.4f}), best {best:.4f}, step {step}, {elapsed:.1f} s")
        else:
            print(f"stopped at step {step} before any evaluation, {elapsed:.1f} s (last.pt written)")
    assert_replicas_in_sync(model)  # under torchrun: every rank must end with the same weights
    cleanup_distributed()
    return summary


if __name__ == "__main__":
    main()
