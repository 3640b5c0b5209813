"""EfficientNet-B0 per frame + attention inside the backbone + LSTM over frames.

A sequence of T face crops of one video goes through torchvision's efficientnet_b0 frame by
frame. After one chosen stage an attention module re-weights the feature map (a sigmoid gate as
in icpr2020dfdc's EfficientNetAutoAtt, or CBAM, Woo et al. 2018); the gated map flows on through
the rest of the backbone, so the attention takes part in the prediction and `get_attention`
returns exactly the map that was used. Each frame is average-pooled to a 1280-d vector, an LSTM
runs over the T vectors and a linear head reads its final hidden state(s).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from einops import rearrange

# Output channels of efficientnet_b0.features[i] (torchvision); stage i has stride 2,2,4,8,16,16,32,32,32.
STAGE_CHANNELS = (32, 16, 24, 40, 80, 112, 192, 320, 1280)


@dataclass
class DetectorConfig:
    """'gate' is EfficientNetAutoAtt's sigmoid(conv1x1) map, 'cbam' a channel + spatial gate; 'none' is an
    ablation: the features pass unchanged and the reported map is all ones."""
    attention: str = "gate"  # attention in the backbone: 'gate' (sigmoid 1x1-conv map), 'cbam' or 'none' (ablation)
    attention_stage: int = 3  # index into efficientnet_b0.features after which attention acts (3: stride 8, 40 ch.)
    # NOTE(deviation): the seed's LSTM is 512 x 2 layers, one direction; 128 x 1 bidirectional here, a quarter of
    # its parameters (README, "Deviations"; ablate.py variant t8-lstm512x2 runs the seed's size on the demo).
    lstm_hidden: int = 128  # per-direction hidden size of the temporal LSTM
    lstm_layers: int = 1  # stacked LSTM layers
    bidirectional: bool = True  # read the sequence both ways; the head sees both final states
    num_logits: int = 2  # 2: softmax cross-entropy over (real, fake); 1: sigmoid BCE on a fake logit
    dropout: float = 0.2  # dropout on the pooled frame features and before the head
    pretrained: str = "none"  # backbone: 'imagenet' (torchvision's, a download), an efficientnet_b0 file, 'none'


class PassThrough(nn.Module):
    """--attention none: the features pass unchanged; the map is all ones (nothing re-weighted)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.ones_like(x[:, :1])  # [N, 1, h, w]


