"""FAISS top-k against numpy argsort of the exact scores."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import checkpoints, tiny_data

from trak_engine import AttributionIndex, TrakConfig, attribute
from trak_engine.errors import EmptyTrainingSetError
from trak_engine.index import index_vectors, query_vectors

SCORE_ATOL = 1e-5


def brute_force(scores: np.ndarray, k: int):
    """(ids, scores) of the k largest and k smallest per row by a stable argsort."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    worst = np.argsort(scores, axis=1, kind="stable")[:, :k]
    take = np.take_along_axis
    return (order, take(scores, order, 1)), (worst, take(scores, worst, 1))


def random_index(n_train=70, n_targets=9, dim=12, n_ckpts=3, seed=0):
    rng = np.random.default_rng(seed)
    directions = [rng.standard_normal((n_train, dim)) for _ in range(n_ckpts)]
    mean_q = rng.uniform(0.01, 1.0, n_train)
    targets = [rng.standard_normal((n_targets, dim)).astype(np.float32) for _ in range(n_ckpts)]
    exact = sum(t.astype(np.float64) @ d.T for t, d in zip(targets, directions, strict=True))
    exact = exact / n_ckpts * mean_q[None, :]  # (n_targets, n_train)
    return AttributionIndex(index_vectors(directions, mean_q)), query_vectors(targets), exact


@pytest.mark.parametrize("k", [1, 5, 70, 500])
def test_helpful_and_harmful_equal_argsort(k):
    index, queries, exact = random_index()
    (best_ids, best), (worst_ids, worst) = brute_force(exact, min(k, 70))
    helpful, harmful = index.helpful(queries, k), index.harmful(queries, k)
    assert helpful.ids.shape == (9, min(k, 70)), "k > n returns all of the training set"
    assert (helpful.ids >= 0).all() and (harmful.ids >= 0).all()
    np.testing.assert_array_equal(helpful.ids, best_ids)
    np.testing.assert_array_equal(harmful.ids, worst_ids)
    np.testing.assert_allclose(helpful.scores, best, rtol=0, atol=SCORE_ATOL)
    np.testing.assert_allclose(harmful.scores, worst, rtol=0, atol=SCORE_ATOL)
    assert (harmful.scores[:, 0] < 0).all(), "harmful scores are reported with their sign"


def test_engine_topk_equals_argsort_of_its_scores(mlp, tmp_path):
    """Different train and target sets, so swapping them would change every shape."""
    train, targets = tiny_data(60, seed=1), tiny_data(11, seed=2)
    result = attribute(
        mlp, checkpoints(2), train, targets, TrakConfig(proj_dim=16), k=8, workdir=tmp_path
    )
    (best_ids, best), (worst_ids, worst) = brute_force(result.scores.astype(np.float64), 8)
    np.testing.assert_array_equal(result.helpful_ids, best_ids)
    np.testing.assert_array_equal(result.harmful_ids, worst_ids)
    scale = np.abs(result.scores).max()
    np.testing.assert_allclose(result.helpful_scores, best, rtol=0, atol=SCORE_ATOL * scale)
    np.testing.assert_allclose(result.harmful_scores, worst, rtol=0, atol=SCORE_ATOL * scale)


def test_save_and_load_round_trip(tmp_path):
    index, queries, _ = random_index()
    index.save(tmp_path / "i.faiss")
    loaded = AttributionIndex.load(tmp_path / "i.faiss")
    a, b = index.helpful(queries, 4), loaded.helpful(queries, 4)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_empty_training_set_is_an_error(mlp):
    with pytest.raises(EmptyTrainingSetError, match="empty training set"):
        AttributionIndex(np.zeros((0, 8), dtype=np.float32))
    empty = tiny_data(0, seed=0)
    with pytest.raises(EmptyTrainingSetError, match="train has no examples"):
        attribute(mlp, checkpoints(1), empty, tiny_data(3, seed=1), TrakConfig(proj_dim=8))


def test_bad_queries_and_k_are_named():
    index, queries, _ = random_index()
    with pytest.raises(ValueError, match=r"queries must have shape \(n_targets, 36\)"):
        index.helpful(queries[:, :5], 3)
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        index.helpful(queries, 0)
