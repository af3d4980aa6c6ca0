"""Small classifiers for 28x28 digits, sized so per-example gradients stay cheap to project.

Both models take the ``(n, 1, 28, 28)`` float32 tensors made by
:func:`explorer.datasets.to_tensor` and return ``(n, 10)`` logits. Neither uses BatchNorm or
Dropout, so a model in train mode and eval mode computes the same function and a per-example
gradient depends on that example alone.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

MODEL_NAMES: tuple[str, ...] = ("cnn", "mlp")
"""Names accepted by :func:`build_model`."""


class DemoCNN(nn.Module):
    """Two conv + max-pool blocks and a two-layer head, 28,874 parameters.

    ``conv 5x5 (1->8) -> ReLU -> maxpool 2 -> conv 5x5 (8->16) -> ReLU -> maxpool 2 ->
    linear (784->32) -> ReLU -> linear (32->10)``.
    """

    def __init__(self, channels: tuple[int, int] = (8, 16), hidden: int = 32) -> None:
        """Builds the layers; PyTorch's default initialization, so seed before calling.

        Args:
            channels: output channels of the two convolutions.
            hidden: width of the hidden linear layer.
        """
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=5, padding=2),  # (n, c1, 28, 28)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (n, c1, 14, 14)
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),  # (n, c2, 14, 14)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (n, c2, 7, 7)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (n, c2 * 49)
            nn.Linear(c2 * 7 * 7, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(n, 1, 28, 28)`` float32 images to ``(n, 10)`` float32 logits."""
        return self.classifier(self.features(x))


class DemoMLP(nn.Module):
    """One hidden layer, ``784 -> hidden -> 10``; 203,530 parameters at ``hidden=256``."""

    def __init__(self, hidden: int = 256) -> None:
        """Builds the layers; PyTorch's default initialization, so seed before calling.

        Args:
            hidden: width of the hidden layer.
        """
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),  # (n, 1, 28, 28) -> (n, 784)
            nn.Linear(28 * 28, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(n, 1, 28, 28)`` (or ``(n, 784)``) float32 images to ``(n, 10)`` logits."""
        return self.net(x)


def build_model(name: str) -> nn.Module:
    """Builds an untrained demo model by name.

    The weights come from the global torch RNG; use :func:`explorer.training.init_model` for a
    seeded model.

    Args:
        name: ``"cnn"`` (:class:`DemoCNN`) or ``"mlp"`` (:class:`DemoMLP`).

    Returns:
        The model, in train mode, on the CPU.

    Raises:
        ValueError: ``name`` is not one of :data:`MODEL_NAMES`.
    """
    if name == "cnn":
        return DemoCNN()
    if name == "mlp":
        return DemoMLP()
    raise ValueError(f"model name must be one of {list(MODEL_NAMES)}; received {name!r}")


def count_parameters(model: nn.Module) -> int:
    """Returns the number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
