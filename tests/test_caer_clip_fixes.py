"""caer_clip fixes: each test shows the symptom on the baseline behaviour (reproduced inline) and its
absence with the fixed code. The test names carry the fix IDs of FIXES.md."""

import math

import torch
import torch.nn.functional as F


def similar_class_text(num_classes=5, per_class=3, cosine=0.8, dim=64):
    """Mean of `per_class` unit prompt features per class, classes at cosine ~0.8 (as CLIP descriptors)."""
    g = torch.Generator().manual_seed(0)
    shared = F.normalize(torch.randn(dim, generator=g), dim=0)
    own = F.normalize(torch.randn(num_classes, 1, dim, generator=g), dim=-1)
    classes = F.normalize(math.sqrt(cosine) * shared + math.sqrt(1 - cosine) * own, dim=-1)
    noise = F.normalize(torch.randn(num_classes, per_class, dim, generator=g), dim=-1)
    prompts = F.normalize(classes + 0.3 * noise, dim=-1)
    return prompts.mean(dim=1)  # (C, D), norm < 1








































