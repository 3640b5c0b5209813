"""Train the aspect x sentiment model with focal + supervised contrastive loss.

    python visobert_multitask/train.py                      # tiny encoder, synthetic reviews
    python visobert_multitask/train.py --data-root DIR      # train/val/test CSVs (two formats)
    python visobert_multitask/train.py --encoder uitnlp/visobert --data-root DIR   # pretrained
    python visobert_multitask/train.py --resume runs/visobert_multitask/last.pt    # continue a run
    torchrun --nproc_per_node 2 visobert_multitask/train.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

import argparse
import dataclasses
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from common import cli, runtime
from common.checkpoint import checkpoint_bytes, load_model_state, load_run_checkpoint
from common.cli import arg, at_least
from common.lifecycle import Run, RunSettings, State
from common.metrics import precision_recall_f1
from common.schedulers import warmup_cosine_lr
from visobert_multitask import data as data_lib
from visobert_multitask import losses as losses_lib
from visobert_multitask.model import AspectSentimentModel, ModelConfig, fetch_pretrained, load_hf_encoder

PROJECT = "visobert_multitask"
# What a resumed run may not change: the architecture and what its outputs mean.
RESUME_KEYS = ["encoder", "aspects", "max_len"] + [f"model.{k}" for k in asdict(ModelConfig())]
LOG_COLUMNS = ["step", "epoch", "split", "loss", "focal", "supcon", "probe", "lr", "grad_norm", "det_f1", "sent_f1",
               "f1_inflated"]
SCORES = ("det_f1", "sent_f1", "f1_inflated", "score")  # results["val"] / results["test"]
SCORE_LEGEND = ("scores: detect = aspect-detection macro F1, sentiment = sentiment macro F1 on present "
                "aspects,\n        inflated = the original's absent=neutral weighted F1 (not used to select)")
# The tiny encoder's flags (the other ModelConfig fields come from the data or a pretrained --encoder).
MODEL_CHECKS = {"hidden": at_least(1), "layers": at_least(1), "heads": at_least(1), "intermediate": at_least(1)}


@dataclass
class DataConfig:
    data_root: str | None = arg(None, "folder with train/val(dev)/test .csv (default: synthetic reviews)")
    data_format: str = arg("auto", "columns: one column per aspect; visfd: a `label` column of "
                           "{ASPECT#Polarity};... strings", choices=["auto", "columns", "visfd"])
    aspects: str | None = arg(None, "comma-separated aspect list (default: read from the training file)")
    text_column: str | None = arg(None, "name of the text column (default: text/comment/review/sentence/content/data)")
    on_bad_label: str = arg("error", "a label cell that is not a polarity (e.g. 'Postive'): error = list every "
                            "bad record of the file and stop; skip = read it as unlabelled (absent), as the "
                            "original does, and print the count per column", choices=["error", "skip"])
    synthetic_train: int = arg(3000, "synthetic training reviews", check=at_least(1))
    synthetic_val: int = arg(600, "synthetic validation reviews", check=at_least(1))
    synthetic_test: int = arg(600, "synthetic test reviews", check=at_least(1))
    max_len: int = arg(64, "tokens per review incl. <s> and </s>; the original used 256", check=at_least(3))


@dataclass
class EncoderConfig:
    encoder: str | None = arg(None, "HF XLM-R/RoBERTa checkpoint, e.g. uitnlp/visobert (needs transformers + "
                              "internet or cache; default: the tiny encoder below, trained from scratch)")
    dropout: float | None = arg(None, "encoder hidden and attention dropout (default: 0.1 with --encoder, as "
                                "XLM-R; 0 for the tiny encoder)", check=cli.between(0.0, 1.0))


@dataclass
class TrainConfig:
    epochs: int = arg(30, "training epochs", check=at_least(1))
    max_iters: int | None = arg(None, "cap on optimizer steps (default: epochs x batches per epoch)",
                                check=at_least(1))
    batch_size: int = arg(32, "reviews per step and per process", check=at_least(1))
    lr: float | None = arg(None, "peak lr (default: 2e-5 with --encoder, 1e-3 for the tiny encoder)",
                           check=cli.above(0.0))
    weight_decay: float = arg(0.01, "AdamW weight decay on matrices", check=at_least(0.0, float))
    warmup_steps: int | None = arg(None, "linear warm-up in optimizer steps (default: 6%% of the total steps)",
                                   check=at_least(0))
    grad_clip: float = arg(1.0, "max gradient norm (0: off)", check=at_least(0.0, float))
    val_interval: int | None = arg(None, "optimizer steps between validations (default: once per epoch; every "
                                   "epoch end validates too)", check=at_least(1))
    # Set by fill_recipe once the data size is known, never flags:
    total_steps: int = 0  # length of the schedule
    batches_per_epoch: int = 0  # optimizer steps in one pass over the training split (all processes together)


@dataclass
class Config:
    """The whole configuration of a run, one object: the flags by section, then what main() adds."""
    model: ModelConfig
    data: DataConfig
    encoder: EncoderConfig
    loss: losses_lib.LossConfig
    train: TrainConfig
    run: RunSettings
    # Known once the data and the device are (main() sets them), never flags:
    aspects: tuple[str, ...] = ()  # aspect names, the column order of the labels
    alpha: torch.Tensor | None = None  # per-aspect focal alpha (A, S) from the training labels
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = None  # autocast dtype (None: fp32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_args(parser, DataConfig, "data")
    cli.add_args(parser, EncoderConfig, "encoder")
    cli.add_args(parser, ModelConfig, "tiny encoder (without --encoder)", checks=MODEL_CHECKS,
                 exclude=[f.name for f in dataclasses.fields(ModelConfig) if f.name not in MODEL_CHECKS])
    cli.add_args(parser, losses_lib.LossConfig, "loss")
    cli.add_args(parser, TrainConfig, "optimisation")
    cli.run_args(parser, default_out=f"runs/{PROJECT}", ckpt_interval=200, log_interval=20)
    return parser


def config_from(args: argparse.Namespace) -> Config:
    return Config(model=cli.from_args(ModelConfig, args), data=cli.from_args(DataConfig, args),
                  encoder=cli.from_args(EncoderConfig, args), loss=cli.from_args(losses_lib.LossConfig, args),
                  train=cli.from_args(TrainConfig, args), run=RunSettings.from_args(args))


def build_data(cfg: Config) -> dict:
    d = cfg.data
    if d.data_root:
        aspects = tuple(a.strip() for a in d.aspects.split(",")) if d.aspects else None
        return data_lib.load_splits(d.data_root, d.data_format, aspects, d.text_column, d.on_bad_label)
    return data_lib.synthetic_splits(d.synthetic_train, d.synthetic_val, d.synthetic_test, cfg.run.seed)


def check_sizes(splits: dict, batch_size: int, world_size: int) -> None:
    for name, split in splits.items():  # every process needs a review of each split and a full training batch
        if len(split.texts) < world_size:
            raise runtime.DataError(f"{name} split ({split.source}): {len(split.texts)} reviews for {world_size} "
                                    f"process(es); every process needs at least one")
    if len(splits["train"].texts) // world_size < batch_size:
        raise runtime.DataError(f"train split ({splits['train'].source}): {len(splits['train'].texts)} reviews make "
                                f"no full batch of --batch-size {batch_size} on each of {world_size} process(es)")


def fill_recipe(cfg: Config, batches_per_epoch: int) -> None:
    """The settings whose defaults depend on the encoder or on the data size, filled in place."""
    t, pretrained = cfg.train, cfg.encoder.encoder is not None
    t.batches_per_epoch = batches_per_epoch
    t.total_steps = min(t.epochs * batches_per_epoch, t.max_iters or math.inf)
    t.epochs = math.ceil(t.total_steps / batches_per_epoch)  # the epochs that hold it (fewer under --max-iters)
    t.lr = t.lr if t.lr is not None else (2e-5 if pretrained else 1e-3)
    t.warmup_steps = t.warmup_steps if t.warmup_steps is not None else max(1, round(0.06 * t.total_steps))
    # Without dropout the tiny encoder from scratch reaches the demo's sentiment F1 in ~2/3 of the steps.
    if cfg.encoder.dropout is None:
        cfg.encoder.dropout = 0.1 if pretrained else 0.0


def model_config(cfg: Config, vocab_size: int, num_aspects: int) -> tuple[ModelConfig, dict | None]:
    """The tiny encoder's settings from the flags, or a pretrained encoder's (and its weights)."""
    dropout = cfg.encoder.dropout
    model_cfg = dataclasses.replace(cfg.model, vocab_size=vocab_size, dropout=dropout, attention_dropout=dropout,
                                    max_positions=cfg.data.max_len + 2, num_aspects=num_aspects,
                                    num_states=losses_lib.NUM_STATES)
    if not cfg.encoder.encoder:
        return model_cfg, None
    try:
        fields, pretrained_state = fetch_pretrained(cfg.encoder.encoder)
    except (ImportError, OSError, RuntimeError, ValueError) as e:  # one line naming the encoder
        raise runtime.DataError(f"--encoder {cfg.encoder.encoder}: {str(e).strip().splitlines()[0]}") from None
    model_cfg = dataclasses.replace(model_cfg, **fields)
    if cfg.data.max_len + 2 > model_cfg.max_positions:
        raise ValueError(f"--max-len {cfg.data.max_len} exceeds the checkpoint's {model_cfg.max_positions - 2} "
                         f"positions")
    return model_cfg, pretrained_state


def training_alpha(splits: dict, power: float = 0.5, rule: str = "power") -> torch.Tensor:
    """Per-aspect focal alpha (A, S) from the training labels by --alpha-rule (`focal_alpha`, `original_alpha`)."""
    # FIX(VSB-ALPHA-TRAIN-SPLIT): focal alpha from the training labels only; val/test labels leaked in.
    train_labels = splits["train"].labels
    return (losses_lib.original_alpha(train_labels) if rule == "original"
            else losses_lib.focal_alpha(train_labels, losses_lib.NUM_STATES, power))


def lr_at(step: int, t: TrainConfig) -> float:
    return warmup_cosine_lr(step, t.lr, t.warmup_steps, t.total_steps)


def aspect_metrics(labels: torch.Tensor, logits: torch.Tensor, aspects) -> dict:
    """Aspect detection and sentiment scored separately, as in ABSA papers on UIT-ViSFD.

    det_f1: F1 of "present" per aspect (present vs absent), macro-averaged over aspects.
    sent_f1: 3-class macro F1 over the (review, aspect) slots where the aspect IS present, the
    sentiment read from the three sentiment logits (sentiment given the true aspect).
    f1_inflated: the original's number, absent read as neutral on both sides, per-aspect WEIGHTED F1
    over three classes, averaged over aspects; absent slots are most of the data and trivially right."""
    pred = losses_lib.predicted_states(logits)
    present, present_pred = labels != data_lib.ABSENT, pred != data_lib.ABSENT
    sentiment_pred = logits[..., 1:].argmax(dim=-1) + 1  # (N, A) best sentiment state, ignoring "absent"
    per_aspect = []
    for a, name in enumerate(aspects):
        detection = precision_recall_f1(present[:, a].long(), present_pred[:, a].long(), 2, average=None)[2][1]
        slots = present[:, a]
        sentiment = (precision_recall_f1(labels[slots, a] - 1, sentiment_pred[slots, a] - 1, 3, "macro")[2]
                     if slots.any() else float("nan"))
        per_aspect.append({"aspect": name, "det_f1": float(detection), "sent_f1": sentiment,
                           "support": int(slots.sum())})
    sent_f1 = precision_recall_f1(labels[present] - 1, sentiment_pred[present] - 1, 3, "macro")[2]
    det_f1 = float(np.mean([row["det_f1"] for row in per_aspect]))
    y, p = ((states.masked_fill(states == data_lib.ABSENT, data_lib.NEUTRAL) - 1).numpy()  # 3 classes
            for states in (labels, pred))
    inflated = float(np.mean([precision_recall_f1(y[:, a], p[:, a], 3, "weighted")[2] for a in range(y.shape[1])]))
    # FIX(VSB-HONEST-F1): select on detection + sentiment F1; the absent=neutral F1 stays, labelled inflated.
    return {"det_f1": det_f1, "sent_f1": sent_f1, "f1_inflated": inflated,
            "score": 0.5 * (det_f1 + sent_f1), "per_aspect": per_aspect}


def scores(metrics: dict) -> dict[str, float]:
    """The flat scores of `aspect_metrics` (no per-aspect table): what results["val"/"test"] hold."""
    return {k: float(metrics[k]) for k in SCORES}


@torch.no_grad()
def predict_split(model, loader, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, A, S) and labels (N, A) of a split in eval mode, gathered over ranks; ends in train mode."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        with runtime.autocast(cfg.device, cfg.dtype):
            logits.append(model(batch["input_ids"].to(cfg.device), batch["attention_mask"].to(cfg.device)).float())
        labels.append(batch["labels"].to(cfg.device))
    model.train()
    return runtime.gather_cat(torch.cat(logits)).cpu(), runtime.gather_cat(torch.cat(labels)).cpu()


@torch.no_grad()
def evaluate(model, loader, cfg: Config) -> dict:
    """aspect_metrics of a whole split; every rank gets the same numbers."""
    logits, labels = predict_split(model, loader, cfg)
    return aspect_metrics(labels, logits, cfg.aspects)


def validate(state: State, loader, cfg: Config, run: Run) -> dict:
    """Score the validation split (gathered over ranks: every rank agrees), log it, keep best.pt if better."""
    epoch = state.epoch if state.batch_in_epoch else state.epoch - 1  # at an epoch's end state points at the next
    metrics = evaluate(runtime.unwrap(state.model), loader, cfg)
    state.meters["val"] = scores(metrics)
    run.log({"step": state.step, "epoch": epoch, "split": "val", **_log_metrics(metrics)})
    improved = run.improved(metrics["score"], state.step, epoch)
    run.print(f"epoch {epoch} step {state.step}: val {_summary(metrics)}" + (" (best)" if improved else ""))
    if improved:
        run.save("best.pt", state)
    return metrics


def train_one_epoch(state: State, loader, val_loader, cfg: Config, run: Run) -> bool:
    """From state's position to the end of its epoch (or schedule); True when a stop signal came (its step done)."""
    t, optimizer, scaler = cfg.train, state.optimizer, state.scaler
    for batch in loader:
        if state.step >= t.total_steps:  # --max-iters ends the schedule inside this epoch
            return False
        lr = lr_at(state.step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = {k: v.to(cfg.device, non_blocking=True) for k, v in batch.items()}
        with runtime.autocast(cfg.device, cfg.dtype):
            losses = losses_lib.compute_losses(state.model, batch, cfg.alpha, cfg.loss)
        runtime.check_finite(losses, state.step)
        scaler.scale(losses["loss"]).backward()
        scaler.unscale_(optimizer)
        # --grad-clip 0: no clipping, the norm is still measured for the log.
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), t.grad_clip or math.inf)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1

        window = state.meters["window"]  # sums since the last training log row
        for name, value in {**losses, "grad_norm": grad_norm}.items():
            window[name] = window.get(name, 0.0) + value.detach().float()
        window["n"] += 1
        if state.step % cfg.run.log_interval == 0:
            # Averaged over the window and over ranks (one all-reduce per logged value).
            row = {k: runtime.all_reduce_mean(v / window["n"]).item() for k, v in window.items() if k != "n"}
            run.log({"step": state.step, "epoch": state.epoch, "split": "train", "lr": lr, **row})
            parts = " ".join(f"{name} {row[name]:.4f}" for name in ("focal", "supcon", "probe") if name in row)
            run.print(f"step {state.step} epoch {state.epoch}: train loss {row['loss']:.4f} ({parts}) "
                      f"lr {lr:.2e} grad norm {row['grad_norm']:.3f}")
            state.meters["window"] = {"n": 0}
        # Before the checkpoint of this step, so a checkpoint never precedes a validation it owes.
        # The epoch's (or the schedule's) last step is validated by main().
        mid_epoch = state.batch_in_epoch < t.batches_per_epoch and state.step < t.total_steps
        val_due = bool(t.val_interval) and state.step % t.val_interval == 0 and mid_epoch
        if val_due:
            validate(state, val_loader, cfg, run)
        if val_due or (cfg.run.ckpt_interval and state.step % cfg.run.ckpt_interval == 0):
            run.save("last.pt", state)
        if run.should_stop():
            return True
    return False


