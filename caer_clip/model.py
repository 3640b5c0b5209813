"""CLIP-CAER (Zhao et al., ICCV 2025; built on DFER-CLIP, Zhao & Patras, BMVC 2023).

Face and context frames go through one shared CLIP image encoder, the face features through a
residual adapter, each stream through its own temporal model; the two clip vectors are concatenated,
projected and L2-normalised. Class text features: a CoOp prompt learner through the frozen CLIP text
encoder. Logits = scale * cos(video, text). A momentum copy of the visual head fills a queue of video
keys, the negatives of the MoCo ranking loss.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from caer_clip.clip import CLIP, LayerNorm, Transformer


@dataclass
class ModelConfig:
    clip: str = "tiny"  # 'tiny' (random), a local OpenAI .pt file, or 'openai:ViT-B-16' (OpenAI's file)
    num_classes: int = 5  # emotion classes: not a flag, set from the dataset's class list
    num_frames: int = 4  # T frames sampled per clip (the paper uses 16)
    n_ctx: int = 8  # learnable CoOp context vectors per prompt
    class_specific_ctx: bool = True  # one set of context vectors per class (else shared by all classes)
    temporal: str = "cls"  # temporal transformer's output: 'cls' CLS token (paper), 'attn' attention pooling (RAPT)
    temporal_layers: int = 1  # transformer blocks per temporal model
    temporal_heads: int = 8  # attention heads per temporal model
    dropout: float = 0.1  # dropout inside the temporal models
    adapter_ratio: float = 0.2  # residual share of the face adapter: x + ratio * adapter(x)
    adapter_reduction: int = 4  # bottleneck factor of the face adapter
    use_context: bool = True  # context stream on (--no-context: face stream only)
    freeze_image_encoder: bool = False  # freeze the CLIP image encoder (else trained at its own low lr)
    # NOTE(deviation): the official code fixes 100 (pretrained CLIP's learned value); a randomly
    # initialised tiny CLIP collapses to one class at 100, so the synthetic recipe uses 20.
    logit_scale: float = 20.0  # fixed cosine-logit scale
    # NOTE(deviation): off by default, as in both originals' final code (CLIP-CAER has no MoCo; RAPT-CLIP
    # removed it in 8dbb893); on the synthetic demo RAPT's MoCoRank at weight 0.1 held UAR at 0.61
    # (two face-only classes never predicted) against 0.96 without it. `--moco-queue 4096` turns it on.
    moco_queue: int = 0  # MoCo queue length K (0: no MoCo branch; RAPT @706b54b: 4096)
    moco_momentum: float = 0.99  # MoCo key-encoder momentum m


class PromptLearner(nn.Module):
    """CoOp (Zhou et al. 2022): prompt = [SOT] ctx_1..ctx_n [descriptor words] . [EOT], with
    learnable ctx vectors in place of the n placeholder tokens ("end" class position).
    `descriptors[c]` holds P sentences for class c; their features are averaged per class."""

    def __init__(self, clip: CLIP, tokenizer, descriptors: list[list[str]], n_ctx: int, class_specific: bool):
        super().__init__()
        num_classes, per_class = len(descriptors), len(descriptors[0])
        if any(len(d) != per_class for d in descriptors):
            raise ValueError("every class needs the same number of descriptor sentences")
        self.per_class = per_class
        placeholder = " ".join(["X"] * n_ctx)
        tokens = tokenizer([f"{placeholder} {s}." for d in descriptors for s in d])  # (C*P, L)
        handcrafted = tokenizer([f"a photo of {s}." for d in descriptors for s in d])
        with torch.no_grad():
            embeds = clip.token_embedding(tokens)  # (C*P, L, width)
        width = embeds.shape[-1]
        # Frozen token embeddings around the context slots (SOT before, class words after).
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", embeds[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", embeds[:, 1 + n_ctx:].clone(), persistent=False)
        self.register_buffer("handcrafted_tokens", handcrafted, persistent=False)
        shape = (num_classes, n_ctx, width) if class_specific else (n_ctx, width)
        self.ctx = nn.Parameter(0.02 * torch.randn(shape))
        self.register_buffer("prompt_class", torch.arange(num_classes).repeat_interleave(per_class), persistent=False)

    def forward(self) -> torch.Tensor:
        """Prompt embeddings (C*P, L, width)."""
        ctx = self.ctx[self.prompt_class] if self.ctx.ndim == 3 else self.ctx.expand(len(self.tokens), -1, -1)
        return torch.cat([self.token_prefix, ctx.to(self.token_prefix.dtype), self.token_suffix], dim=1)


class Adapter(nn.Module):
    """CLIP-Adapter bottleneck (Gao et al. 2021) on per-frame face features."""

    def __init__(self, dim: int, reduction: int, ratio: float):
        super().__init__()
        self.ratio = ratio
        self.net = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(inplace=True),
                                 nn.Linear(dim // reduction, dim, bias=False), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # FIX(CAER-ADAPTER-RESIDUAL): blend residually; the random adapter replaced the CLIP features.
        # was: return self.net(x)
        return x + self.ratio * self.net(x)


class TemporalModel(nn.Module):
    """(B, T, D) per-frame features -> (B, D) clip feature: position embedding + transformer, then the
    CLS token ('cls', CLIP-CAER models/Temporal_Model.py:157-176) or attention pooling over the frames
    ('attn', RAPT-CLIP models/Temporal_Model.py:178-222)."""

    def __init__(self, dim: int, num_frames: int, kind: str, layers: int, heads: int, dropout: float):
        super().__init__()
        if kind not in ("cls", "attn"):
            raise ValueError(f"unknown temporal model {kind!r}: use 'cls' or 'attn'")
        self.kind = kind
        # randn as both originals (CLIP-CAER Temporal_Model.py:163-164, RAPT :186): at 0.02 * randn the
        # embedding was ~30x smaller than the frame features and reversing the frames changed nothing.
        self.pos_embedding = nn.Parameter(torch.randn(num_frames + (kind == "cls"), dim))
        self.transformer = Transformer(dim, layers, heads, dropout)
        if kind == "cls":
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
            self.ln = LayerNorm(dim)
        else:  # RAPT: Linear(512, mlp_dim // 2 = 512) -> tanh -> Linear(512, 1), xavier weights, zero biases
            self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))
            for layer in self.score[::2]:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + T, D)
        x = self.transformer(x + self.pos_embedding)
        if self.kind == "cls":  # NOTE(deviation): a LayerNorm on the CLS output (CLIP-CAER :174 returns it bare)
            return self.ln(x[:, 0])
        weights = self.score(x).softmax(dim=1)  # (B, T, 1) over frames
        return (weights * x).sum(dim=1)


class VisualHead(nn.Module):
    """Everything after the shared image encoder: adapter, temporal models, fusion projection."""

    def __init__(self, dim: int, cfg: ModelConfig):
        super().__init__()
        self.adapter = Adapter(dim, cfg.adapter_reduction, cfg.adapter_ratio)
        args = (dim, cfg.num_frames, cfg.temporal, cfg.temporal_layers, cfg.temporal_heads, cfg.dropout)
        self.face_temporal = TemporalModel(*args)
        self.context_temporal = TemporalModel(*args) if cfg.use_context else None
        self.projection = nn.Linear(2 * dim if cfg.use_context else dim, dim)

    def forward(self, face: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """face, context: (B, T, D) frame features -> (B, D) unit video features."""
        clip_feature = self.face_temporal(self.adapter(face))
        if self.context_temporal is not None:
            clip_feature = torch.cat([clip_feature, self.context_temporal(context)], dim=-1)  # (B, 2D)
        return F.normalize(self.projection(clip_feature), dim=-1)


def class_logits(video: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * cos(video, text): (B, D) x (C, D) -> (B, C)."""
    # FIX(CAER-SHAPES): raise on wrong shapes; reshape(-1, C) made a wrong product a wrong-size batch.
    if video.ndim != 2 or text.ndim != 2 or video.shape[1] != text.shape[1]:
        raise ValueError(f"class_logits: expected video (B, D) and text (C, D), got {tuple(video.shape)} "
                         f"and {tuple(text.shape)}")
    return scale * video @ text.T  # (B, C)


