"""Scores against an independent float64 reference of the paper's formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import checkpoints, tiny_data, tiny_mlp
from trak_reference import reference_gradients, reference_scores

from trak_engine import IllConditionedKernelError, TrakConfig, attribute
from trak_engine.gradients import grad_dim
from trak_engine.projection import Projector, checkpoint_seed
from trak_engine.scores import kernel_inverse

# float32 features through a well-conditioned kernel: measured ~1e-6 of the largest score.
RTOL = 1e-5
# A random square projection has condition number ~p, amplifying float32 rounding: ~7e-5.
SQUARE_RTOL = 3e-4


def reference_for(model, ckpts, train, targets, config: TrakConfig) -> np.ndarray:
    p = grad_dim(model)
    train_feats, target_feats, qs = [], [], []
    for m, state in enumerate(ckpts):
        g_train, q = reference_gradients(model, state, *train)
        g_target, _ = reference_gradients(model, state, *targets)
        proj = Projector(p, config.proj_dim, checkpoint_seed(config.seed, m), config.proj_type)
        matrix = proj.matrix().double().numpy()  # (p, k)
        train_feats.append(g_train @ matrix)
        target_feats.append(g_target @ matrix)
        qs.append(q)
    return reference_scores(train_feats, target_feats, qs, config.lam)


def assert_scores_close(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL) -> None:
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize(
    "config",
    [
        TrakConfig(proj_dim=43, proj_type="none", lam=0.0),
        TrakConfig(proj_dim=16, proj_type="gaussian", lam=0.0, seed=3),
        TrakConfig(proj_dim=24, proj_type="rademacher", lam=0.05, seed=1),
    ],
    ids=["unprojected", "gaussian", "rademacher-lam"],
)
def test_scores_equal_float64_reference(mlp, config, tmp_path):
    ckpts = checkpoints(3)
    train, targets = tiny_data(80, seed=1), tiny_data(7, seed=2)
    result = attribute(mlp, ckpts, train, targets, config, k=5, workdir=tmp_path)
    expected = reference_for(mlp, ckpts, train, targets, config)
    assert result.scores.shape == (7, 80)
    assert_scores_close(result.scores, expected)


def test_square_projection_cancels_and_ignores_seed(mlp, tmp_path):
    """k = p, n > p, lam = 0: phi = P^T g and P is invertible, so P drops out."""
    ckpts = checkpoints(2)
    train, targets = tiny_data(90, seed=4), tiny_data(6, seed=5)
    unprojected = attribute(
        mlp, ckpts, train, targets, TrakConfig(proj_dim=43, proj_type="none", lam=0.0)
    )
    for seed in (0, 7):
        config = TrakConfig(proj_dim=43, proj_type="gaussian", seed=seed, lam=0.0)
        projected = attribute(mlp, ckpts, train, targets, config, workdir=tmp_path / str(seed))
        assert_scores_close(projected.scores, unprojected.scores, SQUARE_RTOL)


def test_rank_deficient_kernel_is_refused_without_lambda():
    feats = np.random.default_rng(0).standard_normal((100, 512)).astype(np.float32)
    with pytest.raises(IllConditionedKernelError, match=r"rank at most n = 100 < k = 512"):
        kernel_inverse(feats, lam=0.0)
    kinv = kernel_inverse(feats, lam=0.01)
    assert np.isfinite(kinv.inverse).all() and kinv.lam_abs > 0


def test_singular_kernel_with_enough_rows_is_refused():
    """n >= k but the rows span a lower-dimensional space: still refused at lam = 0."""
    rng = np.random.default_rng(1)
    feats = (rng.standard_normal((200, 5)) @ rng.standard_normal((5, 32))).astype(np.float32)
    with pytest.raises(IllConditionedKernelError, match="increase lam"):
        kernel_inverse(feats, lam=0.0)


def test_rank_deficient_end_to_end_names_the_fix(tmp_path):
    model = tiny_mlp(0, hidden=40)  # 4*40+40+40*3+3 = 323 parameters
    train, targets = tiny_data(100, seed=1), tiny_data(3, seed=2)
    with pytest.raises(IllConditionedKernelError, match="pass lam > 0"):
        attribute(
            model,
            checkpoints(1, hidden=40),
            train,
            targets,
            TrakConfig(proj_dim=256, lam=0.0, proj_type="gaussian"),
            workdir=tmp_path,
        )
    result = attribute(
        model,
        checkpoints(1, hidden=40),
        train,
        targets,
        TrakConfig(proj_dim=256, lam=0.01, proj_type="gaussian"),
        workdir=tmp_path,
    )
    assert np.isfinite(result.scores).all()


def test_torch_default_dtype_untouched(mlp):
    assert torch.get_default_dtype() == torch.float32