def main(argv: list[str] | None = None) -> dict:
    start_time = time.time()
    parser = build_parser()
    args, resumed = cli.parse_with_resume(parser, argv, PROJECT)  # a given checkpoint is checked here
    if args.hidden % args.heads:
        parser.error(f"--hidden {args.hidden} is not a multiple of --heads {args.heads}")
    cfg = config_from(args)
    dist_info = runtime.setup_distributed(cfg.run.device)
    cfg.device, cfg.dtype = dist_info.device, runtime.autocast_dtype(dist_info.device, cfg.run.amp)
    runtime.seed_everything(cfg.run.seed)

    splits = build_data(cfg)
    check_sizes(splits, cfg.train.batch_size, dist_info.world_size)
    cfg.aspects = splits["train"].aspects
    tokenizer = data_lib.build_tokenizer(cfg.encoder.encoder, resumed["extra"]["vocab"] if resumed else None,
                                         splits["train"].texts)
    datasets = {k: data_lib.encode_reviews(s, tokenizer, cfg.data.max_len) for k, s in splits.items()}
    # Shuffled, sharded over processes, resumable mid-epoch (set_epoch); val/test in order, nothing dropped.
    sampler = runtime.EpochSampler(len(datasets["train"]), cfg.train.batch_size, shuffle=True, seed=cfg.run.seed,
                                   rank=dist_info.rank, world_size=dist_info.world_size, drop_last=True)
    val_loader, test_loader = (data_lib.eval_loader(datasets[k], tokenizer.pad_id, data_lib.EVAL_BATCH, cfg.run.workers,
                                                    cfg.run.seed, dist_info.rank, dist_info.world_size)
                               for k in ("val", "test"))
    fill_recipe(cfg, sampler.batches_per_epoch())
    cfg.model, pretrained_state = model_config(cfg, len(tokenizer), len(cfg.aspects))
    config = {**vars(args), **asdict(cfg.encoder), **asdict(cfg.loss), **asdict(cfg.train),
              "aspects": list(cfg.aspects), "model": asdict(cfg.model), "world_size": dist_info.world_size}
    if resumed:
        cli.check_resume_config(resumed, config, RESUME_KEYS, args.resume)

    with Run(PROJECT, args, config, f"runs/{PROJECT}", resumed, best_metric="score", best_mode="max") as run:
        model = AspectSentimentModel(cfg.model).to(cfg.device)
        if pretrained_state is not None:
            try:
                load_hf_encoder(model.encoder, pretrained_state)
            except (KeyError, ValueError) as e:
                raise runtime.DataError(f"--encoder {cfg.encoder.encoder}: {e}") from None
        # NOTE(deviation): no decay on biases, norms, embeddings (STYLE.md); the original decays every parameter.
        optimizer = torch.optim.AdamW(runtime.decay_param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr,
                                      fused=cfg.device.type == "cuda")  # plain on CPU: see bench.py
        ddp_model = runtime.compile_model(
            runtime.wrap_ddp(model, dist_info, find_unused_parameters=cfg.loss.loss == "focal"), cfg.run.compile)
        # meters: the open window of the training log, the last validation scores, and the word
        # vocabulary (a list of str), so a checkpoint is scored with the token ids it trained on.
        state = State(ddp_model, optimizer, runtime.make_grad_scaler(cfg.device, cfg.dtype),
                      meters={"window": {"n": 0}, "val": {}, "vocab": getattr(tokenizer, "vocab", None)})
        run.restore(state)  # fills step/epoch/batch_in_epoch/meters from --resume
        cfg.alpha = training_alpha(splits, cfg.loss.alpha_power, cfg.loss.alpha_rule).to(cfg.device)
        run.open(LOG_COLUMNS, checkpoint_bytes(model, optimizer))
        run.print(f"[{PROJECT}] {len(cfg.aspects)} aspects, train/val/test = {len(datasets['train'])}/"
                  f"{len(datasets['val'])}/{len(datasets['test'])}, vocab {cfg.model.vocab_size}, "
                  f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {cfg.train.total_steps} steps "
                  f"on {cfg.device}")
        run.print(SCORE_LEGEND)
        run.restore_rng()  # last: dropout continues where the run stopped

        for epoch in range(state.epoch, cfg.train.epochs):
            sampler.set_epoch(epoch, state.batch_in_epoch)
            loader = runtime.make_loader(datasets["train"], sampler, cfg.run.workers, cfg.run.seed, epoch,
                                         data_lib.make_collate(tokenizer.pad_id))
            if train_one_epoch(state, loader, val_loader, cfg, run):
                run.save("last.pt", state)
                run.exit_stopped(state.step)
            state.epoch, state.batch_in_epoch = epoch + 1, 0  # what last.pt resumes from, once validated
            validate(state, val_loader, cfg, run)
            run.save("last.pt", state)
            run.save_periodic(state)
        runtime.assert_replicas_in_sync(model)  # under torchrun: every rank must end with the same weights
        state.model = model  # the bare module from here on: DDP must not outlive the process group
        del ddp_model

        # Test once, with the weights of the best validation (every rank loads the complete best.pt).
        run.load_best(model)
        test = evaluate(model, test_loader, cfg)
        run.log({"step": state.step, "epoch": run.best["epoch"], "split": "test", **_log_metrics(test)})
        run.print(f"best epoch {run.best['epoch']}: test {_summary(test)}")
        run.print("per-aspect test scores (best epoch):\n" + per_aspect_table(test))
        run.print(f"final validation: {_summary(state.meters['val'])}")
        run.print(f"elapsed {time.time() - start_time:.1f} s, run folder {run.dir}")
        results = {"run_dir": str(run.dir), "step": state.step, "best": dict(run.best), "val": state.meters["val"],
                   "test": scores(test), "test_per_aspect": test["per_aspect"],
                   "bad_labels_skipped": {name: split.skipped for name, split in splits.items() if split.skipped}}
        run.finish(results)
    runtime.cleanup_distributed()
    return results


