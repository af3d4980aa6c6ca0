"""Structured projections: the dense-matrix oracle, seeding, and the unsupported cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import checkpoints, tiny_data, tiny_mlp
from torch import nn

from trak_engine import TrakConfig
from trak_engine.api import featurize
from trak_engine.gradients import per_example_gradients
from trak_engine.projection import checkpoint_seed
from trak_engine.structured import STRUCTURED_TYPES, StructuredProjector, linear_slots

# Features are float32 sums of products; the oracle multiplies float32 gradients by a float32
# matrix in another order.
RTOL, ATOL = 1e-4, 1e-5
K = 16  # kronecker: 4 * 4


class NormNet(nn.Module):
    """Linear -> in-place ReLU -> LayerNorm -> Linear: LayerNorm parameters go dense."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.inp = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.act(self.inp(x))))  # the ReLU overwrites inp's output


class SequenceNet(nn.Module):
    """A Linear applied at 5 positions, then averaged: the gradient is a sum of outer products."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.token = nn.Linear(2, 6, bias=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.tanh(self.token(x.reshape(x.shape[0], 5, 2)))  # (B, 5, 6)
        return self.head(tokens.mean(dim=1))  # (B, 3)


class TiedNet(nn.Module):
    """Two Linear modules sharing one weight: it is owned twice, so it is projected densely."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 4)
        self.second.weight = self.first.weight
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))))


class UnusedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.spare = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def data(n: int = 12, width: int = 4, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def oracle(model, projector, x, y, param_names=None):
    """Explicit per-example gradients times the equivalent dense matrix: (n, k)."""
    grads, q = per_example_gradients(model, x, y, param_names)
    return grads @ projector.matrix(), q


@pytest.mark.parametrize("kind", STRUCTURED_TYPES)
@pytest.mark.parametrize(
    ("model", "width", "param_names"),
    [
        (tiny_mlp(0, hidden=7), 4, None),
        (NormNet(), 4, None),
        (NormNet(), 4, ("out.weight", "inp.bias", "norm.weight")),
        (SequenceNet(), 10, None),
        (TiedNet(), 4, None),
    ],
    ids=["mlp", "layernorm-inplace-relu", "some-params", "sequence", "tied"],
)
def test_structured_features_equal_explicit_gradients_times_matrix(model, width, param_names, kind):
    x, y = data(width=width)
    projector = StructuredProjector(model, param_names, K, seed=3, proj_type=kind)
    feats, q = projector.features(model, x, y)
    expected, expected_q = oracle(model, projector, x, y, param_names)
    assert feats.shape == (12, K)
    torch.testing.assert_close(feats, expected, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(q, expected_q, rtol=1e-6, atol=1e-7)


def test_which_parameters_are_structured():
    assert [s.module for s in linear_slots(NormNet(), {"inp.weight", "out.bias"})] == [
        "inp",
        "out",
    ]
    tied = StructuredProjector(TiedNet(), None, K, seed=0)
    assert tied.rest_names == ("first.weight",)
    assert [(s.module, s.weight, s.bias) for s in tied.slots] == [
        ("first", None, "first.bias"),
        ("second", None, "second.bias"),
        ("head", "head.weight", "head.bias"),
    ]


@pytest.mark.parametrize("kind", STRUCTURED_TYPES)
def test_same_seed_bit_identical_other_seed_differs(kind):
    model, (x, y) = NormNet(), data()
    a = StructuredProjector(model, None, K, seed=5, proj_type=kind).features(model, x, y)[0]
    b = StructuredProjector(model, None, K, seed=5, proj_type=kind).features(model, x, y)[0]
    c = StructuredProjector(model, None, K, seed=6, proj_type=kind).features(model, x, y)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("kind", STRUCTURED_TYPES)
def test_projection_preserves_inner_products_on_average(kind):
    # E[P P^T] = I: averaged over 200 seeds, the projected Gram matrix approaches the exact one.
    model, (x, y) = tiny_mlp(0, hidden=7), data(n=4)
    grads, _ = per_example_gradients(model, x, y)
    exact = grads @ grads.T  # (4, 4)
    mean = sum(
        (f @ f.T)
        for f in (
            StructuredProjector(model, None, 64, seed=s, proj_type=kind).features(model, x, y)[0]
            for s in range(200)
        )
    )
    mean = mean / 200
    rel = (mean - exact).abs().max() / exact.abs().max()
    assert rel < 0.1, f"projected Gram matrix is off by {rel:.3f} of the largest exact entry"


@pytest.mark.parametrize("kind", STRUCTURED_TYPES)
def test_featurize_stores_the_structured_features(mlp, tmp_path, kind):
    config = TrakConfig(proj_dim=K, proj_type=kind, seed=2)
    ckpts = checkpoints(2)
    x, y = tiny_data(30, seed=1)
    splits = {"train": (x, y), "test": tiny_data(5, seed=2)}
    store = featurize(mlp, ckpts, splits, config, tmp_path / "a", batch_size=7, chunk_size=11)
    for m, state in enumerate(ckpts):
        mlp.load_state_dict(state)
        projector = StructuredProjector(mlp, None, K, checkpoint_seed(2, m), kind)
        expected, expected_q = oracle(mlp, projector, x, y)
        feats, q = store.load(m, "train")
        np.testing.assert_allclose(feats, expected.numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(q, expected_q.numpy(), rtol=1e-6, atol=1e-7)
    assert not np.allclose(store.load(0, "train")[0], store.load(1, "train")[0])


def test_kronecker_needs_balanced_factors():
    assert TrakConfig(proj_dim=2048, proj_type="kronecker").proj_dim == 2048
    with pytest.raises(ValueError, match=r"proj_dim=1021 gives 1 \* 1021"):
        TrakConfig(proj_dim=1021, proj_type="kronecker")
    with pytest.raises(ValueError, match="proj_type must be one of"):
        TrakConfig(proj_type="sparse")


def test_uncalled_linear_layer_is_refused():
    model, (x, y) = UnusedNet(), data()
    projector = StructuredProjector(model, None, K, seed=0)
    with pytest.raises(ValueError, match=r"Linear module\(s\) \['spare'\] were not called"):
        projector.features(model, x, y)
    only_used = StructuredProjector(model, ("used.weight", "used.bias"), K, seed=0)
    assert only_used.features(model, x, y)[0].shape == (12, K)


def test_non_finite_gradient_names_the_example():
    model, (x, y) = tiny_mlp(0), data()
    x[5, 0] = float("nan")
    with pytest.raises(ValueError, match="input of example 5"):
        StructuredProjector(model, None, K, seed=0).features(model, x, y)
