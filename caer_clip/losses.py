"""CLIP-CAER losses (RAPT-CLIP utils/loss.py defines the terms; the fixes are this repository's):
total = L_cls + ramp * (w_mi * MI + w_dc * DC + w_moco * MoCo). L_cls: CE, label-smoothing CE, or semantic
label-distribution learning (LDL) after `ldl_warmup` epochs; MI: learned vs hand-crafted class texts; DC:
decorrelated class prototypes; MoCo: the video ranked against its class text and a queue of video keys.
With mixup each term on mixed labels is lam * L(y_a) + (1 - lam) * L(y_b)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.cli import above, arg, at_least, between
from common.mixup import mixup_loss
from common.runtime import check_finite


@dataclass
class LossConfig:
    cls_loss: str = arg("lsr", "hard-label loss: 'ce' or 'lsr' (label-smoothing CE)", choices=["ce", "lsr"])
    smoothing: float = arg(0.1, "label smoothing epsilon of 'lsr'", check=between(0.0, 1.0))
    # Off by default as in the official CLIP-CAER recipe (CE); with a random text encoder (the
    # synthetic demo) the description similarities carry no meaning and LDL only blurs the targets.
    use_ldl: bool = arg(False, "semantic LDL (soft targets from class-text similarity) after the warm-up", flag="--ldl")
    ldl_warmup: int = arg(2, "epochs of hard labels before LDL takes over", check=at_least(0))
    ldl_temperature: float = arg(0.1, "temperature of the LDL target softmax over text cosines", check=above(0.0))
    mixup_alpha: float = arg(0.0, "Beta(alpha, alpha) mixup of both streams (0: off)", check=at_least(0.0, float))
    w_mi: float = arg(0.1, "weight of the MI loss (learned vs hand-crafted class texts)", check=at_least(0.0, float))
    # FIX(CAER-LOSS-WEIGHTS): at weight 5 the DC term dominated and prompts learned orthogonality.
    w_dc: float = arg(0.1, "weight of the DC loss (decorrelated class prototypes)", check=at_least(0.0, float))
    w_moco: float = arg(0.1, "weight of the MoCo loss", check=at_least(0.0, float))
    aux_delay: float = arg(0.0, "epochs with the auxiliary weights at 0 before their ramp", check=at_least(0.0, float))
    aux_warmup: float = arg(1.0, "epochs of the auxiliary weights' ramp from 0 to full", check=at_least(0.0, float))
    mi_temperature: float = arg(0.07, "InfoNCE temperature of the MI loss", check=above(0.0))
    moco_temperature: float = arg(0.07, "InfoNCE temperature of the MoCo loss", check=above(0.0))


def semantic_ldl_loss(logits: torch.Tensor, target: torch.Tensor, class_text: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """KL(q || p) with q = softmax(cos(t_y, t_c) / temperature) over the class description
    features t: classes described like the true one share its probability mass."""
    # FIX(CAER-LDL-NORM): unit, detached class features at a low temperature, or q is ~uniform and KL ~0.
    text = F.normalize(class_text.detach().float(), dim=-1)
    soft_targets = F.softmax((text @ text.T)[target] / temperature, dim=-1)  # (B, C)
    return F.kl_div(F.log_softmax(logits.float(), dim=-1), soft_targets, reduction="batchmean")


def classification_loss(logits: torch.Tensor, target: torch.Tensor, class_text: torch.Tensor, epoch: int,
                        cfg: LossConfig) -> torch.Tensor:
    # FIX(CAER-LDL-WARMUP): LDL started at step 0 from untrained prompts; hard labels first.
    # was: if cfg.use_ldl:
    if cfg.use_ldl and epoch >= cfg.ldl_warmup:
        return semantic_ldl_loss(logits, target, class_text, cfg.ldl_temperature)
    if cfg.cls_loss == "lsr":
        # FIX(CAER-LSR): torch's label smoothing; a one-hot of width max(target)+1 broke batches without the last class.
        return F.cross_entropy(logits.float(), target, label_smoothing=cfg.smoothing)
    return F.cross_entropy(logits.float(), target)


def mi_loss(learned_text: torch.Tensor, handcrafted_text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between learned and hand-crafted features of the same class (C, D), RAPT-CLIP
    utils/loss.py:23-44 at d318d0a: each class's learned text must pick its own hand-crafted text, and back."""
    logits = F.normalize(learned_text.float(), dim=-1) @ F.normalize(handcrafted_text.float(), dim=-1).T
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits / temperature, target) + F.cross_entropy(logits.T / temperature, target))