class CAERModel(nn.Module):
    def __init__(self, cfg: ModelConfig, clip: CLIP, tokenizer, descriptors: list[list[str]]):
        super().__init__()
        if len(descriptors) != cfg.num_classes:
            raise ValueError(f"{len(descriptors)} class descriptors for num_classes={cfg.num_classes}")
        self.cfg, self.clip, dim = cfg, clip, clip.cfg.embed_dim
        self.prompt_learner = PromptLearner(clip, tokenizer, descriptors, cfg.n_ctx, cfg.class_specific_ctx)
        self.head = VisualHead(dim, cfg)
        # The text encoder is always frozen (CoOp); the image encoder per the recipe.
        frozen = [clip.transformer, clip.token_embedding, clip.ln_final]
        frozen += [clip.visual] if cfg.freeze_image_encoder else []
        for module in frozen:
            module.requires_grad_(False)
        for p in (clip.positional_embedding, clip.text_projection, clip.logit_scale):
            p.requires_grad_(False)
        self.frozen_modules = frozen
        with torch.no_grad():  # hand-crafted descriptor features (the text encoder is frozen)
            handcrafted = F.normalize(clip.encode_text(self.prompt_learner.handcrafted_tokens), dim=-1)
            handcrafted = rearrange(handcrafted, "(c p) d -> c p d", c=cfg.num_classes).mean(dim=1)
        # Mean of the unit descriptor features per class; its unit version is the MI loss's anchor.
        self.register_buffer("handcrafted_mean", handcrafted)
        if cfg.moco_queue > 0:
            # MoCo (He et al. 2020): momentum copy of the visual head, never trained by gradients.
            self.key_head = copy.deepcopy(self.head).requires_grad_(False)
            # NOTE(deviation): RAPT (Generate_Model.py:89-90 at 706b54b) and MoCo start the queue as random
            # unit vectors, which then count as negatives; here a slot is empty (label -1) until a key fills it.
            self.register_buffer("queue", torch.zeros(cfg.moco_queue, dim))
            self.register_buffer("queue_labels", torch.full((cfg.moco_queue,), -1, dtype=torch.long))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True):
        """Trainable parts follow `mode`; frozen CLIP parts and the momentum head stay in eval."""
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        if self.cfg.moco_queue > 0:
            self.key_head.eval()  # keys without dropout: stable targets for the queue
        return self

    def text_features(self) -> torch.Tensor:
        """Unit class features (C, D): the learned prompts of each class, averaged."""
        prompts = self.prompt_learner()
        features = F.normalize(self.clip.encode_text_embeddings(prompts, self.prompt_learner.tokens), dim=-1)
        return F.normalize(rearrange(features, "(c p) d -> c p d", p=self.prompt_learner.per_class).mean(dim=1), dim=-1)

    def forward(self, face: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """face, context: (B, T, 3, S, S) normalised frames."""
        batch = face.shape[0]
        streams = [face, context] if self.cfg.use_context else [face]
        images = rearrange(torch.stack(streams), "s b t c h w -> (s b t) c h w")  # one encoder pass
        features = rearrange(self.clip.encode_image(images), "(s b t) d -> s b t d", s=len(streams), b=batch)
        face_features, context_features = features[0], features[1] if self.cfg.use_context else None
        video = self.head(face_features, context_features)
        text = self.text_features()
        out = {"logits": class_logits(video, text, self.cfg.logit_scale), "video": video, "text": text,
               "handcrafted": F.normalize(self.handcrafted_mean, dim=-1)}
        if self.cfg.moco_queue > 0 and self.training:
            with torch.no_grad():  # keys hold no graph
                self.momentum_update()
                # NOTE(deviation): keys reuse the query's image-encoder features instead of a momentum copy
                # of the whole CLIP encoder; the encoder is frozen or at lr ~1e-5, so the copy would be
                # nearly identical at the cost of a second encoder pass.
                out["key"] = self.key_head(face_features, context_features)
        return out

    @torch.no_grad()
    def momentum_update(self) -> None:
        m = self.cfg.moco_momentum
        for q, k in zip(self.head.parameters(), self.key_head.parameters()):
            k.mul_(m).add_(q.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the newest keys over the oldest (ring buffer); keys from all ranks under DDP."""
        size = self.queue.shape[0]
        keys, labels = keys[-size:], labels[-size:]
        slots = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_labels[slots] = labels
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)


def build_model(cfg: ModelConfig, clip: CLIP, tokenizer, descriptors: list[list[str]]) -> CAERModel:
    model = CAERModel(cfg, clip, tokenizer, descriptors)
    # FIX(CAER-TRAIN-MODE): train mode every epoch (frozen parts stay in eval); dropout never ran.
    # was: model.eval()
    model.train()
    return model


def param_groups(model: CAERModel, lrs: dict[str, float], weight_decay: float) -> list[dict]:
    """Optimiser groups per part at the part's lr (`lrs`: temporal, projection, adapter, prompt, image); no decay
    on 1-d tensors, embeddings, tokens and prompt context vectors. Every trainable parameter in exactly one group."""
    head = model.head
    parts = {"temporal": [head.face_temporal, head.context_temporal], "projection": [head.projection],
             "adapter": [head.adapter], "prompt": [model.prompt_learner], "image": [model.clip.visual]}
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
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "weight_decay": wd, "name": name, "base_lr": lrs[name]})
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise RuntimeError(f"trainable parameters in no optimiser group: {missing}")
    return groups
