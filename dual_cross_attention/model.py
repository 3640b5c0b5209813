"""DCAL: Dual Cross-Attention Learning (Zhu et al., CVPR 2022) on a plain ViT.

Three branches share one ViT:
  SA   - the usual self-attention stack (L blocks) and classifier;
  GLCA - one global-local cross-attention block: the CLS token and the top-R patches picked by
         attention rollout attend to all tokens; own weights, norm and classifier, which reads the
         mean of the selected queries' outputs;
  PWCA - pair-wise cross-attention (training only): a second token stream through the same L
         blocks whose queries attend to its own keys/values and those of a partner image.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

PRESETS = {  # ViT sizes picked by --model; --embed-dim / --depth / --heads / --patch-size override one entry
    "tiny": dict(embed_dim=64, depth=4, num_heads=4, patch_size=4),
    "small": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16),
    "base": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16),  # ViT-B/16, the paper's backbone
    "deit-tiny": dict(embed_dim=192, depth=12, num_heads=3, patch_size=16),  # the paper's ablation backbone
}
GLCA_SELECT = ("rollout", "last-layer", "random")  # how GLCA ranks the patches (the paper's sec. 4.4 ablations)
GLCA_MODES = ("cross", "local-self", "cls-query")
GLCA_READOUTS = ("mean", "local")


@dataclass
class DCALConfig:
    preset: str | None = None  # ViT size: fills the sizes below that are left unset
                               # (default: base = ViT-B/16 as in the paper; tiny on the synthetic data)
    image_size: int | None = None  # square input side in px (default: 448 as in the paper; 32 on the synthetic data)
    patch_size: int | None = None  # patch side; (image_size / patch_size)^2 patch tokens + CLS (default: from --model)
    in_chans: int = 3  # input channels
    num_classes: int = 200  # classes of the SA / GLCA / PWCA classifiers (train.py: from the data)
    embed_dim: int | None = None  # token width D (default: from --model)
    depth: int | None = None  # L SA blocks; the PWCA stream runs through the same T = L blocks (default: from --model)
    num_heads: int | None = None  # attention heads per block (default: from --model)
    mlp_ratio: float = 4.0  # hidden width of the MLP = mlp_ratio * D
    qkv_bias: bool = True  # bias on the fused q/k/v projection (ViT and DeiT have one)
    ln_eps: float = 1e-6  # LayerNorm epsilon of torchvision / timm ViTs
    drop_path: float = 0.1  # stochastic depth rate of the last block, linear from 0 at the first
    glca: bool = True  # the GLCA branch (M = 1 block)
    pwca: bool = True  # the PWCA branch (training only; pairs images within a batch)
    top_ratio: float = 0.1  # R as a fraction of the patches: GLCA local queries (10%% FGVC, 30%% Re-ID)
    # rollout: CLS row of the rollout over all L layers; last-layer: of the last SA block's attention alone;
    # random: R random patches (the paper's sec. 4.4 ablations)
    glca_select: str = "rollout"  # how GLCA picks its R local queries: rollout, last-layer or random
    # cross: CLS + R queries, keys/values of all tokens; local-self: Q, K, V of the CLS + R tokens only;
    # cls-query: the CLS token alone queries all tokens (the Cross-ViT-like baseline of sec. 4.4)
    glca_mode: str = "cross"  # GLCA attention: cross, local-self or cls-query
    glca_readout: str = "mean"  # GLCA classifier input: mean of all its query outputs, or of the R local ones
    grad_checkpoint: bool = False  # recompute each block in backward to save activation memory

    def __post_init__(self):
        # what is left unset comes from the preset; without one, the paper's ViT-B/16 at 448 px
        # (train.py picks the tiny ViT at 32 px for the synthetic data before this runs)
        self.preset = self.preset if self.preset is not None else "base"
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.image_size is None:
            self.image_size = 448

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_local(self) -> int:
        return max(1, int(self.top_ratio * self.grid**2))


class UncertaintyWeighting(nn.Module):
    """Homoscedastic-uncertainty weighting of the branch losses (Kendall et al. 2018; FairMOT form):
        total = 0.5 * sum_i( exp(-s_i) * L_i + s_i ),   s_i = log sigma_i^2 learned, unbounded.
    At the optimum exp(-s_i) = 1 / L_i: branches with similar losses get similar weights (not a bug)."""

    def __init__(self, num_tasks: int):
        super().__init__()
        self.raw_log_vars = nn.Parameter(torch.zeros(num_tasks))  # "raw_": the name checkpoints hold

    @property
    def log_vars(self) -> torch.Tensor:
        return self.raw_log_vars

    def effective_weights(self) -> torch.Tensor:
        """0.5 * exp(-s_i): the factor each branch loss is multiplied by (for logging)."""
        return 0.5 * torch.exp(-self.log_vars.detach())

    def forward(self, losses: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        s = self.log_vars
        stacked = torch.stack([loss.float().reshape(()) for loss in losses])
        return 0.5 * (torch.exp(-s) * stacked + s).sum()


class Attention(nn.Module):
    """Fused q/k/v projection (same layout as torchvision's in_proj and timm's qkv) + output proj."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def split_qkv(self, x: torch.Tensor):
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return qkv[0], qkv[1], qkv[2]

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: DCALConfig, drop_path: float):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        hidden = int(dim * cfg.mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim)))
        self.drop_path = StochasticDepth(drop_path, "row")  # stochastic depth (Huang et al. 2016), per sample

    def forward(self, x: torch.Tensor, partner: torch.Tensor | None = None):
        """x: (B, N, D) SA tokens, or (2B, N, D) SA then PWCA tokens when partner (B,), each image's
        PWCA partner, is given. Returns the tokens and the SA stream's queries and keys (B, H, N, d),
        from which the caller recomputes the attention map for the rollout under no_grad."""
        q, k, v = self.attn.split_qkv(self.norm1(x))
        b = x.shape[0] if partner is None else partner.shape[0]
        # FIX(DCAL-ROLLOUT): fused attention; no (B, H, N, N) map kept on the module or for backward.
        out = F.scaled_dot_product_attention(q[:b], k[:b], v[:b])  # (B, H, N, d)
        if partner is not None:
            # FIX(DCAL-PWCA): PWCA is its own stream through every block: one softmax over own + partner keys.
            k_pair = torch.cat([k[b:], k[:b][partner]], dim=2)  # (B, H, 2N, d): own, then partner's
            v_pair = torch.cat([v[b:], v[:b][partner]], dim=2)
            out = torch.cat([out, F.scaled_dot_product_attention(q[b:], k_pair, v_pair)])  # (2B, H, N, d)
        x = x + self.drop_path(self.attn.merge(out))
        return x + self.drop_path(self.mlp(self.norm2(x))), q[:b], k[:b]