class SigmoidGate(nn.Module):
    """One 1x1 convolution to a single-channel sigmoid map that multiplies every channel.

    Follows EfficientNetAutoAtt (polimi-ispl/icpr2020dfdc, architectures/fornet.py): the map lies
    in (0, 1), so the gate can only suppress regions, never invent features."""

    def __init__(self, channels: int):
        super().__init__()
        self.to_map = nn.Sequential(nn.Conv2d(channels, 1, kernel_size=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention_map = self.to_map(x)  # [N, 1, h, w]
        return x * attention_map, attention_map


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018, sec. 3): a channel gate from a
    shared MLP on average- and max-pooled features, then a spatial gate from a 7x7 convolution on
    the channel-wise max and mean. The spatial gate is the attention map."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.channel_mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                         nn.Conv2d(hidden, channels, 1))
        self.to_map = nn.Sequential(nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channel_gate = torch.sigmoid(self.channel_mlp(x.mean((2, 3), keepdim=True))
                                     + self.channel_mlp(x.amax((2, 3), keepdim=True)))  # [N, C, 1, 1]
        x = x * channel_gate
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)  # [N, 2, h, w]
        attention_map = self.to_map(pooled)  # [N, 1, h, w]
        return x * attention_map, attention_map


class WeightsFileError(ValueError):
    """A --pretrained FILE that is not torchvision's efficientnet_b0: the message names the file."""


def imagenet_state() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet efficientnet_b0 state_dict (a download the first time).

    Offline it fails with a message saying so instead of silently training from random weights."""
    weights = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:  # URLError, socket timeout, SSL errors: all mean "no download"
        raise RuntimeError(f"--pretrained: could not download torchvision's ImageNet efficientnet_b0 weights "
                           f"({weights.url}): {e}. Run once with internet, or copy the file into "
                           f"$TORCH_HOME/hub/checkpoints/, or pass --pretrained FILE.") from e


def file_state(path: str) -> dict[str, torch.Tensor]:
    """An efficientnet_b0 state_dict saved with torch.save, read with weights_only=True (no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsFileError(f"--pretrained {path}: no such file") from None
    except Exception as e:  # not a torch file, or a pickle holding more than tensors
        raise WeightsFileError(f"--pretrained {path}: not a state_dict readable with weights_only=True "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(f"--pretrained {path}: holds a {type(state).__name__}, not a state_dict of tensors")
    return state


def load_backbone(features: nn.Sequential, source: str) -> None:
    """Copy torchvision's efficientnet_b0 weights (source 'imagenet', or a state_dict file) into
    `features`, key by key: the key sets must match exactly and every shape must agree."""
    state = imagenet_state() if source == "imagenet" else file_state(source)
    mapped = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    own = features.state_dict()
    head = {"classifier.1.weight", "classifier.1.bias"}  # the ImageNet classifier, not used here
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(f"features.{k}" for k in set(mapped) - set(own)) + sorted(
        k for k in state if not k.startswith("features.") and k not in head)
    wrong = [f"features.{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
             if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        found = [f"{len(keys)} {what} (first: {keys[0]})" for what, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("tensors of another shape, file vs B0", wrong)) if keys]
        raise WeightsFileError(f"--pretrained {source}: not torchvision's efficientnet_b0 (another network or "
                               f"size): {'; '.join(found)}")
    features.load_state_dict(mapped, strict=True)


class DeepfakeDetector(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        if not 0 <= cfg.attention_stage < len(STAGE_CHANNELS) - 1:
            raise ValueError(f"attention_stage must be in [0, {len(STAGE_CHANNELS) - 2}], got {cfg.attention_stage}")
        self.cfg = cfg
        self.features = torchvision.models.efficientnet_b0(weights=None).features
        if cfg.pretrained != "none":
            load_backbone(self.features, cfg.pretrained)
        channels = STAGE_CHANNELS[cfg.attention_stage]
        if cfg.attention in ("gate", "none"):
            self.attention = SigmoidGate(channels)
        elif cfg.attention == "cbam":
            self.attention = CBAM(channels)
        else:
            raise ValueError(f"unknown attention {cfg.attention!r}: use 'gate', 'cbam' or 'none'")
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(STAGE_CHANNELS[-1], cfg.lstm_hidden, num_layers=cfg.lstm_layers, batch_first=True,
                            bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0)
        directions = 2 if cfg.bidirectional else 1
        self.head = nn.Linear(cfg.lstm_hidden * directions, cfg.num_logits)
        if cfg.attention == "none":  # built as 'gate' above, so every other weight starts as in that run
            self.attention = PassThrough()

    def frame_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [N, 3, H, W] -> pooled features [N, 1280] and the attention map [N, 1, h, w]."""
        x = images
        attention_map = None
        for i, stage in enumerate(self.features):
            x = stage(x)
            if i == self.cfg.attention_stage:
                # FIX(DFD-ATTENTION): the gated features flow on; the map was computed only to be drawn.
                # was: attention_map = self.attention(x)[1]
                x, attention_map = self.attention(x)
        return x.mean((2, 3)), attention_map

    def forward(self, frames: torch.Tensor, return_attention: bool = False):
        """frames [B, T, 3, H, W] -> logits [B, num_logits] (and the attention map [B, T, 1, h, w])."""
        b = frames.shape[0]
        folded = rearrange(frames, "b t c h w -> (b t) c h w")  # fold time into batch for the CNN
        pooled, attention_map = self.frame_features(folded)
        sequence = rearrange(self.dropout(pooled), "(b t) c -> b t c", b=b)
        _, (h_n, _) = self.lstm(sequence)  # h_n [layers * directions, B, hidden]
        directions = 2 if self.cfg.bidirectional else 1
        last_layer = rearrange(h_n[-directions:], "d b h -> b (d h)")  # forward (+ backward) final state
        logits = self.head(self.dropout(last_layer))
        if return_attention:
            return logits, rearrange(attention_map, "(b t) 1 h w -> b t 1 h w", b=b)
        return logits

    @torch.no_grad()
    def get_attention(self, frames: torch.Tensor) -> torch.Tensor:
        """The attention map the forward pass uses, [B, T, 1, h, w] in (0, 1)."""
        return self.forward(frames, return_attention=True)[1]


def fake_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(fake) per sequence from 2 logits (softmax) or 1 logit (sigmoid)."""
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits.float().squeeze(-1))
    return torch.softmax(logits.float(), dim=-1)[:, 1]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor,
                        reduction: str = "mean") -> torch.Tensor:
    """Class-weighted cross-entropy (2 logits) or BCE (1 logit): mean_i w_{y_i} l_i over the batch. The
    weights (n / 2 n_c, mean 1 over the training samples) make each class count as half of the expected
    loss, as icpr2020dfdc's balanced real/fake batches do (isplutils/data.py:153-164), whatever a
    batch's own class mix. reduction='none' returns w_{y_i} l_i and the weights, for split-wide sums."""
    if logits.shape[-1] == 1:
        per_sample = F.binary_cross_entropy_with_logits(logits.float().squeeze(-1), labels.float(), reduction="none")
    else:
        per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
    weights = class_weights[labels]
    if reduction == "none":
        return per_sample * weights, weights
    # FIX(DFD-BATCH-WEIGHTS): mean over the batch; dividing by the batch's weight sum cancels the weights of a
    # one-class batch and renormalises every other one by its own class mix.
    return (per_sample * weights).mean()


def attention_loss(attention_map: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pull the attention map towards a face / manipulation mask: BCE between the map [.., 1, h, w]
    and the mask [.., 1, H, W] average-pooled to (h, w), in fp32 (BCE is unsafe under autocast)."""
    flat_map = rearrange(attention_map.float(), "b t 1 h w -> (b t) 1 h w")
    target = F.adaptive_avg_pool2d(rearrange(masks.float(), "b t 1 h w -> (b t) 1 h w"), flat_map.shape[-2:])
    p = flat_map.clamp(1e-6, 1 - 1e-6)
    return -(target * p.log() + (1 - target) * (1 - p).log()).mean()


def per_video(labels: torch.Tensor, probs: torch.Tensor, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(label, P(fake)) per video from per-sequence ones: the mean P(fake) over the video's sequences."""
    ids, inverse = torch.unique(videos, return_inverse=True)
    counts = torch.zeros(len(ids)).index_add_(0, inverse, torch.ones(len(videos)))
    video_probs = torch.zeros(len(ids)).index_add_(0, inverse, probs.float()) / counts
    video_labels = torch.zeros(len(ids), dtype=torch.long).scatter_(0, inverse, labels)
    return video_labels, video_probs
