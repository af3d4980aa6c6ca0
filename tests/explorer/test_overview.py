"""Dataset summary, accuracy, confusion matrix, class influence and build info of the Overview."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from explorer import overview as ov
from explorer.artifacts import ExplorerData, load_explorer_data

LABELS = np.array([0, 0, 1, 1, 1, 2])
PREDS = np.array([0, 1, 1, 1, 2, 2])


@pytest.fixture
def data(small_artifact: Path) -> ExplorerData:
    return load_explorer_data(small_artifact)


def test_confusion_matrix_and_accuracy() -> None:
    confusion = ov.confusion_matrix(LABELS, PREDS, 4)
    expected = [[1, 1, 0, 0], [0, 2, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(confusion, expected)
    assert ov.accuracy(LABELS, PREDS) == pytest.approx(4 / 6)
    per_class = ov.per_class_accuracy(confusion)
    np.testing.assert_allclose(per_class[:3], [1 / 2, 2 / 3, 1.0])
    assert np.isnan(per_class[3])  # no test example of class 3: undefined, not 0
    assert np.isnan(ov.accuracy(np.array([]), np.array([])))


def test_label_checks() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got values in \[0, 2\]"):
        ov.class_counts(LABELS, 2)
    with pytest.raises(ValueError, match=r"preds must lie in \[0, 3\)"):
        ov.confusion_matrix(np.zeros(2, int), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match=r"same shape, got \(6,\) and \(5,\)"):
        ov.confusion_matrix(LABELS, PREDS[:5], 3)


def test_class_influence_against_a_loop(monkeypatch) -> None:
    monkeypatch.setattr(ov, "SCORE_ROW_CHUNK", 3)  # 7 test rows: chunks of 3, 3, 1
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((7, 9))
    train_labels = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1])
    test_labels = np.array([2, 1, 0, 1, 2, 2, 0])
    influence = ov.class_influence(scores, train_labels, test_labels, 4)
    assert influence.shape == (4, 4)
    for a in range(3):
        for b in range(3):
            block = scores[np.ix_(test_labels == b, train_labels == a)]
            assert influence[a, b] == pytest.approx(block.mean(), rel=1e-12)
    # class 3 has no examples on either side: no mean exists
    assert np.isnan(influence[3]).all() and np.isnan(influence[:, 3]).all()
    with pytest.raises(ValueError, match=r"scores has shape \(7, 9\), train_labels 8"):
        ov.class_influence(scores, train_labels[:8], test_labels, 4)


def test_class_influence_reads_memory_maps(tmp_path: Path, data: ExplorerData) -> None:
    np.save(tmp_path / "scores.npy", data.scores)
    mapped = np.load(tmp_path / "scores.npy", mmap_mode="r")
    args = (data.train_labels, data.test_labels, 10)
    np.testing.assert_allclose(
        ov.class_influence(mapped, *args), ov.class_influence(np.asarray(data.scores), *args)
    )


def test_dataset_summary(data: ExplorerData) -> None:
    summary = ov.dataset_summary(data)
    assert (summary.n_train, summary.n_test, summary.n_classes, summary.n_flipped) == (
        60,
        30,
        10,
        3,
    )
    counts = summary.counts.set_index("class")
    assert counts["test"].tolist() == [3] * 10
    assert counts["train (true labels)"].tolist() == [6] * 10
    # flips (+1 mod 10) at training ids 3, 17, 42: true classes 3, 7, 2 lose one each
    expected = [6, 6, 5, 6, 7, 6, 6, 5, 7, 6]
    assert counts["train"].tolist() == expected


FULL_INFO = {
    "task": "MNIST",
    "demo_config": {"model": "cnn", "n_checkpoints": 3, "epochs": 4, "flip_fraction": 0.05},
    "trak_config": {"proj_dim": 2048, "lam": 0.01, "proj_type": "gaussian", "seed": 0},
    "n_params": 28874,
    "kernel": [{"lam_abs": 12.5}, {"lam_abs": 12.1}, {"lam_abs": 12.2}],
    "checkpoint_test_accuracy": [0.964, 0.95, 0.958],
    "timings": {
        "train_s": [10.0, 11.0, 12.5],
        "featurize_s": [23.0, 68.0, 35.0],
        "scores_and_index_s": 15.5,
        "total_s": 200.0,
    },
}


def test_artifact_settings() -> None:
    settings = dict(ov.artifact_settings(FULL_INFO).values.tolist())
    assert settings["checkpoints"] == "3"
    assert settings["projection dimension k"] == "2,048"
    assert settings["λ (relative)"] == "0.01"
    assert settings["λ (absolute, per checkpoint)"] == "12.5, 12.1, 12.2"
    assert settings["projection"] == "gaussian"
    assert settings["parameters"] == "28,874"
    assert settings["test accuracy per checkpoint"] == "96.4%, 95.0%, 95.8%"
    # nothing recorded: every value says so, and the checkpoint count falls back to the kernel
    bare = dict(ov.artifact_settings({}).values.tolist())
    assert set(bare.values()) == {ov.NOT_RECORDED}
    assert dict(ov.artifact_settings({"kernel": [{}, {}]}).values.tolist())["checkpoints"] == "2"


def test_stage_timings() -> None:
    timings = ov.stage_timings(FULL_INFO)
    assert timings["stage"].tolist() == [stage for _, stage in ov.STAGES]
    np.testing.assert_allclose(timings["seconds"], [33.5, 126.0, 15.5])
    assert timings["detail"][0] == "per checkpoint: 10.0 s, 11.0 s, 12.5 s"
    assert timings["detail"][2] == ""
    assert ov.total_seconds(FULL_INFO) == 200.0
    # /tmp/demo1 style: no train_s, no total
    partial = ov.stage_timings({"timings": {"scores_and_index_s": 3.0}})
    assert partial["stage"].tolist() == ["kernel, scores and index"]
    assert ov.unrecorded_stages({"timings": {"scores_and_index_s": 3.0}}) == [
        "train checkpoints",
        "featurize (gradients + projection)",
    ]
    assert ov.unrecorded_stages(FULL_INFO) == []
    assert ov.stage_timings({}).empty and ov.total_seconds({}) is None


def test_influence_figure_is_centred_and_scaled() -> None:
    influence = np.array([[3.3e-4, -4e-5], [1e-5, 2e-4]])
    fig = ov.influence_figure(influence, ["a", "b"])
    (heatmap,) = fig.data
    assert ov.display_exponent(influence) == -5
    np.testing.assert_allclose(heatmap.z, influence * 1e5)
    np.testing.assert_allclose(heatmap.customdata, influence)
    assert heatmap.zmid == 0 and heatmap.zmax == pytest.approx(4.0) and heatmap.zmin == -4.0
    assert "×1e-5" in heatmap.colorbar.title.text
    whole = ov.influence_figure(influence, ["a", "b"], fit_off_diagonal=False).data[0]
    assert whole.zmax == pytest.approx(33.0) and whole.zmin == pytest.approx(-33.0)
    assert ov.display_exponent(np.array([np.nan, 0.0])) == 0


def test_confusion_figure_colours_by_row_share() -> None:
    confusion = ov.confusion_matrix(LABELS, PREDS, 3)
    (heatmap,) = ov.confusion_figure(confusion, ["a", "b", "c"]).data
    np.testing.assert_array_equal(heatmap.text, confusion)
    np.testing.assert_allclose(np.asarray(heatmap.z)[1], [0, 2 / 3, 1 / 3])