class GLCABlock(Block):
    """Global-local cross-attention: queries of the CLS token and the top-R patches (by rollout),
    keys/values of all tokens. Same parameters (names and shapes) as a Block."""

    def forward(self, x: torch.Tensor, local_idx: torch.Tensor,  # type: ignore[override]
                local_self: bool = False) -> torch.Tensor:
        """x: (B, N, D) all tokens; local_idx: (B, Q) the query tokens' indices, CLS (0) first.
        Keys/values of all N tokens, or of the Q selected ones with `local_self`. Returns (B, Q, D)."""
        dim = x.shape[-1]
        y = x.gather(1, local_idx[..., None].expand(-1, -1, dim))  # (B, Q, D) residual stream of the queries
        weight, bias = self.attn.qkv.weight, self.attn.qkv.bias  # rows: q, k, v (see Attention.split_qkv)
        # NOTE(deviation): Q, the projection and the MLP on the Q selected tokens only, K/V on all: the
        # paper's ~2% FLOPs for its M = 1 GLCA block leaves room for nothing more.
        q = F.linear(self.norm1(y), weight[:dim], None if bias is None else bias[:dim])
        kv = F.linear(self.norm1(y if local_self else x), weight[dim:], None if bias is None else bias[dim:])
        q = rearrange(q, "b n (h d) -> b h n d", h=self.attn.heads)
        k, v = rearrange(kv, "b n (two h d) -> two b h n d", two=2, h=self.attn.heads)
        y = y + self.drop_path(self.attn.merge(F.scaled_dot_product_attention(q, k, v)))  # (B, Q, D)
        return y + self.drop_path(self.mlp(self.norm2(y)))


