"""Structured random projections for ``nn.Linear`` layers, without per-example gradients.

For one call of a Linear layer on one example, the gradient of the output with respect to
``[W b]`` is the outer product ``delta a~^T`` of the gradient ``delta`` (out,) at the layer's
output and its input ``a~ = [a, 1]`` (in + 1,). A projection matrix whose columns are themselves
outer products projects it without ever forming the (out, in + 1) gradient:

* ``"khatri_rao"``: column j is ``u_j v_j^T / sqrt(k)`` with ``u_j`` (out,) and ``v_j`` (in + 1,)
  standard Gaussian, so feature j is ``(u_j . delta) (v_j . a~) / sqrt(k)``: (B, k) from
  ``(delta @ U) * (a~ @ V)``.
* ``"kronecker"``: ``P = P_out (x) P_in`` with P_out (out, k_out) and P_in (in + 1, k_in)
  Gaussian, scaled by ``1/sqrt(k_out)`` and ``1/sqrt(k_in)``, ``k = k_out * k_in``; the feature
  is the outer product ``(P_out^T delta) (x) (P_in^T a~)``, flattened.

Both satisfy E[P P^T] = I, so inner products of features estimate those of the gradients, as
with a dense Gaussian matrix. With a sequence dimension the gradient is a sum of outer
products over positions, and so is the feature. Every Linear layer has its own factors and the
features of all layers are summed, which is exactly the projection of the whole gradient by
the matrix stacking the layers' blocks (:meth:`StructuredProjector.matrix`). Parameters that
do not belong to an ``nn.Linear`` (convolutions, embeddings, norms) get their per-example
gradients from :func:`trak_engine.gradients.per_example_gradients` and a dense Gaussian
projection, added to the same sum.

Cost per example and layer: ``(out + in) * k`` multiply-adds instead of ``out * in * k`` for a
dense projection, plus a single batched backward pass instead of a per-example gradient.

Limitations: the per-layer quantities come from one batched forward and backward pass, so the
model must treat examples independently in eval mode (no batch statistics across examples);
and a Linear layer's parameters must enter the output only through that module's own calls
(a weight also used functionally elsewhere, e.g. tied embeddings, is projected densely only if
another module owns it too).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trak_engine.gradients import (
    check_finite,
    eval_mode,
    per_example_gradients,
    select_parameters,
)
from trak_engine.outputs import margin, out_to_loss
from trak_engine.projection import Projector, derive_seed

logger = logging.getLogger(__name__)

STRUCTURED_TYPES = ("khatri_rao", "kronecker")
# Seed streams: factor U of layer l, factor V of layer l, the dense rest.
_U_STREAM, _V_STREAM, _REST_STREAM = 1, 2, 3
# kronecker: the larger factor of k may be at most this many times the smaller one.
MAX_FACTOR_RATIO = 16


def kronecker_factors(proj_dim: int) -> tuple[int, int]:
    """``(k_out, k_in)`` with ``k_out * k_in == proj_dim``, k_out the largest divisor <= sqrt.

    Raises:
        ValueError: the factors are more unbalanced than ``MAX_FACTOR_RATIO`` (e.g. a prime).
    """
    k_out = max(d for d in range(1, math.isqrt(proj_dim) + 1) if proj_dim % d == 0)
    k_in = proj_dim // k_out
    if k_in > MAX_FACTOR_RATIO * k_out:
        raise ValueError(
            f"proj_type 'kronecker' splits proj_dim into k_out * k_in with k_out the largest "
            f"divisor <= sqrt(proj_dim); proj_dim={proj_dim} gives {k_out} * {k_in}, more "
            f"unbalanced than 1:{MAX_FACTOR_RATIO}; use a proj_dim such as a power of two"
        )
    return k_out, k_in


@dataclass(frozen=True)
class LinearSlot:
    """A Linear module projected structurally and which of its parameters are selected."""

    module: str
    weight: str | None
    bias: str | None
    in_features: int
    out_features: int

    @property
    def in_rows(self) -> int:
        """Rows of the input factor: the input width, plus one for the bias."""
        return (self.in_features if self.weight else 0) + (1 if self.bias else 0)


def _full_name(module: str, param: str) -> str:
    return f"{module}.{param}" if module else param


def linear_slots(model: nn.Module, wanted: set[str]) -> list[LinearSlot]:
    """The ``nn.Linear`` modules (exact type) owning selected parameters no other module owns."""
    owners = Counter(
        id(p) for _, mod in model.named_modules() for p in mod.parameters(recurse=False)
    )
    slots = []
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear:  # subclasses may bypass forward (MultiheadAttention)
            continue
        names = {}
        for attr in ("weight", "bias"):
            param = getattr(mod, attr)
            full = _full_name(name, attr)
            if param is not None and full in wanted and owners[id(param)] == 1:
                names[attr] = full
        if names:
            slots.append(
                LinearSlot(
                    name, names.get("weight"), names.get("bias"), mod.in_features, mod.out_features
                )
            )
    return slots


def _gaussian(shape: tuple[int, int], seed: int, scale: float, device: torch.device) -> Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(device)


@contextmanager
def _record_calls(
    model: nn.Module, slots: list[LinearSlot]
) -> Iterator[dict[str, list[tuple[Tensor, Tensor]]]]:
    """Record ``(input, output)`` of every call of the slots' modules during a forward pass.

    The recorded output is the tensor to differentiate; the module returns a clone of it, so an
    in-place op downstream (``ReLU(inplace=True)``) cannot overwrite it.
    """
    modules = dict(model.named_modules())
    calls: dict[str, list[tuple[Tensor, Tensor]]] = {s.module: [] for s in slots}

    def hook_for(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            target = output if output.requires_grad else output.detach().requires_grad_()
            calls[name].append((inputs[0].detach(), target))
            return target.clone()

        return hook

    handles = [modules[s.module].register_forward_hook(hook_for(s.module)) for s in slots]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


class StructuredProjector:
    """Projects the per-example margin gradients of a model to (batch, k) float32.

    Args:
        model: the architecture; its ``nn.Linear`` layers are projected structurally.
        param_names: differentiate these parameters only; None for all.
        proj_dim: k.
        seed: the seed of this projection (use ``checkpoint_seed`` per checkpoint).
        proj_type: ``"khatri_rao"`` or ``"kronecker"``.
        device: where the factors live and the products run.
        max_bytes: memory budget of the dense projection of the non-Linear parameters.
    """

    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        param_names: tuple[str, ...] | None,
        proj_dim: int,
        seed: int,
        proj_type: str = "khatri_rao",
        device: str | torch.device = "cpu",
        max_bytes: int = 1 << 30,
    ) -> None:
        if proj_type not in STRUCTURED_TYPES:
            raise ValueError(f"proj_type must be one of {STRUCTURED_TYPES}, got {proj_type!r}")
        if proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
        self.proj_dim, self.seed, self.proj_type = proj_dim, seed, proj_type
        self.device = torch.device(device)
        wrt, _ = select_parameters(model, param_names)
        self.param_order = list(wrt)
        self.param_sizes = {n: p.numel() for n, p in wrt.items()}
        self.slots = linear_slots(model, set(wrt))
        done = {n for s in self.slots for n in (s.weight, s.bias) if n}
        self.rest_names = tuple(n for n in wrt if n not in done)
        self.factors = [self._factors(i, s) for i, s in enumerate(self.slots)]
        self.rest: Projector | None = None
        if self.rest_names:
            rest_dim = sum(self.param_sizes[n] for n in self.rest_names)
            rest_seed = derive_seed(seed, _REST_STREAM)
            self.rest = Projector(
                rest_dim, proj_dim, rest_seed, "gaussian", device, max_bytes, use_fast_jl=False
            )
        logger.debug(
            "%s projection: %d Linear layers structured, %d parameters dense",
            proj_type,
            len(self.slots),
            len(self.rest_names),
        )

    def _factors(self, index: int, slot: LinearSlot) -> tuple[Tensor, Tensor]:
        """``(U (out, k_u), V (in_rows, k_v))`` of one layer, scaled so that E[P P^T] = I."""
        if self.proj_type == "kronecker":
            k_u, k_v = kronecker_factors(self.proj_dim)
            scale_u, scale_v = 1 / math.sqrt(k_u), 1 / math.sqrt(k_v)
        else:
            k_u = k_v = self.proj_dim
            scale_u, scale_v = 1 / math.sqrt(self.proj_dim), 1.0
        u_seed = derive_seed(self.seed, _U_STREAM, index)
        v_seed = derive_seed(self.seed, _V_STREAM, index)
        return (
            _gaussian((slot.out_features, k_u), u_seed, scale_u, self.device),
            _gaussian((slot.in_rows, k_v), v_seed, scale_v, self.device),
        )

    def _combine(self, du: Tensor, av: Tensor) -> Tensor:
        """Project one call: (B, T, k_u) and (B, T, k_v) factor products -> (B, k)."""
        if self.proj_type == "kronecker":
            # Sum over positions of outer products: (B, k_u, k_v) -> (B, k).
            return torch.einsum("btp,btq->bpq", du, av).reshape(du.shape[0], -1)
        return (du * av).sum(dim=1)  # (B, T, k) -> (B, k)

    def _project_call(
        self, slot: LinearSlot, factors: tuple[Tensor, Tensor], a: Tensor, delta: Tensor
    ) -> Tensor:
        """Features (B, k) of one call with input a (B, ..., in) and output grad (B, ..., out)."""
        u, v = factors
        batch = delta.shape[0]
        delta = delta.reshape(-1, slot.out_features).float()  # (B*T, out)
        du = (delta @ u).reshape(batch, -1, u.shape[1])  # (B, T, k_u)
        if slot.weight and slot.bias:  # the bias row multiplies the constant input 1
            a = a.reshape(-1, slot.in_features).float()  # (B*T, in)
            av = torch.addmm(v[-1], a, v[: slot.in_features])  # (B*T, k_v)
        elif slot.weight:
            av = a.reshape(-1, slot.in_features).float() @ v
        else:
            av = v[-1].expand(delta.shape[0], -1)
        return self._combine(du, av.reshape(batch, -1, v.shape[1]))  # (B, T, k_v) -> (B, k)

    def features(
        self, model: nn.Module, x: Tensor, y: Tensor, offset: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Projected margin gradients and the out-to-loss term of a batch.

        Args:
            model: the model this projector was built for, on ``self.device``.
            x: (batch, ...) inputs; y: (batch,) int64 labels.
            offset: global index of the first example, for error messages.

        Returns:
            ``(features, q)``: (batch, k) float32 and (batch,) float32.

        Raises:
            NonFiniteError: an input, output or gradient is not finite; names the example.
            ValueError: a structured Linear layer was not called in the forward pass.
        """
        check_finite(x, "input", offset)
        with eval_mode(model), torch.enable_grad(), _record_calls(model, self.slots) as calls:
            logits = model(x)  # (B, n_classes)
            check_finite(logits.detach(), "model output", offset)
            targets = [t for s in self.slots for _, t in calls[s.module]]
            self._check_called(calls)
            deltas = torch.autograd.grad(margin(logits, y).sum(), targets, allow_unused=True)
        feats = torch.zeros(x.shape[0], self.proj_dim, device=self.device)
        position = 0
        for slot, factors in zip(self.slots, self.factors, strict=True):
            for a, target in calls[slot.module]:
                delta = deltas[position]
                position += 1
                delta = torch.zeros_like(target) if delta is None else delta
                check_finite(delta, f"gradient at the output of {slot.module!r}", offset)
                feats += self._project_call(slot, factors, a, delta)
        q = out_to_loss(logits.detach(), y).float()
        if self.rest is not None:
            grads, q = per_example_gradients(model, x, y, self.rest_names, offset)
            feats += self.rest.project(grads)
        return feats, q

    def _check_called(self, calls: dict[str, list[tuple[Tensor, Tensor]]]) -> None:
        silent = [s.module for s in self.slots if not calls[s.module]]
        if silent:
            raise ValueError(
                f"Linear module(s) {silent} were not called in the forward pass, so their "
                "parameters either do not affect the output or are used outside the module's "
                "forward; leave them out of param_names or use proj_type='gaussian'"
            )

    def matrix(self) -> Tensor:
        """The equivalent dense (grad_dim, k) matrix, rows in ``per_example_gradients`` order.

        For tests and small models: it has grad_dim * k entries.
        """
        blocks: dict[str, Tensor] = {}
        for slot, (u, v) in zip(self.slots, self.factors, strict=True):
            if slot.weight:
                blocks[slot.weight] = self._outer_rows(u, v[: slot.in_features])
            if slot.bias:
                blocks[slot.bias] = self._outer_rows(u, v[-1:])
        if self.rest is not None:
            rest, start = self.rest.matrix(), 0
            for name in self.rest_names:
                size = self.param_sizes[name]
                blocks[name] = rest[start : start + size]
                start += size
        return torch.cat([blocks[n] for n in self.param_order])

    def _outer_rows(self, u: Tensor, v: Tensor) -> Tensor:
        """Rows (r, c) of the block for factors u (out, k_u) and v (cols, k_v): (out*cols, k)."""
        if self.proj_type == "kronecker":
            return torch.einsum("rp,cq->rcpq", u, v).reshape(-1, self.proj_dim)
        return (u[:, None, :] * v[None, :, :]).reshape(-1, self.proj_dim)
