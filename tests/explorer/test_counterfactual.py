"""Counterfactual retraining on a tiny demo: recipe reproduces the checkpoints, margins and
flags are consistent, random removals are seeded, progress and cancellation work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_demo import TINY

from explorer import counterfactual as cf
from explorer.datasets import to_tensor


@pytest.fixture(scope="module")
def result(tiny_demo):
    workdir, data = tiny_demo
    calls = []
    out = cf.run_counterfactual(
        workdir, [3, 7], k=5, n_seeds=2, data=data, progress=lambda d, t: calls.append((d, t))
    )
    return out, calls


def test_recipe_without_removal_reproduces_the_saved_checkpoints(tiny_demo):
    workdir, data = tiny_demo
    x, y = to_tensor(data.train_images), torch.as_tensor(data.train_labels)
    for m, saved in enumerate(cf.load_checkpoints(workdir, TINY)):
        state = cf.train_without(TINY, x, y, np.array([], dtype=np.int64), TINY.train_seed + m)
        assert all(torch.equal(state[name], saved[name]) for name in saved)


def test_removed_examples_have_no_effect_on_training(tiny_demo):
    _, data = tiny_demo
    x, y = to_tensor(data.train_images), torch.as_tensor(data.train_labels)
    removed = np.array([0, 5, 9])
    state = cf.train_without(TINY, x, y, removed, seed=0)
    garbage_x, garbage_y = x.clone(), y.clone()
    garbage_x[removed] = 100.0
    garbage_y[removed] = (garbage_y[removed] + 1) % 10
    other = cf.train_without(TINY, garbage_x, garbage_y, removed, seed=0)
    assert all(torch.equal(state[name], other[name]) for name in state)
    full = cf.train_without(TINY, x, y, np.array([], dtype=np.int64), seed=0)
    assert not all(torch.equal(state[name], full[name]) for name in state)


def test_emptied_batches_still_advance_the_schedule(tiny_demo):
    _, data = tiny_demo
    x, y = to_tensor(data.train_images), torch.as_tensor(data.train_labels)
    calls = []
    state = cf.train_without(TINY, x, y, np.arange(1, 80), 0, lambda d, t: calls.append((d, t)))
    assert calls[-1] == (2, 2)  # 80 examples, batches of 64: two steps, one of them empty
    assert all(torch.isfinite(t).all() for t in state.values())


def test_runs_table_is_consistent(tiny_demo, result):
    workdir, data = tiny_demo
    out, _ = result
    runs = out.runs
    assert runs[["test_id", "seed"]].values.tolist() == [[3, 0], [3, 1], [7, 0], [7, 1]]
    np.testing.assert_allclose(runs.top_k_change, runs.top_k_margin - runs.baseline_margin)
    np.testing.assert_allclose(runs.random_change, runs.random_margin - runs.baseline_margin)
    assert (runs.top_k_flips == (runs.top_k_pred != runs.baseline_pred)).all()
    assert (runs.label == data.test_labels[runs.test_id]).all()
    # the baseline of seed m is checkpoint m, evaluated on the target with its true label
    state = cf.load_checkpoints(workdir, TINY)[1]
    tx, ty = to_tensor(data.test_images[[3, 7]]), torch.as_tensor(data.test_labels[[3, 7]])
    margins, preds = cf.target_margins(TINY, state, tx, ty)
    row = runs[runs.seed == 1]
    np.testing.assert_allclose(row.baseline_margin, margins, rtol=1e-12)
    np.testing.assert_array_equal(row.baseline_pred, preds)
    # the removed ids are the target's top-k helpful ids
    np.testing.assert_array_equal(out.top_k_ids[7], np.argsort(-data.scores[7], kind="stable")[:5])


def test_summary_means_the_runs(result):
    out, _ = result
    summary = out.summary.set_index("test_id")
    for t in (3, 7):
        rows = out.runs[out.runs.test_id == t]
        assert summary.loc[t, "mean_top_k_change"] == pytest.approx(rows.top_k_change.mean())
        assert summary.loc[t, "mean_random_change"] == pytest.approx(rows.random_change.mean())
        assert summary.loc[t, "n_seeds"] == 2
        assert summary.loc[t, "top_k_flips"] == rows.top_k_flips.sum()


def test_progress_counts_steps_of_every_model(result):
    out, calls = result
    steps = TINY.epochs * -(-TINY.n_train // cf.BATCH_SIZE)  # removed examples keep their steps
    total = 2 * (2 + 1) * steps  # seeds x (targets + the shared random model)
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == list(range(1, total + 1))
    assert out.seconds > 0


def test_helpful_ids_overall_and_within_the_label(tiny_demo):
    _, data = tiny_demo
    scores = np.asarray(data.scores[4], dtype=np.float64)
    np.testing.assert_array_equal(
        cf.helpful_ids(data, 4, 6, same_label=False), np.argsort(-scores, kind="stable")[:6]
    )
    ids = cf.helpful_ids(data, 4, 3, same_label=True)
    assert (data.train_labels[ids] == data.test_labels[4]).all()
    same = data.train_labels == data.test_labels[4]
    assert scores[ids].min() >= scores[same & ~np.isin(np.arange(len(scores)), ids)].max()
    n_same = int(same.sum())
    with pytest.raises(ValueError, match=f"k={n_same + 1} but only {n_same} training examples"):
        cf.helpful_ids(data, 4, n_same + 1, same_label=True)


def test_same_label_removal_is_recorded(tiny_demo):
    workdir, data = tiny_demo
    out = cf.run_counterfactual(workdir, [4], k=3, n_seeds=1, same_label=True, data=data)
    assert out.same_label and (data.train_labels[out.top_k_ids[4]] == data.test_labels[4]).all()


def test_random_removals_are_seeded():
    a, b = cf.random_removal(100, 10, 0), cf.random_removal(100, 10, 1)
    np.testing.assert_array_equal(a, cf.random_removal(100, 10, 0))
    assert len(set(a.tolist())) == 10 and not np.array_equal(a, b)


def test_cancel_stops_the_run(tiny_demo):
    workdir, data = tiny_demo
    seen = []
    with pytest.raises(cf.CounterfactualCancelled, match="cancelled during model 2 of"):
        cf.run_counterfactual(
            workdir,
            [0],
            k=3,
            n_seeds=1,
            data=data,
            progress=lambda d, t: seen.append(d),
            cancel=lambda: len(seen) >= 2,
        )


def test_bad_requests_are_refused(tiny_demo, tmp_path):
    workdir, data = tiny_demo
    with pytest.raises(ValueError, match=r"test_ids must be in \[0, 20\); received \[20\]"):
        cf.run_counterfactual(workdir, [20], k=3, data=data)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 79\]"):
        cf.run_counterfactual(workdir, [0], k=80, data=data)
    with pytest.raises(ValueError, match=r"n_seeds must be an int in \[1, 2\].*received 3"):
        cf.run_counterfactual(workdir, [0], k=3, n_seeds=3, data=data)
    with pytest.raises(TypeError, match=r"test_ids must be ints; received \[1.5\]"):
        cf.run_counterfactual(workdir, [1.5], k=3, data=data)
    with pytest.raises(ValueError, match="test_ids must name at least one test example"):
        cf.run_counterfactual(workdir, [], k=3, data=data)
    with pytest.raises(FileNotFoundError, match="demo-config.json is missing"):
        cf.run_counterfactual(tmp_path, [0], k=3, data=data)
    with pytest.raises(FileNotFoundError, match="checkpoint 0 is missing"):
        cf.load_checkpoints(tmp_path, TINY)
