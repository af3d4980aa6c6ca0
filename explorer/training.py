"""Seeded training and prediction for the demo models.

Training is plain mini-batch SGD with momentum 0.9 and a learning rate that decays linearly to
zero over all steps, on the cross-entropy loss. Given the same seed, data, torch build and
thread count, it returns bit-identical weights on the CPU: the initialization is seeded by
:func:`init_model` and the shuffling by a private ``torch.Generator``, so no global RNG state is
used or changed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from explorer.models import MODEL_NAMES, build_model

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
ProgressFn = Callable[[int, int], None]
"""Called as ``progress(steps_done, steps_total)`` after every optimizer step."""

MOMENTUM = 0.9


@dataclass(frozen=True)
class TrainRecipe:
    """Training settings measured to work for one demo model on the 4,000-digit split.

    Attributes:
        epochs: passes over the training set.
        lr: peak learning rate (decays linearly to 0).
        batch_size: examples per step.
        weight_decay: L2 penalty passed to SGD.
    """

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0


RECIPES: dict[str, TrainRecipe] = {
    # 4,000 digits, 5% flipped labels: 95.8-96.8% test accuracy over seeds 0-2, 2-3 s per
    # checkpoint on 2 otherwise idle CPU cores (far slower when the cores are oversubscribed).
    "cnn": TrainRecipe(epochs=6, lr=0.05, batch_size=64, weight_decay=5e-4),
    # Same data: 92.3-92.9% test accuracy, under a second per checkpoint.
    "mlp": TrainRecipe(epochs=6, lr=0.05, batch_size=64, weight_decay=5e-4),
}
"""Recommended settings per model name."""


def init_model(name: str, seed: int) -> nn.Module:
    """Builds the named model with weights drawn from ``seed``.

    The global torch RNG is forked, so the caller's random state is left as it was.

    Args:
        name: one of :data:`explorer.models.MODEL_NAMES`.
        seed: seed of the initialization; the same seed gives the same weights.

    Returns:
        The model, in train mode, on the CPU.

    Raises:
        ValueError: unknown ``name``.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"model name must be one of {list(MODEL_NAMES)}; received {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name)


def _check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raises if ``x``/``y`` are not a float batch and matching int64 labels."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor; received {_describe(x)}")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.ndim != 1:
        raise TypeError(f"y must be a 1-D int64 tensor of class ids; received {_describe(y)}")
    if x.ndim < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            "x and y must hold the same number of examples along dim 0; received "
            f"x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError("x and y must hold at least one example; received 0")


def _describe(value: object) -> str:
    """A short description of a value for error messages."""
    if isinstance(value, torch.Tensor):
        return f"tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    return type(value).__name__


