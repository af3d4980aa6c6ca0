"""Feature store: determinism, invariance to batching, resume, and refusing mixed artifacts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import checkpoints, tiny_data

from trak_engine import ConfigMismatchError, MissingCheckpointError, NonFiniteError, TrakConfig
from trak_engine.api import Attributor, featurize, score_features
from trak_engine.errors import DuplicateCheckpointError
from trak_engine.store import FeatureStore

CONFIG = TrakConfig(proj_dim=16, seed=0)


def features(store: FeatureStore, m: int = 0, split: str = "train") -> np.ndarray:
    return np.array(store.load(m, split)[0])


def run(mlp, tmp_path, name, ckpts=None, config=CONFIG, train=None, **options):
    splits = {
        "train": train if train is not None else tiny_data(50, seed=1),
        "test": tiny_data(9, seed=2),
    }
    return featurize(mlp, ckpts or checkpoints(2), splits, config, tmp_path / name, **options)


def test_same_seed_bit_identical_other_seed_differs(mlp, tmp_path):
    a, b = run(mlp, tmp_path, "a"), run(mlp, tmp_path, "b")
    c = run(mlp, tmp_path, "c", config=TrakConfig(proj_dim=16, seed=1))
    assert np.array_equal(features(a), features(b))
    assert not np.allclose(features(a), features(c))
    assert not np.allclose(features(a, 0), features(a, 1)), "a different seed per checkpoint"


def test_batch_size_and_chunking_invariance(mlp, tmp_path):
    base = run(mlp, tmp_path, "base", batch_size=50, chunk_size=50)
    for i, (batch, chunk) in enumerate([(7, 50), (50, 8), (3, 11)]):
        other = run(mlp, tmp_path, f"o{i}", batch_size=batch, chunk_size=chunk)
        for m in (0, 1):
            np.testing.assert_allclose(features(other, m), features(base, m), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                other.load(m, "train")[1], base.load(m, "train")[1], rtol=1e-6
            )


def test_resume_after_interruption_is_identical(mlp, tmp_path, monkeypatch):
    whole = run(mlp, tmp_path, "whole", batch_size=4, chunk_size=8)
    calls = {"n": 0}
    original = FeatureStore.compute

    def interrupted_chunk_fn(chunk_fn):
        def wrapped(start, stop):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt("simulated crash in the middle of featurizing")
            return chunk_fn(start, stop)

        return wrapped

    def compute(self, checkpoint, split, n, k, chunk_fn, chunk_size, progress=None):
        return original(
            self, checkpoint, split, n, k, interrupted_chunk_fn(chunk_fn), chunk_size, progress
        )

    monkeypatch.setattr(FeatureStore, "compute", compute)
    with pytest.raises(KeyboardInterrupt):
        run(mlp, tmp_path, "resumed", batch_size=4, chunk_size=8)
    monkeypatch.setattr(FeatureStore, "compute", original)
    partial = FeatureStore.open(tmp_path / "resumed")
    assert not partial.exists(0, "train")

    computed = []
    monkeypatch.setattr(
        FeatureStore,
        "compute",
        lambda self, c, s, n, k, fn, size, progress=None: original(
            self, c, s, n, k, lambda a, b: computed.append(a) or fn(a, b), size, progress
        ),
    )
    resumed = run(mlp, tmp_path, "resumed", batch_size=4, chunk_size=8)
    assert computed[0] == 24, "resumes at the first chunk not recorded (chunks 0-2 were done)"
    for m in (0, 1):
        for split in ("train", "test"):
            assert np.array_equal(features(resumed, m, split), features(whole, m, split))


def test_store_refuses_another_config_naming_the_field(mlp, tmp_path):
    run(mlp, tmp_path, "s")
    with pytest.raises(ConfigMismatchError, match=r"config.proj_dim: stored 16, now 8"):
        run(mlp, tmp_path, "s", config=TrakConfig(proj_dim=8))
    with pytest.raises(ConfigMismatchError, match=r"config.seed: stored 0, now 4"):
        run(mlp, tmp_path, "s", config=TrakConfig(proj_dim=16, seed=4))


def test_store_refuses_another_dataset_or_checkpoint(mlp, tmp_path):
    run(mlp, tmp_path, "s")
    with pytest.raises(ConfigMismatchError, match=r"splits.train.fingerprint"):
        run(mlp, tmp_path, "s", train=tiny_data(50, seed=99))
    other = checkpoints(3)[1:]
    with pytest.raises(ConfigMismatchError, match=r"checkpoints\[0\]: stored weights"):
        run(mlp, tmp_path, "s", ckpts=other)


def test_lam_is_not_part_of_the_features(mlp, tmp_path):
    store = run(mlp, tmp_path, "s")
    again = run(mlp, tmp_path, "s", config=TrakConfig(proj_dim=16, seed=0, lam=0.3))
    assert np.array_equal(features(store), features(again))


def test_nan_training_example_is_named_and_finished_work_kept(mlp, tmp_path):
    x, y = tiny_data(50, seed=1)
    x[37, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="example 37"):
        run(mlp, tmp_path, "nan", train=(x, y), batch_size=5, chunk_size=10)
    store = FeatureStore.open(tmp_path / "nan")
    progress = store._progress(0, "train")
    assert progress["done"] == [0, 1, 2], "chunks before the bad example are kept"


def test_duplicate_checkpoints_are_refused(mlp, tmp_path):
    state = checkpoints(1)[0]
    with pytest.raises(DuplicateCheckpointError, match="same object"):
        run(mlp, tmp_path, "d", ckpts=[state, state])
    with pytest.raises(DuplicateCheckpointError, match="identical weights"):
        run(mlp, tmp_path, "d", ckpts=[state, copy.deepcopy(state)])


def test_missing_checkpoint_is_named_or_averaged_when_asked(mlp, tmp_path):
    store = run(mlp, tmp_path, "m", ckpts=checkpoints(3))
    (store.path(1, "train", "progress")).unlink()
    with pytest.raises(MissingCheckpointError, match=r"checkpoint\(s\) \[1\] \(of 3\)"):
        Attributor(store, lam=0.0)
    result = score_features(store, 0.0, "test", k=3, allow_partial=True)
    assert result.checkpoints_used == 2


def test_callers_model_is_left_untouched(mlp, tmp_path):
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    run(mlp, tmp_path, "u")
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())


def test_opening_a_store_writes_nothing(mlp, tmp_path):
    store = run(mlp, tmp_path, "r")
    before = store.meta_path.stat().st_mtime_ns
    reopened = FeatureStore.open(tmp_path / "r")
    assert reopened.meta == store.meta
    assert store.meta_path.stat().st_mtime_ns == before
