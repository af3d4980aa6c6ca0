"""Mislabel triage: metrics on hand-computed cases, TRAK signals against the closed form,
neighbours against brute force, and the persisted triage decisions."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from tiny_demo import TINY

from explorer import mislabel as ml
from trak_engine.api import Attributor
from trak_engine.store import FeatureStore

FLOAT32_RTOL = 1e-4
"""Index vectors are float32; their dot products are compared with a float64 closed form."""


# --- metrics ----------------------------------------------------------------------------


def test_roc_auc_matches_hand_computed_pairs_with_ties():
    # positives score 2 and 3, negatives 1 and 2: pairs (2,1)=1, (2,2)=1/2, (3,1)=1, (3,2)=1
    scores = np.array([1.0, 2.0, 2.0, 3.0])
    assert ml.roc_auc(scores, np.array([False, True, False, True])) == pytest.approx(3.5 / 4)
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    assert ml.roc_auc(scores, np.array([False, False, True, True])) == pytest.approx(0.75)
    assert ml.roc_auc(np.ones(5), np.array([True, False, True, False, False])) == 0.5
    assert ml.roc_auc(-scores, np.array([False, False, True, True])) == pytest.approx(0.25)


def test_precision_and_recall_at_k_by_hand():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    positive = np.array([True, False, True, False, False])
    assert [ml.precision_at_k(scores, positive, k) for k in (1, 2, 3)] == [1.0, 0.5, 2 / 3]
    assert ml.recall_at_k(scores, positive, 1) == 0.5
    assert ml.recall_at_k(scores, positive, 3) == 1.0
    assert ml.precision_at_k(scores, positive, 10) == 2 / 5  # k capped at n
    # a tie goes to the smaller id
    assert ml.precision_at_k(np.array([1.0, 1.0, 0.0]), np.array([False, True, False]), 1) == 0


def test_detection_metrics_table_uses_the_given_flips():
    scores = {"good": np.array([3.0, 2.0, 1.0, 0.0]), "bad": np.array([0.0, 1.0, 2.0, 3.0])}
    flips = np.array([True, False, False, False])
    table = ml.detection_metrics(scores, flips, ks=(1, 2))
    assert list(table.columns) == [
        "precision@1",
        "precision@2",
        "recall@1",
        "recall@2",
        "roc_auc",
    ]
    assert table.loc["good"].tolist() == [1.0, 0.5, 1.0, 1.0, 1.0]
    assert table.loc["bad"].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0]
    other = ml.detection_metrics(scores, flips[::-1].copy(), ks=(1,))
    assert other.loc["bad", "roc_auc"] == 1.0


def test_metric_errors_name_the_problem():
    scores, flips = np.arange(4.0), np.array([True, False, True, False])
    with pytest.raises(ValueError, match="needs positives and negatives; received 0 and 4"):
        ml.roc_auc(scores, np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="recall needs at least one positive"):
        ml.recall_at_k(scores, np.zeros(4, dtype=bool), 2)
    with pytest.raises(ValueError, match=r"same length; received shapes \(4,\) and \(3,\)"):
        ml.precision_at_k(scores, flips[:3], 2)
    with pytest.raises(TypeError, match="is_positive must be a bool array; received dtype int"):
        ml.roc_auc(scores, flips.astype(int))
    with pytest.raises(ValueError, match="scores contain NaN or inf"):
        ml.roc_auc(np.array([0.0, np.nan, 1.0, 2.0]), flips)
    with pytest.raises(ValueError, match="k must be an int >= 1; received 0"):
        ml.precision_at_k(scores, flips, 0)


# --- signals on hand-made scores --------------------------------------------------------


def test_class_harms_by_hand(caplog):
    scores = np.array(  # (4 test, 3 train)
        [[1.0, -2.0, 0.0], [3.0, -4.0, 2.0], [-5.0, 1.0, 4.0], [0.5, -1.0, -6.0]]
    )
    test_labels = np.array([0, 0, 1, 2])
    means = ml.class_mean_scores(scores, test_labels, n_classes=4)
    np.testing.assert_allclose(means[:3], [[2.0, -3.0, 1.0], [-5.0, 1.0, 4.0], [0.5, -1.0, -6.0]])
    assert np.isnan(means[3]).all()
    train_labels = np.array([0, 1, 3])
    with caplog.at_level(logging.WARNING, logger="explorer.mislabel"):
        own = ml.own_class_harm(means, train_labels)
    np.testing.assert_allclose(own, [-2.0, -1.0, 0.0])
    assert "no test examples of class(es) [3]" in caplog.text
    harm, cls = ml.other_class_harm(means, train_labels)
    np.testing.assert_allclose(harm, [5.0, 3.0, 6.0])
    np.testing.assert_array_equal(cls, [1, 0, 2])


def test_rank_average_by_hand():
    a, b = np.array([10.0, 20.0, 20.0, 5.0]), np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(ml.rank_average(a, b), [(2 + 1) / 8, (3.5 + 2) / 8, 6.5 / 8, 5 / 8])
    with pytest.raises(ValueError, match="rank_average needs at least one signal"):
        ml.rank_average()
    with pytest.raises(ValueError, match="signal with NaN or inf"):
        ml.rank_average(np.array([1.0, np.inf]))


# --- signals on a built demo ------------------------------------------------------------


def test_self_influence_matches_the_closed_form(tiny_demo):
    workdir, data = tiny_demo
    store = FeatureStore.open(workdir / "features")
    attributor = Attributor(store, TINY.lam)
    feats = [np.asarray(store.load(m, "train")[0], dtype=np.float64) for m in attributor.used]
    # (1/M) sum_m phi_m,i . K_m^-1 phi_m,i, times Qbar_i: (n_train,)
    pairs = zip(feats, attributor.directions, strict=True)
    per_ckpt = [np.einsum("nk,nk->n", f, d) for f, d in pairs]
    expected = np.mean(per_ckpt, axis=0) * attributor.mean_q
    vectors = ml.load_index_vectors(workdir)
    got = ml.self_influence(ml.load_train_queries(workdir, vectors.shape[1]), vectors)
    np.testing.assert_allclose(got, expected, rtol=FLOAT32_RTOL, atol=1e-7 * np.abs(expected).max())
    with pytest.raises(ValueError, match=r"same shape; received \(80, 64\) and \(79, 64\)"):
        ml.self_influence(np.zeros((80, 64)), vectors[:79])


def test_compute_signals_columns_and_baselines(tiny_demo):
    workdir, data = tiny_demo
    signals = ml.compute_signals(workdir, data)
    assert len(signals) == TINY.n_train and signals.index.name == "train_id"
    np.testing.assert_array_equal(signals["flipped"], data.flipped)
    probs = ml.ensemble_probabilities(workdir, data.train_images)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    labels = data.train_labels
    p_label = probs[np.arange(len(labels)), labels]
    np.testing.assert_allclose(signals["loss"], -np.log(p_label))
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -1.0
    margin = p_label - others.max(axis=1)  # cleanlab's normalized margin, before (x + 1) / 2
    np.testing.assert_allclose(signals["cleanlab_quality"], (margin + 1) / 2, atol=1e-6)
    np.testing.assert_allclose(
        signals["suspicion"], ml.rank_average(signals.self_influence, signals.other_class_harm)
    )
    table = ml.detection_metrics(ml.detector_scores(signals), data.flipped, ks=(5,))
    assert list(table.index) == list(ml.DETECTORS)
    assert table["roc_auc"].between(0, 1).all()


def test_missing_demo_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no attribution index at"):
        ml.load_index_vectors(tmp_path)
    with pytest.raises(FileNotFoundError, match="demo-config.json is missing"):
        ml.ensemble_probabilities(tmp_path, np.zeros((1, 28, 28), dtype=np.uint8))


# --- neighbours -------------------------------------------------------------------------


def test_neighbors_match_brute_force_cosine():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((30, 7)).astype(np.float32)
    feats[4] = 0.0
    neighbors = ml.TrainNeighbors(feats)
    for i in (0, 11, 29):
        expected = [
            float(feats[i] @ feats[j] / np.linalg.norm(feats[i]) / np.linalg.norm(feats[j]))
            if j != 4
            else 0.0
            for j in range(30)
        ]
        order = [j for j in np.argsort(-np.array(expected), kind="stable") if j != i][:5]
        ids, sims = neighbors.similar(i, 5)
        np.testing.assert_array_equal(ids, order)
        np.testing.assert_allclose(sims, np.array(expected)[order], rtol=1e-5)
    ids, _ = neighbors.similar(3, 100)
    assert len(ids) == 29 and 3 not in ids


def test_neighbor_errors():
    with pytest.raises(ValueError, match=r"features must be \(n_train >= 2, dim\)"):
        ml.TrainNeighbors(np.zeros((1, 3)))
    neighbors = ml.TrainNeighbors(np.eye(3))
    with pytest.raises(IndexError, match=r"train_id must be in \[0, 3\); received 3"):
        neighbors.similar(3, 1)
    with pytest.raises(ValueError, match="k must be an int >= 1; received 0"):
        neighbors.similar(0, 0)


# --- triage -----------------------------------------------------------------------------

LABELS = np.array([0, 1, 2, 3, 4, 5], dtype=np.int64)


def test_triage_decisions_survive_a_restart(tmp_path):
    path = tmp_path / "work" / "triage.csv"
    book = ml.TriageBook(path, LABELS, n_classes=10)
    book.decide(1, "relabel", new_label=7, note="looks like a 7, says 'one'")
    book.decide(2, "exclude")
    book.decide(3, "keep")
    book.decide(2, "keep")  # replaces the earlier decision
    book.undo(3)
    book.undo(5)  # nothing to undo
    assert [p.name for p in path.parent.iterdir()] == ["triage.csv"]  # no temporary left
    again = ml.TriageBook(path, LABELS, n_classes=10)
    assert again.decisions == book.decisions
    assert again.get(1).new_label == 7 and again.get(1).note == "looks like a 7, says 'one'"
    assert again.get(2).action == "keep" and again.get(3) is None
    labels, keep = again.cleaned_labels()
    np.testing.assert_array_equal(labels, [0, 7, 2, 3, 4, 5])
    assert keep.all()


def test_triage_export_and_two_books_on_one_file(tmp_path):
    path = tmp_path / "triage.csv"
    first, second = (ml.TriageBook(path, LABELS, 10) for _ in range(2))
    first.decide(0, "exclude")
    second.decide(4, "relabel", 9)  # re-reads the file: the first book's decision stays
    first.reload()
    frame = first.to_frame()
    assert frame[["train_id", "label", "action"]].values.tolist() == [
        [0, 0, "exclude"],
        [4, 4, "relabel"],
    ]
    assert frame["new_label"].isna().tolist() == [True, False] and frame["new_label"][1] == 9
    exported = pd.read_csv(first.export_csv(tmp_path / "out" / "export.csv"))
    assert exported["train_id"].tolist() == [0, 4] and exported["new_label"].iloc[1] == 9
    labels, keep = first.cleaned_labels()
    assert labels[4] == 9 and keep.tolist() == [False, True, True, True, True, True]


def test_triage_validation_errors(tmp_path):
    book = ml.TriageBook(tmp_path / "triage.csv", LABELS, n_classes=10)
    with pytest.raises(ValueError, match=r"action must be one of \('keep', 'relabel', 'exclude'"):
        book.decide(0, "delete")
    with pytest.raises(ValueError, match=r"train_id must be an int in \[0, 6\); received 6"):
        book.decide(6, "keep")
    with pytest.raises(ValueError, match="relabel needs new_label, an int class id; received None"):
        book.decide(0, "relabel")
    with pytest.raises(ValueError, match=r"new_label must be in \[0, 10\); received 10"):
        book.decide(0, "relabel", 10)
    with pytest.raises(ValueError, match="new_label 2 is already the label of training example 2"):
        book.decide(2, "relabel", 2)
    with pytest.raises(ValueError, match="new_label is only for action 'relabel'"):
        book.decide(0, "exclude", 3)
    assert not (tmp_path / "triage.csv").exists()


def test_triage_refuses_a_damaged_file(tmp_path):
    path = tmp_path / "triage.csv"
    path.write_text("id,what\n1,keep\n")
    with pytest.raises(ValueError, match="must have the header train_id,action,new_label"):
        ml.TriageBook(path, LABELS, 10)
    path.write_text(",".join(ml.TRIAGE_COLUMNS) + "\n1,keep,,,\n2,relabel,x,,\n")
    with pytest.raises(ValueError, match="triage.csv, line 3: invalid literal for int"):
        ml.TriageBook(path, LABELS, 10)