def _check_hyperparameters(epochs: int, batch_size: int, lr: float, weight_decay: float) -> None:
    """Raises ValueError naming the first out-of-range training setting."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1; received {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; received {batch_size!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0; received {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be a finite number >= 0; received {weight_decay!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0; received {weight_decay!r}")


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def clone_state_dict(model: nn.Module) -> StateDict:
    """Returns a copy of ``model.state_dict()`` whose tensors share no storage with the model.

    Returns:
        Name -> detached, cloned tensor, on the CPU.
    """
    return {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    progress: ProgressFn | None = None,
) -> StateDict:
    """Trains ``model`` in place with SGD and returns a copy of its final weights.

    Each epoch visits every example once in an order drawn from ``torch.Generator`` seeded
    with ``seed``; the last batch of an epoch may be smaller. SGD uses momentum 0.9 and a
    learning rate that falls linearly from ``lr`` to 0 over the ``epochs * ceil(n /
    batch_size)`` steps. Batches are moved to the model's device. Seed the initialization
    separately (:func:`init_model`).

    Args:
        model: the network; trained in place and left in eval mode.
        x: ``(n, ...)`` float32 inputs, e.g. ``(n, 1, 28, 28)`` from ``to_tensor``.
        y: ``(n,)`` int64 class ids.
        epochs: passes over the data, >= 1.
        batch_size: examples per step, >= 1.
        lr: peak learning rate, > 0.
        seed: seed of the shuffling.
        weight_decay: L2 penalty, >= 0.
        progress: called as ``progress(steps_done, steps_total)`` after every step.

    Returns:
        The final ``state_dict``, every tensor cloned to the CPU (never shared with ``model``
        or with another call's result).

    Raises:
        TypeError: ``x`` or ``y`` has the wrong dtype.
        ValueError: mismatched sizes, no examples, or a setting out of range.
        FloatingPointError: the loss became NaN or infinite (lower ``lr``).
    """
    _check_data(x, y)
    _check_hyperparameters(epochs, batch_size, lr, weight_decay)
    device = _device_of(model)
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                    f"(lr={lr}); lower lr or check the inputs for NaN"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress is not None:
                progress(step, total)
        logger.debug("epoch %d/%d: last batch loss %.4f", epoch + 1, epochs, loss.item())
    model.eval()
    return clone_state_dict(model)


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classifies ``x`` in eval mode without building a graph.

    The model's train/eval mode is restored afterwards.

    Args:
        model: a classifier returning ``(n, n_classes)`` logits.
        x: ``(n, ...)`` float inputs; ``n`` may be 0.
        batch_size: examples per forward pass, >= 1.

    Returns:
        ``(pred, confidence, logits)`` on the CPU: ``(n,)`` int64 argmax class, ``(n,)``
        float32 softmax probability of that class, ``(n, n_classes)`` float32 logits.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: ``batch_size`` < 1.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor; received {_describe(x)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; received {batch_size!r}")
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        # At least one (possibly empty) batch, so empty input still yields (0, n_classes).
        chunks = [
            model(x[start : start + batch_size].to(device)).float().cpu()
            for start in range(0, max(x.shape[0], 1), batch_size)
        ]
    finally:
        model.train(was_training)
    logits = torch.cat(chunks)  # (n, n_classes)
    confidence, pred = torch.softmax(logits, dim=1).max(dim=1)  # (n,), (n,)
    return pred.to(torch.int64), confidence.to(torch.float32), logits


def _offset_progress(progress: ProgressFn | None, m: int, n_runs: int) -> ProgressFn | None:
    """Turns run ``m``'s step counts into counts over ``n_runs`` equal runs."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(m * total + done, n_runs * total)

    return report


def train_checkpoints(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    n_checkpoints: int,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float,
    weight_decay: float = 0.0,
    progress: ProgressFn | None = None,
) -> list[StateDict]:
    """Trains ``n_checkpoints`` independent models; model ``m`` uses seed ``seed + m``.

    Model ``m`` is ``init_model(name, seed + m)`` trained by :func:`train_classifier` with
    shuffling seed ``seed + m``, so checkpoint ``m`` is the same whether it is trained here or
    alone.

    Args:
        name: one of :data:`explorer.models.MODEL_NAMES`.
        x: ``(n, 1, 28, 28)`` float32 inputs.
        y: ``(n,)`` int64 class ids.
        n_checkpoints: number of models, >= 1.
        epochs: passes over the data per model.
        seed: base seed.
        batch_size: examples per step.
        lr: peak learning rate.
        weight_decay: L2 penalty.
        progress: called as ``progress(steps_done, steps_total)`` with steps counted over all
            checkpoints together.

    Returns:
        ``n_checkpoints`` CPU state dicts, sharing no storage with each other.

    Raises:
        ValueError: unknown ``name``, ``n_checkpoints`` < 1, or as :func:`train_classifier`.
    """
    if isinstance(n_checkpoints, bool) or not isinstance(n_checkpoints, int) or n_checkpoints < 1:
        raise ValueError(f"n_checkpoints must be an int >= 1; received {n_checkpoints!r}")
    states = []
    for m in range(n_checkpoints):
        inner = _offset_progress(progress, m, n_checkpoints)
        model = init_model(name, seed + m)
        states.append(
            train_classifier(
                model,
                x,
                y,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed + m,
                weight_decay=weight_decay,
                progress=inner,
            )
        )
        logger.info("trained %s checkpoint %d/%d (seed %d)", name, m + 1, n_checkpoints, seed + m)
    return states
