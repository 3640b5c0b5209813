"""ViSoBERT-style encoder with an aspect x sentiment head and a projection head for supervised
contrastive learning. ViSoBERT (Nguyen et al., EMNLP 2023; HF `uitnlp/visobert`) is an XLM-R encoder
(12 post-LN blocks, hidden 768, ~15k SentencePiece vocabulary); the layout here is XLM-R's exactly
(padding-aware position ids from padding_idx + 1, a token-type embedding, exact-erf GELU), so a
checkpoint loads through `load_hf_encoder` with an explicit key map. The heads follow the seed's model
(hjsad1994/BERT, multi_label/): Linear(H,512) -> ReLU -> Dropout(0.3) -> per-aspect logits, and
Linear(H,256) -> L2 norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


@dataclass
class ModelConfig:
    # hidden, layers, heads and intermediate are also train.py's flags for the tiny encoder (the
    # comment is their help); a pretrained --encoder fixes all of them from its own config.
    vocab_size: int = 1000  # token vocabulary (word-level default built from the training texts; ViSoBERT ~15k)
    hidden: int = 128  # encoder width H (ViSoBERT: 768)
    layers: int = 2  # transformer blocks (ViSoBERT: 12)
    heads: int = 4  # attention heads per block (ViSoBERT: 12)
    intermediate: int = 512  # GELU MLP width (ViSoBERT: 3072)
    max_positions: int = 130  # position table rows = longest input + padding_idx + 1 (XLM-R: 514)
    type_vocab_size: int = 1  # token-type rows (XLM-R has one, always id 0)
    pad_token_id: int = 1  # padding id; also the position-id offset (XLM-R: <pad> = 1)
    layer_norm_eps: float = 1e-5  # XLM-R's LayerNorm epsilon
    dropout: float = 0.1  # hidden dropout in embeddings and blocks
    attention_dropout: float = 0.1  # dropout on attention probabilities
    num_aspects: int = 10  # A: aspects predicted per review
    # FIX(VSB-ABSENT-STATE): an aspect a review does not mention is its own class, not "neutral".
    # was: num_states: int = 3  # S: classes per aspect (positive, negative, neutral)
    num_states: int = 4  # S: classes per aspect (absent, positive, negative, neutral)
    head_hidden: int = 512  # width of the classification head's hidden layer
    head_dropout: float = 0.3  # dropout in the classification head
    proj_dim: int = 256  # size of the L2-normalised contrastive embedding


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pad = cfg.pad_token_id
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden, padding_idx=cfg.pad_token_id)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # RoBERTa/XLM-R position ids: real tokens count up from pad+1, padding keeps id `pad`
        # (whose row is zero), so right-padding never shifts the positions of real tokens.
        not_pad = input_ids.ne(self.pad).long()
        positions = torch.cumsum(not_pad, dim=1) * not_pad + self.pad  # (B, T)
        x = self.word(input_ids) + self.position(positions) + self.token_type(torch.zeros_like(input_ids))
        return self.dropout(self.norm(x))


class Block(nn.Module):
    """Post-LN transformer block, as BERT / XLM-R: x = LN(x + f(x)) after each sub-layer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.p_drop = cfg.heads, cfg.attention_dropout
        self.attn = nn.ModuleDict({name: nn.Linear(cfg.hidden, cfg.hidden) for name in ("query", "key", "value")})
        self.attn_out = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.mlp_in = nn.Linear(cfg.hidden, cfg.intermediate)
        self.mlp_out = nn.Linear(cfg.intermediate, cfg.hidden)
        self.mlp_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(proj(x), "b t (h d) -> b h t d", h=self.heads) for proj in self.attn.values())
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=self.p_drop if self.training else 0.0)
        x = self.attn_norm(x + self.dropout(self.attn_out(rearrange(attn, "b h t d -> b t (h d)"))))
        return self.mlp_norm(x + self.dropout(self.mlp_out(F.gelu(self.mlp_in(x)))))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        # FIX(VSB-CLS-TOKEN): no pooler; see AspectSentimentModel.sentence_vector.
        # was: self.pooler = Pooler(cfg)  # tanh(Linear(hidden[:, 0]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B, T) -> last hidden states (B, T, H)."""
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): padding keys are never attended
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, keep)
        return x


class AspectSentimentModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.classifier = nn.Sequential(nn.Linear(cfg.hidden, cfg.head_hidden), nn.ReLU(), nn.Dropout(cfg.head_dropout),
                                        nn.Linear(cfg.head_hidden, cfg.num_aspects * cfg.num_states))
        # NOTE(deviation): one linear layer; the original's projection is hidden -> 512 -> ReLU -> dropout -> 256.
        self.projection = nn.Linear(cfg.hidden, cfg.proj_dim)
        self.apply(_init_weights)

    def sentence_vector(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)  # (B, T, H)
        # FIX(VSB-CLS-TOKEN): the <s> hidden state; XLM-R's pooler never trained (a random projection).
        # was: return self.encoder.pooler(hidden)
        return hidden[:, 0]  # (B, H)

    def heads(self, sentence: torch.Tensor, return_embeddings: bool = False, detach_classifier_input: bool = False):
        """Both heads on one sentence vector; `detach_classifier_input`: the classifier as a probe."""
        logits = self.classifier(sentence.detach() if detach_classifier_input else sentence)
        logits = rearrange(logits, "b (a s) -> b a s", a=self.cfg.num_aspects)  # (B, A, S)
        if not return_embeddings:
            return logits
        return logits, F.normalize(self.projection(sentence), dim=-1)  # (B, A, S), (B, proj_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_embeddings: bool = False,
                detach_classifier_input: bool = False):
        return self.heads(self.sentence_vector(input_ids, attention_mask), return_embeddings, detach_classifier_input)