def dc_loss(class_text: torch.Tensor) -> torch.Tensor:
    """Decorrelation of class prototypes: mean squared off-diagonal cosine, sum((S-I)^2)/(C(C-1))."""
    text = F.normalize(class_text.float(), dim=-1)
    num_classes = text.shape[0]
    off_diagonal = text @ text.T - torch.eye(num_classes, device=text.device)
    return off_diagonal.pow(2).sum() / (num_classes * (num_classes - 1))


def moco_loss(video: torch.Tensor, class_text: torch.Tensor, queue: torch.Tensor, queue_labels: torch.Tensor,
              labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """RAPT-CLIP's MoCoRank (utils/loss.py:129-154 at 706b54b): each unit video feature (B, D) is ranked
    against its class's text feature (the positive) and the queued momentum video keys (K, D, the
    negatives), cross-entropy at index 0. Trains the visual path and the prompts."""
    positive = (video * class_text[labels]).sum(dim=-1, keepdim=True)  # (B, 1)
    negatives = video @ queue.detach().T  # (B, K)
    # FIX(CAER-MOCO-QUEUE): queue keys of the video's own class are not negatives (nor are empty slots).
    # was: dropped = queue_labels.view(1, -1) < 0
    dropped = (labels.view(-1, 1) == queue_labels.view(1, -1)) | (queue_labels.view(1, -1) < 0)  # (B, K)
    logits = torch.cat([positive, negatives.masked_fill(dropped, float("-inf"))], dim=1).float() / temperature
    return F.cross_entropy(logits, torch.zeros(len(labels), dtype=torch.long, device=logits.device))


def aux_ramp(epoch_progress: float, warmup: float, delay: float = 0.0) -> float:
    """Auxiliary-weight factor: 0 for `delay` epochs, then 0 -> 1 linearly over `warmup` epochs (a pure
    function; RAPT-CLIP utils/utils.py:14-21 steps it per epoch)."""
    if epoch_progress < delay:
        return 0.0
    return 1.0 if warmup <= 0 else min(1.0, (epoch_progress - delay) / warmup)


def total_loss(out: dict[str, torch.Tensor], y_a: torch.Tensor, y_b: torch.Tensor, lam: float, epoch: int,
               epoch_progress: float, cfg: LossConfig, queue: tuple[torch.Tensor, torch.Tensor] | None = None,
               step: int | None = None):
    """Returns (total, raw components, weighted components); raises NonFiniteLossError naming the
    component that is NaN/Inf."""
    # LDL targets from the learned class texts, as RAPT trainer.py:147-152
    cls_fn = lambda logits, target: classification_loss(logits, target, out["text"], epoch, cfg)
    moco_fn = lambda video, target: moco_loss(video, out["text"], queue[0], queue[1], target, cfg.moco_temperature)
    moco = queue is not None and "key" in out  # keys exist in training mode only
    parts = {"cls": mixup_loss(cls_fn, out["logits"], y_a, y_b, lam),
             "mi": mi_loss(out["text"], out["handcrafted"], cfg.mi_temperature), "dc": dc_loss(out["text"]),
             # on mixed labels as RAPT trainer.py:190
             "moco": mixup_loss(moco_fn, out["video"], y_a, y_b, lam) if moco else out["logits"].new_zeros(())}
    # FIX(CAER-LOSS-WEIGHTS): auxiliary terms ramp in after a warm-up, not at full weight from step 0.
    # was: ramp = 1.0
    ramp = aux_ramp(epoch_progress, cfg.aux_warmup, cfg.aux_delay)
    weighted = {"cls": parts["cls"], "mi": ramp * cfg.w_mi * parts["mi"], "dc": ramp * cfg.w_dc * parts["dc"],
                "moco": ramp * cfg.w_moco * parts["moco"]}
    total = sum(weighted.values())
    # FIX(CAER-NONFINITE): stop, naming the component; nan_to_num zeroed the gradients and hid it.
    # was: total = torch.nan_to_num(total, nan=0.0, posinf=0.0, neginf=0.0)
    check_finite({f"loss_{k}": v for k, v in parts.items()}, step)
    return total, parts, weighted
