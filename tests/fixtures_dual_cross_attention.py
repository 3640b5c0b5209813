"""Shared helpers of the DCAL tests."""

import pytest
import torch

from dual_cross_attention.model import DCALConfig


def tiny_cfg(**kw) -> DCALConfig:
    base = dict(image_size=16, patch_size=4, num_classes=5, embed_dim=32, depth=2, num_heads=2, drop_path=0.0)
    return DCALConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def single_thread():
    """The DCAL tests use tiny tensors, where a second intra-op thread only adds synchronisation
    (and, on a busy 2-core runner, spinning): run them on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