def evaluate_checkpoint(path, split: str = "test", device: str = "cpu") -> dict[str, float]:
    """Score `split` with a checkpoint alone (data, word vocabulary, model rebuilt from it) in this one
    process: for its best.pt the flat scores main() reports in results["test"]."""
    checkpoint = load_run_checkpoint(path, PROJECT)
    cfg = config_from(argparse.Namespace(**checkpoint["args"]))
    cfg.device, cfg.aspects = torch.device(device), checkpoint["config"]["aspects"]
    cfg.dtype = runtime.autocast_dtype(cfg.device, cfg.run.amp)
    tokenizer = data_lib.build_tokenizer(cfg.encoder.encoder, checkpoint["extra"]["vocab"])
    model = AspectSentimentModel(ModelConfig(**checkpoint["config"]["model"]))
    load_model_state(model, checkpoint["model"], path)
    encoded = data_lib.encode_reviews(build_data(cfg)[split], tokenizer, cfg.data.max_len)
    loader = data_lib.eval_loader(encoded, tokenizer.pad_id)
    return scores(evaluate(model.to(cfg.device), loader, cfg))


def _log_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k in LOG_COLUMNS}


def _summary(metrics: dict) -> str:
    """The scores in one short line; SCORE_LEGEND, printed once, says what each one is."""
    return "detect {det_f1:.4f} | sentiment {sent_f1:.4f} | inflated {f1_inflated:.4f}".format(**metrics)


def per_aspect_table(metrics: dict) -> str:
    return "\n".join([f"{'aspect':<14}{'detect F1':>10}{'sentiment F1':>14}{'present':>9}"] + [
        f"{r['aspect']:<14}{r['det_f1']:>10.4f}{r['sent_f1']:>14.4f}{r['support']:>9d}" for r in metrics["per_aspect"]])


if __name__ == "__main__":
    cli.run_cli(main)
