"""Model output functions and the out-to-loss term for classification (TRAK, Section 3)."""

from __future__ import annotations

import torch
from torch import Tensor


def margin(logits: Tensor, label: Tensor) -> Tensor:
    """Classification margin f(z) = logit[y] - logsumexp(logits without y).

    Args:
        logits: (..., n_classes) float.
        label: (...) int64, the true class.

    Returns:
        (...) the margin, same dtype as ``logits``.
    """
    true_logit = logits.gather(-1, label.unsqueeze(-1)).squeeze(-1)
    # Mask the true class out of the logsumexp: (..., n_classes) with -inf at y.
    classes = torch.arange(logits.shape[-1], device=logits.device)
    mask = classes == label.unsqueeze(-1)
    others = logits.masked_fill(mask, float("-inf"))
    return true_logit - torch.logsumexp(others, dim=-1)


def out_to_loss(logits: Tensor, label: Tensor) -> Tensor:
    """Q = 1 - p(true class) = d loss / d margin for the cross-entropy loss.

    Args:
        logits: (n, n_classes) float.
        label: (n,) int64.

    Returns:
        (n,) float, in [0, 1].
    """
    probs = torch.softmax(logits.float(), dim=-1)
    return 1.0 - probs.gather(-1, label.unsqueeze(-1)).squeeze(-1)