@torch.no_grad()
def rollout_step(rollout: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """One layer of attention rollout (Abnar & Zuidema 2020): S_hat_i = S_bar_i @ S_hat_{i-1},
    S_bar = 0.5 * mean_heads(softmax(q k^T / sqrt(d))) + 0.5 * I (the residual connection).
    q, k: (B, H, N, d) of one SA layer; rollout: (B, N, N) product of the layers below (None at the
    first). The map is recomputed one head at a time, so only (B, N, N) buffers exist (fused
    attention never returns it). Rows of S_bar sum to 1, so no renormalisation."""
    b, heads, n, d = q.shape
    q, k = q.float(), k.float()
    mean_attn = torch.zeros(b, n, n, device=q.device)
    for h in range(heads):
        mean_attn += torch.softmax(q[:, h] @ k[:, h].transpose(-2, -1) * d**-0.5, dim=-1)
    layer = 0.5 * mean_attn / heads + 0.5 * torch.eye(n, device=q.device)
    return layer if rollout is None else torch.bmm(layer, rollout)


class DCAL(nn.Module):
    def __init__(self, cfg: DCALConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        for name, allowed in (("glca_select", GLCA_SELECT), ("glca_mode", GLCA_MODES), ("glca_readout", GLCA_READOUTS)):
            if getattr(cfg, name) not in allowed:
                raise ValueError(f"{name} {getattr(cfg, name)!r} is not one of {allowed}")
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embed = nn.Conv2d(cfg.in_chans, dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid**2, dim))
        rates = [cfg.drop_path * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList([Block(cfg, r) for r in rates])
        self.norm = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.head = nn.Linear(dim, cfg.num_classes)
        if cfg.glca:
            self.glca_block = GLCABlock(cfg, rates[-1])
            self.glca_norm = nn.LayerNorm(dim, eps=cfg.ln_eps)
            self.glca_head = nn.Linear(dim, cfg.num_classes)
        num_tasks = 1 + cfg.glca + cfg.pwca
        # learned log-variances of the branch losses (Kendall et al. 2018), only with > 1 branch.
        # FIX(DCAL-UNCERTAINTY): unbounded log-variances; clamp() has no gradient past its bounds.
        self.loss_weighting = UncertaintyWeighting(num_tasks) if num_tasks > 1 else None
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if cfg.glca:
            self.init_glca_from_last_block()

    @torch.no_grad()
    def init_glca_from_last_block(self) -> None:
        """GLCA starts as a copy of the last SA block and final norm (the paper: GLCA shares the SA
        block's architecture, its own weights start from the pretrained block); not its classifier."""
        self.glca_block.load_state_dict(self.blocks[-1].state_dict())
        self.glca_norm.load_state_dict(self.norm.state_dict())

    def branches(self) -> list[str]:
        return ["sa"] + (["glca"] if self.cfg.glca else []) + (["pwca"] if self.cfg.pwca else [])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.patch_embed(images), "b d gh gw -> b (gh gw) d")  # patches to tokens
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1 + N_patches, D)

    def forward(self, images: torch.Tensor, partner: torch.Tensor | None = None,
                need_rollout: bool = False) -> dict[str, torch.Tensor]:
        """images (B, C, H, W); partner (B,) PWCA partner indices (None: no PWCA, e.g. at evaluation).
        Returns logits per branch ('sa', 'glca', 'pwca') and, when asked, the rollout (B, N, N)."""
        x = self.embed(images)
        b = x.shape[0]
        partner = partner if self.cfg.pwca else None
        if partner is not None:
            x = torch.cat([x, x])  # (2B, N, D): the PWCA stream starts from the same embeddings as SA
        glca_input, rollout, last_map = x, None, None
        use_rollout = need_rollout or (self.cfg.glca and self.cfg.glca_select == "rollout")
        recompute = self.cfg.grad_checkpoint and self.training and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            if last:
                # NOTE(deviation): the paper does not say where its M = 1 GLCA block sits. It runs
                # here beside the last SA block, on the same input, with the rollout of all L
                # layers (the last layer's map is computed from this same input), so GLCA can start
                # as an exact copy of the pretrained last block (DCAL-GLCA-INIT).
                glca_input = x[:b]
            x, q, k = checkpoint(blk, x, partner, use_reentrant=False) if recompute else blk(x, partner)
            if use_rollout:
                # FIX(DCAL-ROLLOUT): S_hat_i = S_bar_i @ S_hat_{i-1} from the first layer up, under no_grad.
                rollout = rollout_step(rollout, q.detach(), k.detach())
            if last and self.cfg.glca and self.cfg.glca_select == "last-layer":
                last_map = rollout_step(None, q.detach(), k.detach())  # the last SA block's map alone
        out = {"sa": self.head(self.norm(x[:b, 0]))}
        if self.cfg.glca:
            if self.cfg.glca_select == "rollout":
                patch_scores = rollout[:, 0, 1:]  # (B, N_patches) attention flow from the patches to CLS
            elif self.cfg.glca_select == "last-layer":
                patch_scores = last_map[:, 0, 1:]
            else:  # random: a new draw at every call, training and evaluation alike
                patch_scores = torch.rand(b, self.cfg.grid**2, device=x.device)
            out["glca"], picks = self.glca_forward(glca_input, patch_scores)
            if need_rollout:
                out["glca_picks"] = picks
        if partner is not None:
            out["pwca"] = self.head(self.norm(x[b:, 0]))  # PWCA shares the SA classifier and target
        if need_rollout:
            out["rollout"] = rollout
        return out

    def glca_forward(self, x: torch.Tensor, patch_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D) the input of the last block; patch_scores: (B, N_patches) ranks the patches.
        CLS + the top-R patches are the queries (CLS alone in cls-query mode); the classifier reads the
        normalised mean of their outputs. Returns the GLCA logits and the picks (B, R) (0-based patches)."""
        cls_idx = torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)
        picks = patch_scores.topk(self.cfg.num_local, dim=-1).indices  # (B, R)
        if self.cfg.glca_mode == "cls-query":
            picks = picks[:, :0]  # no local query: the CLS token alone
        local_idx = torch.cat([cls_idx, picks + 1], dim=1)  # (B, 1 + R), CLS first
        tokens = self.glca_block(x, local_idx, local_self=self.cfg.glca_mode == "local-self")  # (B, 1 + R, D)
        if self.cfg.glca_readout == "local" and tokens.shape[1] > 1:
            tokens = tokens[:, 1:]
        # FIX(DCAL-GLCA-LOCAL): the mean of the queries' outputs; the CLS row alone ignored the R picks.
        # was: return self.glca_head(self.glca_norm(tokens[:, 0]))
        return self.glca_head(self.glca_norm(tokens.mean(dim=1))), picks


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        # patch embedding as a linear layer on the flattened patch (as in timm / MAE)
        nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
        nn.init.zeros_(m.bias)


def derangement(n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation with no fixed point: partner[i] != i (PWCA never pairs an image with
    itself). One random cycle over a random order."""
    if n < 2:
        raise ValueError("PWCA needs at least 2 images per batch to pair them")
    order = torch.randperm(n, generator=generator)
    partner = torch.empty(n, dtype=torch.long)
    partner[order] = order.roll(-1)
    return partner.to(device)


