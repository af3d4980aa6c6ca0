"""An independent float64 TRAK reference: loops of ordinary backward passes and numpy."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def reference_margin(logits: torch.Tensor, label: int) -> torch.Tensor:
    others = torch.cat([logits[:label], logits[label + 1 :]])
    return logits[label] - torch.log(torch.exp(others).sum())


def reference_gradients(model: nn.Module, state: dict, x: torch.Tensor, y: torch.Tensor):
    """(n, p) float64 gradients of the margin and (n,) float64 Q, one backward per example."""
    net = copy.deepcopy(model).double()
    net.load_state_dict({k: v.double() for k, v in state.items()})
    net.eval()
    grads, qs = [], []
    for xi, yi in zip(x.double(), y.tolist(), strict=True):
        net.zero_grad()
        logits = net(xi.unsqueeze(0))[0]
        reference_margin(logits, yi).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]).numpy().copy())
        qs.append(1.0 - torch.softmax(logits.detach(), 0)[yi].item())
    return np.stack(grads), np.array(qs)


def reference_scores(train_feats, target_feats, train_qs, lam_rel: float) -> np.ndarray:
    """The paper's formula in float64 from per-checkpoint features (lists of arrays)."""
    total = 0.0
    for phi, phi_x in zip(train_feats, target_feats, strict=True):
        k = phi.shape[1]
        kernel = phi.T @ phi
        kernel = kernel + lam_rel * np.trace(kernel) / k * np.eye(k)
        total = total + phi_x @ np.linalg.solve(kernel, phi.T)
    return total / len(train_feats) * np.mean(train_qs, axis=0)[None, :]
