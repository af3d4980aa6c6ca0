"""The after-kernel, its inverse and TRAK scores, accumulated in float64.

For checkpoint m with training features Phi_m (n, k) and target features phi_m(x) (k,):

    K_m = Phi_m^T Phi_m + lambda_m I
    tau(x)_i = (1/M sum_m phi_m(x)^T K_m^-1 phi_m,i) * (1/M sum_m Q_m,i)

lambda_m = lam * trace(Phi_m^T Phi_m) / k (``lam`` is relative to the mean eigenvalue).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from trak_engine.errors import IllConditionedKernelError

logger = logging.getLogger(__name__)

# Smallest accepted reciprocal condition number of the kernel (float64 has ~16 digits; the
# features are float32, so beyond ~1e10 the inverse amplifies their rounding into the scores).
MIN_RCOND = 1e-10
ROWS_PER_PASS = 8192


@dataclass(frozen=True)
class KernelInverse:
    """K^-1 of one checkpoint, with what was needed to get it.

    Attributes:
        inverse: (k, k) float64.
        lam_abs: the absolute ridge term added to the diagonal.
        rcond: estimated reciprocal condition number of K (1 is perfect).
    """

    inverse: np.ndarray
    lam_abs: float
    rcond: float


def gram(features: np.ndarray) -> np.ndarray:
    """Phi^T Phi in float64, reading ``features`` (n, k) in passes of rows (memmap-friendly)."""
    k = features.shape[1]
    out = np.zeros((k, k), dtype=np.float64)
    for start in range(0, features.shape[0], ROWS_PER_PASS):
        block = np.asarray(features[start : start + ROWS_PER_PASS], dtype=np.float64)
        out += block.T @ block  # (k, rows) @ (rows, k)
    return out


def kernel_inverse(features: np.ndarray, lam: float) -> KernelInverse:
    """Invert K = Phi^T Phi + lam * trace/k * I in float64.

    Args:
        features: (n, k) training features of one checkpoint.
        lam: relative ridge term (>= 0).

    Raises:
        IllConditionedKernelError: K is singular or too ill-conditioned to give meaningful
            scores (with lam = 0 this happens whenever n < k: the rank is at most n).
    """
    n, k = features.shape
    if n == 0:
        raise IllConditionedKernelError("the kernel needs at least one training example, got 0")
    if lam == 0 and n < k:
        raise IllConditionedKernelError(
            f"the kernel Phi^T Phi has rank at most n = {n} < k = {k}, so it is singular and "
            f"the scores would be meaningless; pass lam > 0 (for example lam=0.01) or use "
            f"proj_dim <= {n}"
        )
    kernel = gram(features)
    lam_abs = float(lam * np.trace(kernel) / k)
    kernel[np.diag_indices(k)] += lam_abs
    try:
        chol = scipy.linalg.cho_factor(kernel, lower=True, check_finite=True)
    except np.linalg.LinAlgError as err:
        raise IllConditionedKernelError(
            f"the kernel (k = {k}, n = {n}, lam = {lam}) is not positive definite: {err}; "
            "increase lam"
        ) from err
    anorm = float(np.abs(kernel).sum(axis=0).max())
    rcond, info = scipy.linalg.lapack.dpocon(chol[0], anorm, uplo="L")
    if info != 0 or rcond < MIN_RCOND:
        raise IllConditionedKernelError(
            f"the kernel (k = {k}, n = {n}, lam = {lam}) has reciprocal condition number "
            f"{rcond:.2e} < {MIN_RCOND:.0e}: its inverse would turn rounding into scores; "
            "increase lam or lower proj_dim"
        )
    inverse = scipy.linalg.cho_solve(chol, np.eye(k))
    return KernelInverse(inverse=(inverse + inverse.T) / 2, lam_abs=lam_abs, rcond=float(rcond))


def train_directions(features: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """K^-1 phi_i for every training example: (n, k) float64 (K^-1 is symmetric)."""
    out = np.empty(features.shape, dtype=np.float64)
    for start in range(0, features.shape[0], ROWS_PER_PASS):
        block = np.asarray(features[start : start + ROWS_PER_PASS], dtype=np.float64)
        out[start : start + block.shape[0]] = block @ inverse  # (rows, k) @ (k, k)
    return out


def mean_out_to_loss(q_per_checkpoint: Sequence[np.ndarray]) -> np.ndarray:
    """(1/M) sum_m Q_m: (n,) float64."""
    return np.mean([np.asarray(q, dtype=np.float64) for q in q_per_checkpoint], axis=0)


def trak_scores(
    target_features: Sequence[np.ndarray],
    directions: Sequence[np.ndarray],
    q_per_checkpoint: Sequence[np.ndarray],
) -> np.ndarray:
    """TRAK scores, the paper's formula.

    Args:
        target_features: per checkpoint, (n_targets, k) phi_m(x).
        directions: per checkpoint, (n_train, k) K_m^-1 phi_m,i (``train_directions``).
        q_per_checkpoint: per checkpoint, (n_train,) Q_m,i.

    Returns:
        (n_targets, n_train) float64.
    """
    n_ckpts = len(directions)
    if not (len(target_features) == n_ckpts == len(q_per_checkpoint)) or n_ckpts == 0:
        raise ValueError(
            f"need the same number (>= 1) of target features, directions and Q arrays, got "
            f"{len(target_features)}, {n_ckpts}, {len(q_per_checkpoint)}"
        )
    # Each term: (n_targets, k) @ (k, n_train) -> (n_targets, n_train).
    total = sum(
        np.asarray(phi_x, dtype=np.float64) @ direction.T
        for phi_x, direction in zip(target_features, directions, strict=True)
    )
    return np.asarray(total) / n_ckpts * mean_out_to_loss(q_per_checkpoint)[None, :]
