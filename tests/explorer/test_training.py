"""Tests for the demo models and seeded training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from explorer.datasets import load_demo_split, to_tensor
from explorer.models import MODEL_NAMES, DemoCNN, DemoMLP, build_model, count_parameters
from explorer.training import (
    clone_state_dict,
    init_model,
    predict,
    train_checkpoints,
    train_classifier,
)

N_SMALL = 256
Data = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def small_data() -> Data:
    """256 real demo digits as ``(256, 1, 28, 28)`` float32 and ``(256,)`` int64."""
    split = load_demo_split(n_train=N_SMALL, n_test=0)
    return to_tensor(split.train_images), torch.from_numpy(split.train_labels)


def _train(name: str, seed: int, data: Data) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model = init_model(name, seed)
    state = train_classifier(model, *data, epochs=1, lr=0.05, seed=seed)
    return model, state


def _assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_build_model_names_and_sizes() -> None:
    assert isinstance(build_model("cnn"), DemoCNN)
    assert isinstance(build_model("mlp"), DemoMLP)
    assert 20_000 <= count_parameters(build_model("cnn")) <= 60_000
    assert count_parameters(build_model("mlp")) == 784 * 256 + 256 + 256 * 10 + 10
    x = torch.zeros(3, 1, 28, 28)
    for name in MODEL_NAMES:
        assert build_model(name)(x).shape == (3, 10)


def test_build_model_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"one of \['cnn', 'mlp'\]; received 'resnet'"):
        build_model("resnet")
    with pytest.raises(ValueError, match=r"received 'resnet'"):
        init_model("resnet", 0)


def test_init_model_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = init_model("cnn", 0), init_model("cnn", 0), init_model("cnn", 1)
    assert torch.equal(torch.random.get_rng_state(), state)
    _assert_states_equal(a.state_dict(), b.state_dict())
    key = "features.0.weight"
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_is_deterministic(name: str, small_data: Data) -> None:
    _, first = _train(name, 0, small_data)
    _, again = _train(name, 0, small_data)
    _, other = _train(name, 1, small_data)
    _assert_states_equal(first, again)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_shuffling_seed_alone_changes_result(small_data: Data) -> None:
    a = train_classifier(init_model("mlp", 0), *small_data, epochs=1, lr=0.05, seed=0)
    b = train_classifier(init_model("mlp", 0), *small_data, epochs=1, lr=0.05, seed=5)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_returned_state_shares_no_storage(small_data: Data) -> None:
    model, state = _train("cnn", 0, small_data)
    model_ptrs = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    state_ptrs = {t.untyped_storage().data_ptr() for t in state.values()}
    assert not model_ptrs & state_ptrs
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    _assert_states_equal(state, before)
    copy = clone_state_dict(model)
    assert not {t.untyped_storage().data_ptr() for t in copy.values()} & model_ptrs


def test_training_reduces_loss_and_reports_progress(small_data: Data) -> None:
    x, y = small_data
    model = init_model("cnn", 0)
    loss_before = torch.nn.functional.cross_entropy(model(x), y).item()
    calls: list[tuple[int, int]] = []
    train_classifier(model, x, y, epochs=2, batch_size=64, lr=0.05, seed=0, progress=_rec(calls))
    assert calls == [(i, 8) for i in range(1, 9)]  # 2 epochs x ceil(256 / 64) steps
    assert not model.training
    with torch.no_grad():
        assert torch.nn.functional.cross_entropy(model(x), y).item() < loss_before


def _rec(calls: list[tuple[int, int]]) -> Callable[[int, int], None]:
    return lambda done, total: calls.append((done, total))


def test_train_checkpoints_match_single_runs(small_data: Data) -> None:
    x, y = small_data[0][:64], small_data[1][:64]
    calls: list[tuple[int, int]] = []
    states = train_checkpoints("mlp", x, y, 2, epochs=1, seed=3, lr=0.05, progress=_rec(calls))
    assert len(states) == 2
    single = train_classifier(init_model("mlp", 4), x, y, epochs=1, lr=0.05, seed=4)
    _assert_states_equal(states[1], single)
    assert calls == [(1, 2), (2, 2)]  # one 64-example step per checkpoint
    ptrs = [{t.untyped_storage().data_ptr() for t in s.values()} for s in states]
    assert not ptrs[0] & ptrs[1]


def test_predict_shapes_dtypes_and_mode(small_data: Data) -> None:
    x = small_data[0][:37]
    model = init_model("cnn", 0)
    model.train()
    pred, conf, logits = predict(model, x, batch_size=16)
    assert pred.shape == (37,) and pred.dtype == torch.int64
    assert conf.shape == (37,) and conf.dtype == torch.float32
    assert logits.shape == (37, 10) and logits.dtype == torch.float32
    assert model.training  # mode restored
    torch.testing.assert_close(pred, logits.argmax(1), rtol=0, atol=0)
    torch.testing.assert_close(conf, torch.softmax(logits, 1).max(1).values)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))  # batch size does not matter
    empty = predict(model, x[:0])
    assert [t.shape for t in empty] == [(0,), (0,), (0, 10)]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ValueError, r"epochs must be an int >= 1; received 0"),
        ({"batch_size": 0}, ValueError, r"batch_size must be an int >= 1; received 0"),
        ({"lr": -1.0}, ValueError, r"lr must be a finite number > 0; received -1.0"),
        ({"weight_decay": -1.0}, ValueError, r"weight_decay .*>= 0; received -1.0"),
        ({"y": torch.zeros(8)}, TypeError, r"y must be a 1-D int64 .*torch.float32"),
        ({"y": torch.zeros(7, dtype=torch.int64)}, ValueError, r"x \(8, 1, 28, 28\) and y \(7,\)"),
        ({"x": torch.zeros(8, 1, 28, 28, dtype=torch.int64)}, TypeError, r"x must be a floating"),
    ],
)
def test_train_classifier_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    args: dict[str, Any] = {"x": torch.zeros(8, 1, 28, 28), "y": torch.zeros(8, dtype=torch.int64)}
    args.update(epochs=1, lr=0.1, seed=0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        train_classifier(build_model("mlp"), **args)


def test_non_finite_loss_raises() -> None:
    x = torch.full((4, 1, 28, 28), float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss is nan .*lower lr"):
        train_classifier(
            build_model("mlp"), x, torch.zeros(4, dtype=torch.int64), epochs=1, lr=0.1, seed=0
        )


def test_train_checkpoints_rejects_zero_checkpoints(small_data: Data) -> None:
    with pytest.raises(ValueError, match=r"n_checkpoints must be an int >= 1; received 0"):
        x, y = small_data
        train_checkpoints("cnn", x, y, 0, epochs=1, seed=0, lr=0.05)
