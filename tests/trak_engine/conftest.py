"""Tiny deterministic models and data for engine tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

N_FEATURES = 4
N_CLASSES = 3


def tiny_mlp(seed: int, hidden: int = 5) -> nn.Module:
    """4 -> hidden -> 3 MLP with tanh (43 parameters at hidden=5).

    The logits pass through a final tanh: the margin is invariant to adding one constant to
    all logits, so with a plain linear last layer the gradients of the margin span at most
    p - (hidden + 1) dimensions and the unprojected kernel is singular. The squashed logits
    break that invariance, giving full-rank gradients for the lam = 0 tests.
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(N_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, N_CLASSES), nn.Tanh()
    )


def tiny_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=gen)
    y = torch.randint(0, N_CLASSES, (n,), generator=gen)
    return x, y


def checkpoints(n: int, hidden: int = 5) -> list[dict[str, torch.Tensor]]:
    """Independent random weights (scores need no trained model to be checked)."""
    return [
        {k: v.clone() for k, v in tiny_mlp(100 + m, hidden).state_dict().items()} for m in range(n)
    ]


@pytest.fixture
def mlp() -> nn.Module:
    return tiny_mlp(0)