def compute_losses(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, use_pwca: bool):
    """Forward one training batch (PWCA partners drawn here); returns (total, {branch: CE}, outputs).
    `model` may be DDP-wrapped: its loss weighting is read from `.module` then."""
    partner = derangement(labels.shape[0], images.device) if use_pwca else None
    out = model(images, partner=partner)
    parts = {name: F.cross_entropy(out[name].float(), labels) for name in ("sa", "glca", "pwca") if name in out}
    weighting = getattr(model, "module", model).loss_weighting
    total = weighting(list(parts.values())) if weighting is not None else parts["sa"]
    return total, parts, out


# ----------------------------------------------------------------------------- pretrained weights

TORCHVISION_BLOCK_KEYS = {  # ours (under blocks.{i}.) -> torchvision (under encoder.layers.encoder_layer_{i}.)
    "norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
    "attn.qkv.weight": "self_attention.in_proj_weight", "attn.qkv.bias": "self_attention.in_proj_bias",
    "attn.proj.weight": "self_attention.out_proj.weight", "attn.proj.bias": "self_attention.out_proj.bias",
    "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.0.weight", "mlp.fc1.bias": "mlp.0.bias",
    "mlp.fc2.weight": "mlp.3.weight", "mlp.fc2.bias": "mlp.3.bias",
}
TORCHVISION_KEYS = {"cls_token": "class_token", "pos_embed": "encoder.pos_embedding",
                    "patch_embed.weight": "conv_proj.weight", "patch_embed.bias": "conv_proj.bias",
                    "norm.weight": "encoder.ln.weight", "norm.bias": "encoder.ln.bias",
                    "head.weight": "heads.head.weight", "head.bias": "heads.head.bias"}
