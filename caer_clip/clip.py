"""CLIP (Radford et al. 2021) in plain PyTorch with the parameter names of OpenAI's checkpoints
(openai/CLIP clip/model.py): the ViT image encoder and the text transformer, batch-first, attention
through `F.scaled_dot_product_attention`. The architecture is read from a state_dict's shapes; head counts
and MLP activation, which it does not hold, follow OpenAI's rules or are read from the open_clip model.
"""

import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


@dataclass
class CLIPConfig:
    embed_dim: int = 512  # width of the joint image-text embedding space
    image_resolution: int = 224  # input side in pixels
    vision_layers: int = 12  # residual attention blocks in the ViT
    vision_width: int = 768  # ViT token width
    vision_heads: int = 12  # ViT attention heads (OpenAI: width // 64; open_clip: width // head_width)
    vision_patch_size: int = 16  # patch side in pixels
    context_length: int = 77  # text tokens, SOT and EOT included
    vocab_size: int = 49408  # token-embedding rows; EOT must be the largest id (pooling takes argmax)
    transformer_width: int = 512  # text transformer width
    transformer_heads: int = 8  # text attention heads
    transformer_layers: int = 12  # text residual attention blocks
    quick_gelu: bool = True  # MLP activation: QuickGELU as OpenAI trained with, else exact GELU (open_clip's own)


def tiny_config(context_length: int = 32, vocab_size: int = 256) -> CLIPConfig:
    """A few-hundred-thousand-parameter CLIP for the synthetic demo and the tests."""
    return CLIPConfig(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=64, vision_heads=1,
                      vision_patch_size=8, context_length=context_length, vocab_size=vocab_size,
                      transformer_width=64, transformer_heads=1, transformer_layers=2)


class QuickGELU(nn.Module):  # x * sigmoid(1.702 x): what OpenAI's checkpoints were trained with
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):  # in fp32 and cast back, as OpenAI's (stable under fp16 autocast)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class Attention(nn.Module):
    """Self-attention with nn.MultiheadAttention's parameter names (checkpoints load), computed with SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's default; CLIP re-initialises

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float = 0.0, quick_gelu: bool = True):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
            ("c_proj", nn.Linear(4 * width, width))]))
        # CLIP itself has no dropout; the temporal models built from this block use it.
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), causal=causal))
        return x + self.drop(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, dropout: float = 0.0, quick_gelu: bool = True):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, dropout, quick_gelu)
                                        for _ in range(layers)])

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal=causal)
        return x


def init_transformer(transformer: Transformer, width: int) -> None:
    """OpenAI CLIP's initialisation (clip/model.py, initialize_parameters)."""
    layers = len(transformer.resblocks)
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


class VisionTransformer(nn.Module):
    def __init__(self, resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int,
                 quick_gelu: bool = True):
        super().__init__()
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, quick_gelu=quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        init_transformer(self.transformer, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images)  # (N, width, grid, grid)
        x = rearrange(x, "n c gh gw -> n (gh gw) c")  # patches as tokens
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj  # (N, embed_dim) from the CLS token


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.image_resolution, cfg.vision_patch_size, cfg.vision_width,
                                        cfg.vision_layers, cfg.vision_heads, cfg.embed_dim, cfg.quick_gelu)
        self.transformer = Transformer(cfg.transformer_width, cfg.transformer_layers, cfg.transformer_heads,
                                       quick_gelu=cfg.quick_gelu)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.transformer_width))
        self.ln_final = LayerNorm(cfg.transformer_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.transformer_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.transformer_width**-0.5)
        init_transformer(self.transformer, cfg.transformer_width)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:  # openai/CLIP's name
        return self.visual(images)

    def encode_text_embeddings(self, token_embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Text features from token embeddings (N, L, width), so a prompt learner can splice in
        learnable context vectors; `tokens` (N, L) only locates the EOT token (the largest id)."""
        x = token_embeds + self.positional_embedding.to(token_embeds.dtype)
        x = self.ln_final(self.transformer(x, causal=True))  # causal: as OpenAI's attn_mask
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # (N, width)
        return eot @ self.text_projection

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encode_text_embeddings(self.token_embedding(tokens), tokens)


# Not weights: what OpenAI's TorchScript archives hold besides them (openai/CLIP build_model), and the causal
# mask open_clip keeps as a buffer (built on the fly here).
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def openai_heads(width: int, tower: str) -> int:
    """OpenAI's rule, width // 64 heads (openai/CLIP clip/model.py, build_model): a state_dict does not
    store the head count. A width that is not a multiple of 64 is no OpenAI model, so no guess is made."""
    if width % 64:
        raise ValueError(f"{tower} width {width} is not a multiple of OpenAI's head width 64: a state_dict holds no "
                         "head count; load the open_clip model with caer_clip/import_open_clip.py, which reads it")
    return width // 64


def clip_from_state_dict(state_dict: dict[str, torch.Tensor], vision_heads: int | None = None,
                         transformer_heads: int | None = None, quick_gelu: bool = True) -> CLIP:
    """A CLIP shaped as `state_dict` (ViT models only, as openai/CLIP build_model reads it) with its
    weights, the exact key sets and shapes checked. Heads and activation default to OpenAI's."""
    sd = {k: v for k, v in state_dict.items() if k not in _NOT_WEIGHTS}
    if "visual.proj" not in sd:
        raise ValueError("only ViT CLIP checkpoints are supported (no 'visual.proj': a ResNet CLIP?)")
    vision_width, patch = sd["visual.conv1.weight"].shape[0], sd["visual.conv1.weight"].shape[-1]
    width = sd["ln_final.weight"].shape[0]
    model = CLIP(CLIPConfig(
        embed_dim=sd["text_projection"].shape[1],
        image_resolution=patch * round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5),
        vision_layers=len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")}),
        vision_width=vision_width, vision_patch_size=patch,
        vision_heads=vision_heads or openai_heads(vision_width, "vision"),
        context_length=sd["positional_embedding"].shape[0], vocab_size=sd["token_embedding.weight"].shape[0],
        transformer_width=width, transformer_heads=transformer_heads or openai_heads(width, "text"),
        transformer_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
        quick_gelu=quick_gelu))
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise KeyError(f"CLIP state_dict does not match: missing {missing[:8]}, unexpected {unexpected[:8]}")
    for key, value in sd.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"CLIP state_dict: {key} has shape {tuple(value.shape)}, "
                             f"expected {tuple(expected[key].shape)}")
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model


