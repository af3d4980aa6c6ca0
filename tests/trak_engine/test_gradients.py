"""Per-example gradients against a loop of ordinary backward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_data
from torch import nn
from trak_reference import reference_gradients

from trak_engine.errors import NonFiniteError
from trak_engine.gradients import grad_dim, per_example_gradients
from trak_engine.outputs import margin, out_to_loss


class BatchNormDropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def trained_bn_net() -> nn.Module:
    """A BatchNorm net whose running statistics differ from the batch statistics."""
    torch.manual_seed(0)
    net = BatchNormDropoutNet()
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(32, 4) * 3 + 1)
    return net


def test_margin_and_out_to_loss_match_their_definitions():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    labels = torch.tensor([0, 2])
    expected = [2.0 - np.log(np.exp(-1.0) + np.exp(0.5)), 0.3 - np.log(np.exp(0.1) + np.exp(0.2))]
    np.testing.assert_allclose(margin(logits, labels).numpy(), expected, rtol=1e-6)
    probs = torch.softmax(logits, 1)
    np.testing.assert_allclose(
        out_to_loss(logits, labels).numpy(), [1 - probs[0, 0], 1 - probs[1, 2]], rtol=1e-6
    )


def test_gradients_equal_backward_loop_with_batchnorm_and_dropout():
    net = trained_bn_net()
    x, y = tiny_data(12, seed=3)
    grads, q = per_example_gradients(net, x, y)
    expected, expected_q = reference_gradients(net, net.state_dict(), x, y)
    assert grads.shape == (12, grad_dim(net)) and grads.dtype == torch.float32
    np.testing.assert_allclose(grads.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q.numpy(), expected_q, rtol=1e-5, atol=1e-6)
    again, _ = per_example_gradients(net, x, y)
    assert torch.equal(grads, again)
    assert net.training, "the caller's train/eval mode is restored"


def test_gradients_of_a_parameter_subset():
    net = trained_bn_net()
    x, y = tiny_data(5, seed=4)
    full, _ = per_example_gradients(net, x, y)
    only_fc2, _ = per_example_gradients(net, x, y, param_names=("fc2.weight", "fc2.bias"))
    assert only_fc2.shape == (5, 6 * 3 + 3)
    np.testing.assert_allclose(only_fc2.numpy(), full[:, -21:].numpy(), rtol=1e-6)


def test_unknown_parameter_name_lists_the_real_ones():
    with pytest.raises(ValueError, match=r"does not have: \['fc9.weight'\].*fc1.weight"):
        per_example_gradients(trained_bn_net(), *tiny_data(2, 0), param_names=("fc9.weight",))


def test_nan_input_names_the_example():
    x, y = tiny_data(8, seed=1)
    x[5, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="input of example 105 contains NaN"):
        per_example_gradients(trained_bn_net(), x, y, offset=100)