TIMM_RENAMES = {"patch_embed.weight": "patch_embed.proj.weight", "patch_embed.bias": "patch_embed.proj.bias"}


def pretrained_key_map(depth: int, source: str) -> dict[str, str]:
    """Our parameter name -> the name in a torchvision `vit_b_16`-style or timm ViT/DeiT state_dict
    (timm: our names, but for the patch embedding). Both store q, k, v fused in one (3D, D) matrix
    in the order q, k, v, like ours."""
    if source not in ("torchvision", "timm"):
        raise ValueError(f"unknown weight source {source!r}: use 'torchvision' or 'timm'")
    tv = source == "torchvision"
    key_map = {ours: theirs if tv else TIMM_RENAMES.get(ours, ours) for ours, theirs in TORCHVISION_KEYS.items()}
    for i in range(depth):
        prefix = f"encoder.layers.encoder_layer_{i}." if tv else f"blocks.{i}."
        key_map.update({f"blocks.{i}.{ours}": prefix + (theirs if tv else ours)
                        for ours, theirs in TORCHVISION_BLOCK_KEYS.items()})
    return key_map


def to_timm_state_dict(model: DCAL) -> dict:
    """The SA backbone and classifier in timm's layout (the file `--pretrained FILE` loads back)."""
    own = model.state_dict()
    return {theirs: own[ours].detach().clone() for ours, theirs in pretrained_key_map(model.cfg.depth, "timm").items()}


def detect_source(state_dict: dict) -> str:
    if "class_token" in state_dict and "encoder.pos_embedding" in state_dict:
        return "torchvision"
    if "cls_token" in state_dict and "patch_embed.proj.weight" in state_dict:
        return "timm"
    raise ValueError("unrecognised ViT state_dict: expected torchvision (class_token, encoder.*) or timm "
                     f"(cls_token, patch_embed.proj.*) keys; first keys: {list(state_dict)[:5]}")


TORCHVISION_HEADS = {768: 12, 1024: 16, 1280: 16}  # torchvision's vit_b / vit_l / vit_h