def load_openai_file(path: str) -> CLIP:
    """A local OpenAI checkpoint: their TorchScript archive (e.g. ViT-B-16.pt) or a torch.save'd state_dict."""
    try:
        state_dict = torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:  # not a TorchScript archive: a plain state_dict
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return clip_from_state_dict(state_dict)


def require_open_clip(what: str):
    try:
        import open_clip
    except ImportError as e:
        raise ImportError(f"{what} needs open_clip_torch: pip install open_clip_torch") from e
    return open_clip


class WordTokenizer:
    """The tiny random CLIP's tokenizer: lower-cased, NFC-normalised words and punctuation of `texts`,
    with ids laid out as CLIP's: <pad> 0, SOT 1, the words in alphabetical order from 2, <unk> and EOT
    as the two largest ids (`argmax` finds EOT). Built from every text the model encodes, so <unk> stays
    unused. Texts longer than `context_length` ids are cut, SOT and EOT kept."""

    def __init__(self, texts: list[str], context_length: int = 32, vocab_size: int = 256):
        words = sorted({w for t in texts for w in self.split(t)})
        if len(words) + 4 > vocab_size:
            raise ValueError(f"WordTokenizer: {len(words)} words do not fit a vocabulary of {vocab_size}")
        self.ids = {w: i for i, w in enumerate(words, start=2)}
        self.context_length, self.unk, self.eot = context_length, vocab_size - 2, vocab_size - 1

    @staticmethod
    def split(text: str) -> list[str]:
        return re.findall(r"\w+|[^\w\s]", unicodedata.normalize("NFC", text).lower())

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(N, context_length) ids, padded with 0 after EOT: the batch form of open_clip's tokenizers."""
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            words = [self.ids.get(w, self.unk) for w in self.split(text)][: self.context_length - 2]
            out[row, : len(words) + 2] = torch.tensor([1, *words, self.eot])
        return out


def load_clip(spec: str, texts: list[str]) -> tuple[CLIP, object]:
    """(model, tokenizer) of 'tiny' (random, words of `texts`), a local OpenAI '.pt' file, or 'openai:ViT-B-16':
    OpenAI's file at the address open_clip lists (as CLIP-CAER main.py:205 clip.load); others: import_open_clip.py."""
    if spec == "tiny":
        cfg = tiny_config()
        return CLIP(cfg), WordTokenizer(texts, cfg.context_length, cfg.vocab_size)
    name = spec.split(":", 1)[1] if spec.startswith("openai:") else "ViT-B-16"  # a file: ViT-B-16's BPE
    if spec.startswith("openai:"):
        open_clip = require_open_clip(f"--clip {spec}")
        url = open_clip.get_pretrained_cfg(name.replace("/", "-"), "openai").get("url")
        if not url:
            raise ValueError(f"open_clip lists no OpenAI weights for {name!r}")
        spec = open_clip.pretrained.download_pretrained_from_url(url)
    return load_openai_file(spec), require_open_clip("the CLIP BPE tokenizer").get_tokenizer(name)  # weights first
