"""Content fingerprints of models, checkpoints and datasets (sha256, hex)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from trak_engine.data import Data, data_length, get_batch
from trak_engine.errors import DuplicateCheckpointError


def _update(h: hashlib._Hash, tensor: Tensor) -> None:
    array = tensor.detach().cpu().contiguous()
    h.update(f"{array.dtype}{tuple(array.shape)}".encode())
    h.update(array.view(torch.uint8).numpy().tobytes() if array.numel() else b"")


def model_fingerprint(model: nn.Module) -> str:
    """Architecture only: class name and the names and shapes of its state."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, value in model.state_dict().items():
        h.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
    return h.hexdigest()


def checkpoint_fingerprint(state_dict: Mapping[str, Tensor]) -> str:
    """The weights: every tensor of the state dict, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        _update(h, state_dict[name])
    return h.hexdigest()


def data_fingerprint(data: Data, rows_per_pass: int = 4096) -> str:
    """The examples and labels, read in passes."""
    h = hashlib.sha256()
    n = data_length(data)
    h.update(str(n).encode())
    for start in range(0, n, rows_per_pass):
        x, y = get_batch(data, start, min(n, start + rows_per_pass))
        _update(h, x)
        _update(h, y)
    return h.hexdigest()


def check_distinct_checkpoints(checkpoints: Sequence[Mapping[str, Tensor]]) -> list[str]:
    """Fingerprints of the checkpoints; refuse the same object or the same weights twice.

    Raises:
        DuplicateCheckpointError: names the two positions.
    """
    seen_ids: dict[int, int] = {}
    seen_fps: dict[str, int] = {}
    fps = []
    for m, ckpt in enumerate(checkpoints):
        if id(ckpt) in seen_ids:
            raise DuplicateCheckpointError(
                f"checkpoints {seen_ids[id(ckpt)]} and {m} are the same object; TRAK needs "
                "independently trained models (save each with copy.deepcopy(state_dict))"
            )
        seen_ids[id(ckpt)] = m
        fp = checkpoint_fingerprint(ckpt)
        if fp in seen_fps:
            raise DuplicateCheckpointError(
                f"checkpoints {seen_fps[fp]} and {m} hold identical weights; a list of state "
                "dicts saved without copying does this (use copy.deepcopy(model.state_dict()))"
            )
        seen_fps[fp] = m
        fps.append(fp)
    return fps


__all__ = [
    "check_distinct_checkpoints",
    "checkpoint_fingerprint",
    "data_fingerprint",
    "model_fingerprint",
]