def vit_sizes(state_dict: dict, source: str | None = None) -> dict:
    """The ViT sizes a state_dict's shapes imply, as openai/CLIP's build_model reads them (width: CLS
    token; depth: block indices; patch: patch-embedding kernel; image size: position grid; MLP ratio:
    first MLP layer). The heads are not in the shapes: the source's convention gives them (timm / DeiT:
    64-dim heads; torchvision: ViT-B/L/H 12/16/16)."""
    source = source or detect_source(state_dict)
    names = pretrained_key_map(0, source)  # the keys outside the blocks
    prefix = "blocks." if source == "timm" else "encoder.layers.encoder_layer_"
    blocks = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    if not blocks:
        raise ValueError(f"{source} state_dict without transformer blocks ({prefix}<i>.*)")
    width = state_dict[names["cls_token"]].shape[-1]
    patch = state_dict[names["patch_embed.weight"]].shape[-1]
    tokens = state_dict[names["pos_embed"]].shape[1]  # 1 + grid^2
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"position embedding of {tokens} tokens is not CLS + a square grid")
    fc1 = f"{prefix}0.{'mlp.fc1' if source == 'timm' else 'mlp.0'}.weight"
    heads = TORCHVISION_HEADS.get(width, max(1, width // 64)) if source == "torchvision" else max(1, width // 64)
    return dict(embed_dim=width, depth=max(blocks) + 1, patch_size=patch, image_size=grid * patch,
                num_heads=heads, mlp_ratio=state_dict[fc1].shape[0] / width)


# How each library resamples the patch-grid position embeddings when its own loader puts a checkpoint
# into a model of another image size. Weights are resampled the way their library does it, so a
# 224 px checkpoint at 448 px is the model that library itself would build (the one its recipes assume).
POS_EMBED_RESAMPLING = {
    # torchvision/models/vision_transformer.py, interpolate_embeddings: bicubic, align_corners=True
    "torchvision": dict(mode="bicubic", align_corners=True, antialias=False),
    # timm/models/vision_transformer.py checkpoint_filter_fn calls timm/layers/pos_embed.py
    # resample_abs_pos_embed with its defaults: bicubic, align_corners unset (= False), antialias=True
    "timm": dict(mode="bicubic", align_corners=False, antialias=True),
}


def resample_pos_embed(pos_embed: torch.Tensor, grid: int, source: str = "timm") -> torch.Tensor:
    """(1, 1 + g*g, D) -> (1, 1 + grid*grid, D): the patch grid interpolated as `source`
    ('torchvision' or 'timm') does it, the CLS entry kept apart (it has no position).
    14x14 -> 28x28 when a 224 px ViT is fine-tuned at 448 px."""
    if source not in POS_EMBED_RESAMPLING:
        raise ValueError(f"unknown weight source {source!r}: use one of {sorted(POS_EMBED_RESAMPLING)}")
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    old = math.isqrt(patch_pos.shape[1])
    if old * old != patch_pos.shape[1]:
        raise ValueError(f"position embedding of {patch_pos.shape[1]} patches is not a square grid")
    if old == grid:
        return pos_embed
    patch_pos = rearrange(patch_pos, "1 (gh gw) d -> 1 d gh gw", gh=old)  # tokens back onto the grid
    # in float32 as timm does; torchvision interpolates in the stored dtype, the same for its fp32 weights
    patch_pos = F.interpolate(patch_pos.float(), size=(grid, grid), **POS_EMBED_RESAMPLING[source])
    patch_pos = rearrange(patch_pos, "1 d gh gw -> 1 (gh gw) d").to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


def load_pretrained(model: DCAL, state_dict: dict, source: str | None = None) -> dict:
    """Load a torchvision or timm ViT/DeiT state_dict into the SA backbone through an explicit key
    map: every mapped key must exist with the right shape (pos-embed resampled first, as the source
    library does), every source key must be used; the classifier only if its shape matches (another
    class count starts a fresh head). Returns what was done."""
    source = source or detect_source(state_dict)
    key_map = pretrained_key_map(model.cfg.depth, source)
    own = model.state_dict()
    head_source = key_map["head.weight"]
    head_loaded = head_source in state_dict and state_dict[head_source].shape == own["head.weight"].shape
    skipped = set() if head_loaded else {key_map.pop("head.weight"), key_map.pop("head.bias")}
    absent = sorted(src for src in key_map.values() if src not in state_dict)
    unexpected = sorted(set(state_dict) - set(key_map.values()) - skipped)
    if absent or unexpected:
        raise KeyError(f"{source} state_dict does not fit a depth-{model.cfg.depth} ViT: missing {absent[:8]} "
                       f"({len(absent)}), unexpected {unexpected[:8]} ({len(unexpected)})")
    new_state = {}
    for ours, theirs in key_map.items():
        tensor = state_dict[theirs]
        if ours == "pos_embed":
            tensor = resample_pos_embed(tensor, model.cfg.grid, source)
        if tensor.shape != own[ours].shape:
            raise ValueError(f"{theirs} has shape {tuple(tensor.shape)}, {ours} needs {tuple(own[ours].shape)}")
        new_state[ours] = tensor
    # every DCAL-only tensor (GLCA, loss weights, a fresh head) keeps its own value: strict, no key left out
    model.load_state_dict({**own, **new_state})
    if model.cfg.glca:
        # FIX(DCAL-GLCA-INIT): GLCA starts from the pretrained last block, not from a random init.
        model.init_glca_from_last_block()
    return {"source": source, "loaded": len(new_state), "head_loaded": head_loaded,
            "pos_embed": f"{state_dict[key_map['pos_embed']].shape[1]} -> {own['pos_embed'].shape[1]} tokens"}
