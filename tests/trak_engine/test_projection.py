"""Seeded projection: determinism, block independence, and the dense-matrix oracle."""

from __future__ import annotations

import math

import pytest
import torch

from trak_engine.projection import TILE_ROWS, Projector, checkpoint_seed

GRAD_DIM = 2 * TILE_ROWS + 37  # three tiles, the last one partial


def grads(n: int = 6) -> torch.Tensor:
    return torch.randn(n, GRAD_DIM, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_same_seed_bit_identical_other_seed_differs(kind):
    g = grads()
    a = Projector(GRAD_DIM, 64, seed=5, proj_type=kind).project(g)
    b = Projector(GRAD_DIM, 64, seed=5, proj_type=kind).project(g)
    c = Projector(GRAD_DIM, 64, seed=6, proj_type=kind).project(g)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_blockwise_equals_dense_matrix():
    g = grads()
    full = Projector(GRAD_DIM, 64, seed=1)
    # Budget of one tile: the matrix is regenerated tile by tile for every batch.
    blockwise = Projector(GRAD_DIM, 64, seed=1, max_bytes=TILE_ROWS * 64 * 4)
    assert full._matrix is not None and blockwise._matrix is None
    torch.testing.assert_close(blockwise.matrix(), full.matrix(), rtol=0, atol=0)
    torch.testing.assert_close(blockwise.project(g), g @ full.matrix(), rtol=1e-5, atol=1e-5)


def test_entries_are_scaled_by_one_over_sqrt_k():
    matrix = Projector(GRAD_DIM, 100, seed=0, proj_type="rademacher").matrix()
    torch.testing.assert_close(torch.unique(matrix), torch.tensor([-0.1, 0.1]))
    gauss = Projector(GRAD_DIM, 100, seed=0).matrix()
    assert abs(gauss.std().item() * math.sqrt(100) - 1) < 0.02


def test_checkpoints_get_different_seeds():
    seeds = {checkpoint_seed(0, m) for m in range(5)} | {checkpoint_seed(1, m) for m in range(5)}
    assert len(seeds) == 10


def test_wrong_gradient_width_is_named():
    with pytest.raises(ValueError, match=r"shape \(batch, 2085\), got \(2, 10\)"):
        Projector(GRAD_DIM, 8, seed=0).project(torch.zeros(2, 10))


def test_no_projection_needs_matching_dim():
    with pytest.raises(ValueError, match="proj_dim must equal the gradient size 2085"):
        Projector(GRAD_DIM, 8, seed=0, proj_type="none")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_torch_path_matches_cpu():
    g = grads()
    cpu = Projector(GRAD_DIM, 512, seed=2, use_fast_jl=False).project(g)
    gpu = Projector(GRAD_DIM, 512, seed=2, device="cuda", use_fast_jl=False).project(g.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