def _init_weights(module: nn.Module) -> None:
    # BERT / XLM-R initialisation: N(0, 0.02) weights, zero biases, zero padding row (LayerNorm's
    # own init is already XLM-R's: unit weight, zero bias).
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


# ----------------------------------------------------------------------------- pretrained weights

# Checkpoint keys that exist but are not used, said once here instead of a bare strict=False.
# FIX(VSB-CLS-TOKEN): the pooler, where a checkpoint has one, is listed as unused, never loaded.
# was: UNUSED_HF_KEYS = {"embeddings.position_ids"}
UNUSED_HF_KEYS = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
UNUSED_HF_PREFIXES = ("lm_head.",)  # the masked-LM head of XLMRobertaForMaskedLM checkpoints
# was: OPTIONAL_HF_KEYS = {"pooler.dense.weight", "pooler.dense.bias"}  # left at random init when absent


def hf_key_map(cfg: ModelConfig) -> dict[str, str]:
    """Our encoder's parameter names -> transformers XLMRobertaModel / RobertaModel names."""
    mapping = {"embeddings.word.weight": "embeddings.word_embeddings.weight",
               "embeddings.position.weight": "embeddings.position_embeddings.weight",
               "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
               "embeddings.norm.weight": "embeddings.LayerNorm.weight",
               "embeddings.norm.bias": "embeddings.LayerNorm.bias"}
    block = (("attn.query", "attention.self.query"), ("attn.key", "attention.self.key"),
             ("attn.value", "attention.self.value"), ("attn_out", "attention.output.dense"),
             ("attn_norm", "attention.output.LayerNorm"), ("mlp_in", "intermediate.dense"),
             ("mlp_out", "output.dense"), ("mlp_norm", "output.LayerNorm"))
    for i in range(cfg.layers):
        for ours, theirs in block:
            for leaf in ("weight", "bias"):
                mapping[f"layers.{i}.{ours}.{leaf}"] = f"encoder.layer.{i}.{theirs}.{leaf}"
    return mapping


def load_hf_encoder(encoder: Encoder, hf_state: dict[str, torch.Tensor]) -> list[str]:
    """Copy a transformers XLM-R / RoBERTa state dict into `encoder`. Every expected key must be
    present with the same shape, and every checkpoint key must be used or listed as unused.
    Returns the checkpoint keys that were skipped (for the log)."""
    state = {k.removeprefix("roberta."): v for k, v in hf_state.items()}
    mapping = hf_key_map(encoder.cfg)
    wanted = set(mapping.values())
    # FIX(VSB-CLS-TOKEN): every mapped key is required now that no pooler is left at random init.
    # was: missing = sorted(wanted - set(state) - OPTIONAL_HF_KEYS)
    missing = sorted(wanted - set(state))
    unexpected = sorted(k for k in state if k not in wanted and k not in UNUSED_HF_KEYS
                        and not k.startswith(UNUSED_HF_PREFIXES))
    if missing or unexpected:
        raise KeyError(f"checkpoint does not match the encoder: missing {missing}, unexpected {unexpected}")
    own = encoder.state_dict()
    loaded = {}
    for ours, theirs in mapping.items():
        if own[ours].shape != state[theirs].shape:
            raise ValueError(f"shape mismatch: {ours} {tuple(own[ours].shape)} vs checkpoint {theirs} "
                             f"{tuple(state[theirs].shape)}")
        loaded[ours] = state[theirs]
    encoder.load_state_dict(loaded, strict=True)
    return sorted(k for k in state if k not in wanted)


def fetch_pretrained(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The ModelConfig fields and the state dict of an XLM-R / RoBERTa checkpoint, downloaded (or read
    from the local cache) with transformers, which is used for fetching only: the forward pass is ours."""
    try:
        from transformers import AutoModel
    except ImportError as e:
        raise ImportError(f"--encoder {name} needs `transformers` (and `sentencepiece` for its tokenizer): "
                          "pip install transformers sentencepiece") from e
    try:
        hf = AutoModel.from_pretrained(name)
    except OSError as e:
        raise RuntimeError(f"could not fetch encoder {name!r}: {e}\nIt must be downloadable (internet) or "
                           f"already in the local Hugging Face cache. Without --encoder the tiny offline "
                           f"encoder with a word-level tokenizer is trained from scratch.") from e
    c = hf.config
    if c.model_type not in ("xlm-roberta", "roberta") or c.hidden_act != "gelu":
        raise ValueError(f"{name}: model_type {c.model_type!r} / activation {c.hidden_act!r}; this encoder "
                         f"implements the XLM-R / RoBERTa layout with GELU only")
    fields = dict(vocab_size=c.vocab_size, hidden=c.hidden_size, layers=c.num_hidden_layers,
                  heads=c.num_attention_heads, intermediate=c.intermediate_size,
                  max_positions=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
                  pad_token_id=c.pad_token_id, layer_norm_eps=c.layer_norm_eps)
    return fields, hf.state_dict()
