"""Access to examples: a pair of tensors ``(x, y)`` or a map-style torch ``Dataset``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

Data = tuple[Tensor, Tensor] | Dataset


def check_data(data: Data, name: str) -> None:
    """Raise TypeError/ValueError when ``data`` is neither (x, y) tensors nor a Dataset."""
    if isinstance(data, tuple):
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise TypeError(f"{name} must be (x, y) tensors or a torch Dataset")
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{name}: x has {x.shape[0]} examples but y has {y.shape[0]} labels")
        if y.dtype != torch.int64:
            raise TypeError(f"{name}: labels must be int64 class indices, got {y.dtype}")
    elif not isinstance(data, Dataset) or not hasattr(data, "__len__"):
        raise TypeError(
            f"{name} must be (x, y) tensors or a map-style torch Dataset with __len__, "
            f"got {type(data).__name__}"
        )


def data_length(data: Data) -> int:
    return int(data[0].shape[0]) if isinstance(data, tuple) else len(data)  # type: ignore[arg-type]


def get_batch(data: Data, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """Examples [start, stop) as ``(x (b, ...), y (b,) int64)``."""
    if isinstance(data, tuple):
        return data[0][start:stop], data[1][start:stop]
    x, y = default_collate([data[i] for i in range(start, stop)])
    return x, torch.as_tensor(y, dtype=torch.int64)
