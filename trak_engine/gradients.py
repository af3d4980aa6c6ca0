"""Per-example gradients of the model output with ``torch.func`` (functional_call + vmap)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from trak_engine.errors import NonFiniteError
from trak_engine.outputs import margin, out_to_loss

logger = logging.getLogger(__name__)


def select_parameters(
    model: nn.Module, param_names: tuple[str, ...] | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split the model's parameters into those differentiated and those held fixed.

    Returns:
        ``(wrt, fixed)``, two dicts name -> detached tensor, in ``named_parameters`` order.
    """
    params = {name: p.detach() for name, p in model.named_parameters()}
    if param_names is None:
        return params, {}
    unknown = sorted(set(param_names) - set(params))
    if unknown:
        raise ValueError(
            f"param_names contains names the model does not have: {unknown}; "
            f"the model's parameters are {list(params)}"
        )
    wanted = set(param_names)
    wrt = {n: p for n, p in params.items() if n in wanted}
    fixed = {n: p for n, p in params.items() if n not in wanted}
    return wrt, fixed


def grad_dim(model: nn.Module, param_names: tuple[str, ...] | None = None) -> int:
    """Number of entries in one flattened per-example gradient."""
    wrt, _ = select_parameters(model, param_names)
    return sum(p.numel() for p in wrt.values())


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode (BatchNorm running statistics, no dropout), then restore."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_finite(values: Tensor, what: str, offset: int) -> None:
    """Raise NonFiniteError naming the first example (global index) with a NaN or inf.

    Args:
        values: (batch, ...) tensor; row i is example ``offset + i``.
        what: what the values are, for the message.
        offset: global index of row 0.
    """
    bad = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        ids = [offset + r for r in rows]
        raise NonFiniteError(
            f"{what} of example {ids[0]} contains NaN or inf "
            f"({len(ids)} such example(s) in this batch: {ids[:10]}); "
            "fix or drop that example: features computed before it are kept"
        )


def per_example_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    param_names: tuple[str, ...] | None = None,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Flattened per-example gradients of the margin, and the out-to-loss term.

    The model is evaluated in eval mode; its buffers are passed through unchanged.

    Args:
        model: a classifier returning (batch, n_classes) logits.
        x: (batch, ...) inputs on the model's device.
        y: (batch,) int64 labels.
        param_names: differentiate these parameters only; None for all.
        offset: global index of the first example, used in error messages.

    Returns:
        ``(grads, q)``: (batch, grad_dim) float32 and (batch,) float32.

    Raises:
        NonFiniteError: an input, output or gradient is not finite; names the example.
    """
    check_finite(x, "input", offset)
    wrt, fixed = select_parameters(model, param_names)
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def output_of_one(params: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        state = {**params, **fixed, **buffers}
        logits = functional_call(model, state, (xi.unsqueeze(0),))  # (1, n_classes)
        return margin(logits, yi.unsqueeze(0)).squeeze(0)

    with eval_mode(model):
        grads = vmap(grad(output_of_one), in_dims=(None, 0, 0))(wrt, x, y)
        with torch.no_grad():
            logits = functional_call(model, {**wrt, **fixed, **buffers}, (x,))
    check_finite(logits, "model output", offset)
    # Flatten each parameter's (batch, *shape) gradient and join: (batch, grad_dim).
    flat = torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)
    check_finite(flat, "gradient", offset)
    return flat.float(), out_to_loss(logits, y).float()
