"""The training map: PCA against numpy's SVD, the stored artifact, its sources and figure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from explorer import maps
from explorer.artifacts import load_explorer_data
from trak_engine.store import FeatureStore

N_TRAIN = 60  # tests/conftest.py SMALL_N_TRAIN
PCA_ATOL = 1e-6


def planted(n: int = 80, widths: tuple[int, ...] = (30, 20), seed: int = 0) -> list[np.ndarray]:
    """Blocks of a rank-2 signal (variances 25 and 4) plus small noise, offset from 0."""
    rng = np.random.default_rng(seed)
    d = sum(widths)
    basis, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    signal = rng.standard_normal((n, 2)) * [5.0, 2.0] @ basis.T  # (n, 2) @ (2, d)
    full = signal + 0.05 * rng.standard_normal((n, d)) + 3.0
    return np.split(full.astype(np.float32), np.cumsum(widths)[:-1], axis=1)


def reference_pca(blocks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Top-2 PC scores and explained fractions from a float64 SVD of the centred matrix."""
    x = np.concatenate(blocks, axis=1).astype(np.float64)
    x -= x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :2] * s[:2], s[:2] ** 2 / (s**2).sum()


def same_up_to_sign(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    for j in range(a.shape[1]):
        sign = np.sign(a[:, j] @ b[:, j])
        np.testing.assert_allclose(a[:, j], sign * b[:, j], atol=atol)


@pytest.mark.parametrize("exact", [True, False])
def test_pca_matches_numpy_svd(exact: bool) -> None:
    blocks = planted()
    coords, explained = maps.pca_2d(blocks, exact=exact)
    expected, fractions = reference_pca(blocks)
    assert coords.shape == (80, 2) and coords.dtype == np.float32
    same_up_to_sign(coords, expected, atol=1e-3)
    np.testing.assert_allclose(explained, fractions, rtol=1e-4)


def test_pca_reads_memory_maps_in_chunks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(maps, "ROW_CHUNK", 7)  # 80 rows: 12 chunks, the last partial
    blocks = []
    for m, block in enumerate(planted()):
        np.save(tmp_path / f"{m}.npy", block)
        blocks.append(np.load(tmp_path / f"{m}.npy", mmap_mode="r"))
    chunked, _ = maps.pca_2d(blocks, exact=False)
    whole, _ = maps.pca_2d(planted(), exact=True)
    np.testing.assert_allclose(chunked, whole, atol=1e-3)


def test_pca_signs_are_deterministic() -> None:
    coords, _ = maps.pca_2d(planted())
    flipped, _ = maps.pca_2d([-b for b in planted()])
    np.testing.assert_allclose(coords, flipped, atol=PCA_ATOL)
    for j in range(2):
        assert coords[np.abs(coords[:, j]).argmax(), j] > 0


def test_pca_edges() -> None:
    # one feature column: the second component does not exist and is 0
    coords, explained = maps.pca_2d([np.arange(5, dtype=np.float32)[:, None]])
    np.testing.assert_allclose(coords[:, 1], 0)
    assert explained == pytest.approx((1.0, 0.0))
    # constant data: no variance to explain
    coords, explained = maps.pca_2d([np.ones((4, 3), np.float32)])
    np.testing.assert_allclose(coords, 0, atol=PCA_ATOL)
    assert explained == (0.0, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        maps.pca_2d([])
    with pytest.raises(ValueError, match=r"same rows, got \[\(4, 3\), \(5, 3\)\]"):
        maps.pca_2d([np.ones((4, 3)), np.ones((5, 3))])


def write_features(workdir: Path, blocks: list[np.ndarray]) -> None:
    """A feature store whose training features are ``blocks`` (one per checkpoint)."""
    n = blocks[0].shape[0]
    store = FeatureStore(workdir / "features", {"splits": {}, "checkpoints": ["a", "b"]})
    for m, block in enumerate(blocks):
        rows = lambda s, e, b=block: (b[s:e], np.ones(e - s, np.float32))  # noqa: E731
        store.compute(m, "train", n, block.shape[1], rows, chunk_size=16)


def test_map_of_the_feature_store(small_artifact: Path) -> None:
    blocks = planted(n=N_TRAIN)
    write_features(small_artifact, blocks)
    result = maps.compute_train_map(small_artifact, N_TRAIN)
    assert (result.source, result.note) == ("features", "")
    same_up_to_sign(result.coords, reference_pca(blocks)[0], atol=1e-3)


def test_map_falls_back_to_the_index_vectors(small_artifact: Path) -> None:
    result = maps.compute_train_map(small_artifact, N_TRAIN)
    assert result.source == "index"
    assert "features unavailable" in result.note and "meta.json is missing" in result.note
    vectors = maps.index_vectors(small_artifact)
    data = load_explorer_data(small_artifact)
    # the index's vectors reproduce the scores: queries . v_i == scores
    np.testing.assert_allclose(data.queries @ vectors.T, data.scores, rtol=1e-5, atol=1e-5)
    same_up_to_sign(result.coords, reference_pca([vectors])[0], atol=1e-4)


def test_map_refuses_features_of_another_size(small_artifact: Path) -> None:
    write_features(small_artifact, planted(n=N_TRAIN + 1))
    blocks, source, note = maps.training_blocks(small_artifact, N_TRAIN)
    assert source == "index" and f"[{N_TRAIN + 1}] training rows" in note
    assert blocks[0].shape[0] == N_TRAIN


def test_map_is_stored_and_reused(small_artifact: Path, monkeypatch) -> None:
    assert not maps.train_map_exists(small_artifact, N_TRAIN)
    first = maps.train_map(small_artifact, N_TRAIN)
    assert maps.train_map_exists(small_artifact, N_TRAIN)
    assert np.load(small_artifact / "train_map.npy").shape == (N_TRAIN, 2)
    meta = json.loads((small_artifact / "train_map.json").read_text())
    assert meta["source"] == "index" and meta["n_train"] == N_TRAIN

    def fail(*args, **kwargs):
        raise AssertionError("a current stored map must not be recomputed")

    monkeypatch.setattr(maps, "compute_train_map", fail)
    again = maps.train_map(small_artifact, N_TRAIN)
    np.testing.assert_array_equal(again.coords, first.coords)
    assert again.explained == pytest.approx(first.explained)
    # rebuilt artifacts (a new explorer.json) make the stored map stale
    stamp = (small_artifact / "explorer.json").stat().st_mtime_ns
    os.utime(small_artifact / "explorer.json", ns=(stamp + 10**9, stamp + 10**9))
    assert not maps.train_map_exists(small_artifact, N_TRAIN)
    assert not maps.train_map_exists(small_artifact, N_TRAIN + 1)


def test_unwritable_workdir_still_gives_a_map(small_artifact: Path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(maps, "save_npy_atomic", refuse)
    result = maps.train_map(small_artifact, N_TRAIN)
    assert result.coords.shape == (N_TRAIN, 2)
    assert not (small_artifact / "train_map.npy").exists()


def test_selected_train_ids() -> None:
    points = [
        {"customdata": 7, "curve_number": 0},
        {"customdata": [3], "curve_number": 0},
        {"customdata": 7, "curve_number": 2},  # the same point under a top-k overlay
        {"x": 1.0},  # no customdata: not a training point
    ]
    assert maps.selected_train_ids(points) == [7, 3]
    assert maps.selected_train_ids([]) == []


def test_strongest_first() -> None:
    scores = np.array([0.5, -2.0, 0.1, 2.0, -0.3])
    assert maps.strongest_first([0, 1, 2, 3, 4], scores) == [1, 3, 0, 4, 2]  # tie: order kept
    assert maps.strongest_first([4, 0, 2], None) == [0, 2, 4]
    assert maps.strongest_first([], scores) == []


def test_map_figure() -> None:
    rng = np.random.default_rng(0)
    coords = rng.standard_normal((20, 2))
    labels = np.arange(20) % 4
    names = ["a", "b", "c", "d"]
    by_label = maps.map_figure(coords, labels, names)
    assert [t.name for t in by_label.data] == ["label a", "label b", "label c", "label d"]
    assert sorted(i for t in by_label.data for i in t.customdata) == list(range(20))
    for trace in by_label.data:  # each point sits at its own coordinates
        np.testing.assert_allclose(trace.x, coords[trace.customdata, 0])

    scores = rng.standard_normal(20)
    fig = maps.map_figure(coords, labels, names, scores, helpful=[4, 9], harmful=[2])
    base, harmful, helpful = fig.data
    assert sorted(base.customdata) == list(range(20))
    np.testing.assert_allclose(base.marker.color, scores[base.customdata])
    assert base.marker.cmid == 0 and base.marker.cmin == -base.marker.cmax
    assert list(helpful.customdata) == [4, 9] and list(harmful.customdata) == [2]
    assert "score" in helpful.hovertext[0] and "train #4 · label a" in helpful.hovertext[0]
    assert fig.layout.dragmode == "lasso"
    with pytest.raises(ValueError, match=r"\(n_train, 2\) = \(20, 2\), got \(20, 3\)"):
        maps.map_figure(np.zeros((20, 3)), labels, names)
    with pytest.raises(ValueError, match=r"scores must have shape \(20,\), got \(19,\)"):
        maps.map_figure(coords, labels, names, scores[:19])
