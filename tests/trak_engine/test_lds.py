"""Tests for trak_engine.lds: subsets, resumable ground truth and the LDS itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from trak_engine.errors import ConfigMismatchError, NonFiniteError
from trak_engine.lds import (
    LDSResult,
    compute_ground_truth,
    ground_truth_exists,
    lds,
    load_ground_truth,
    make_subsets,
    spearman_columns,
)

EXACT_ATOL = 1e-12  # closed-form answers computed in float64
SCIPY_ATOL = 1e-12  # our vectorised Spearman against scipy's


# ----------------------------------------------------------------------------------------------
# make_subsets
# ----------------------------------------------------------------------------------------------


def test_make_subsets_shape_size_and_seed() -> None:
    masks = make_subsets(n_train=20, n_subsets=7, alpha=0.3, seed=5)
    assert masks.shape == (7, 20) and masks.dtype == np.bool_
    np.testing.assert_array_equal(masks.sum(axis=1), np.full(7, 6))
    np.testing.assert_array_equal(masks, make_subsets(20, 7, 0.3, seed=5))
    assert not np.array_equal(masks, make_subsets(20, 7, 0.3, seed=6))
    assert len({row.tobytes() for row in masks}) > 1  # rows are not all the same subset


def test_make_subsets_uses_python_round() -> None:
    # round(0.5 * 5) == round(2.5) == 2 (half to even); round(0.5 * 7) == round(3.5) == 4.
    assert make_subsets(5, 3, 0.5).sum(axis=1).tolist() == [2, 2, 2]
    assert make_subsets(7, 3, 0.5).sum(axis=1).tolist() == [4, 4, 4]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 0.0}, ValueError, r"alpha must be a float in \(0, 1\), got 0.0"),
        ({"alpha": 1.5}, ValueError, r"alpha must be a float in \(0, 1\), got 1.5"),
        ({"alpha": 0.01}, ValueError, r"gives subsets of 0 examples"),
        ({"alpha": 0.99}, ValueError, r"gives subsets of 10 examples"),
        ({"n_subsets": 1}, ValueError, r"n_subsets must be an int >= 2, got 1"),
        ({"n_train": 10.0}, TypeError, r"n_train must be an int >= 2, got float"),
        ({"alpha": "half"}, TypeError, r"alpha must be a float"),
    ],
)
def test_make_subsets_rejects_bad_arguments(
    kwargs: dict, error: type[Exception], match: str
) -> None:
    args = {"n_train": 10, "n_subsets": 4, "alpha": 0.5} | kwargs
    with pytest.raises(error, match=match):
        make_subsets(**args)


# ----------------------------------------------------------------------------------------------
# lds
# ----------------------------------------------------------------------------------------------

# Hand-worked example: 3 training examples, 4 subsets, 2 targets.
HAND_MASKS = np.array(
    [
        [1, 1, 0],
        [1, 0, 1],
        [0, 1, 1],
        [1, 0, 0],
    ],
    dtype=bool,
)
HAND_SCORES = np.array(
    [
        [1.0, 2.0, 4.0],  # target 0
        [1.0, 1.0, 0.0],  # target 1
    ]
)
HAND_MARGINS = np.array(
    [
        [0.1, 2.0],
        [0.4, 1.0],
        [0.3, 3.0],
        [0.2, 0.0],
    ]
)
# Target 0: predicted = masks @ [1, 2, 4] = [3, 5, 6, 1] -> ranks [2, 3, 4, 1];
#   margins [0.1, 0.4, 0.3, 0.2] -> ranks [1, 4, 3, 2]; d = [1, -1, 1, -1], sum d^2 = 4;
#   no ties, so rho = 1 - 6 * 4 / (4 * (16 - 1)) = 1 - 24 / 60 = 0.6.
# Target 1: predicted = masks @ [1, 1, 0] = [2, 1, 1, 1] -> three-way tie at rank (1+2+3)/3 = 2,
#   ranks [4, 2, 2, 2]; margins [2, 1, 3, 0] -> ranks [3, 2, 4, 1]. Pearson of the ranks:
#   centred (mean 2.5) [1.5, -0.5, -0.5, -0.5] and [0.5, -0.5, 1.5, -1.5];
#   sum of products = 0.75 + 0.25 - 0.75 + 0.75 = 1; sums of squares 3 and 5;
#   rho = 1 / sqrt(15).
HAND_RHO = np.array([0.6, 1.0 / np.sqrt(15.0)])


def test_lds_matches_hand_computed_example() -> None:
    result = lds(HAND_SCORES, HAND_MASKS, HAND_MARGINS, n_bootstrap=200)
    assert isinstance(result, LDSResult)
    np.testing.assert_allclose(result.per_target, HAND_RHO, rtol=0, atol=EXACT_ATOL)
    assert result.mean == pytest.approx(HAND_RHO.mean(), abs=EXACT_ATOL)
    assert (result.n_targets, result.n_subsets, result.n_excluded) == (2, 4, 0)
    assert result.per_target.dtype == np.float64
    assert result.ci_level == 0.95


def test_lds_swapped_target_order_permutes_per_target() -> None:
    # Targets are matched by position: swapping rows of scores without the margins columns
    # must change the answer, swapping both must permute it.
    both = lds(HAND_SCORES[::-1], HAND_MASKS, HAND_MARGINS[:, ::-1], n_bootstrap=10)
    np.testing.assert_allclose(both.per_target, HAND_RHO[::-1], rtol=0, atol=EXACT_ATOL)
    one = lds(HAND_SCORES[::-1], HAND_MASKS, HAND_MARGINS, n_bootstrap=10)
    assert not np.allclose(one.per_target, HAND_RHO)


def test_spearman_ties_match_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(30, 6)).astype(float)  # many ties
    y = rng.integers(0, 3, size=(30, 6)).astype(float)
    ours = spearman_columns(x, y)
    for j in range(6):
        expected = spearmanr(x[:, j], y[:, j]).statistic
        assert ours[j] == pytest.approx(expected, abs=SCIPY_ATOL)


def test_spearman_constant_column_is_nan() -> None:
    x = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    y = np.array([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]])
    rho = spearman_columns(x, y)
    assert rho[0] == pytest.approx(-1.0, abs=EXACT_ATOL)
    assert np.isnan(rho[1])


def _random_problem(n_targets: int = 30, n_train: int = 25, n_subsets: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_targets, n_train))
    masks = make_subsets(n_train, n_subsets, 0.5, seed=seed)
    predicted = masks.astype(float) @ scores.T  # (n_subsets, n_targets)
    return scores, masks, predicted


def test_perfect_and_anti_correlation() -> None:
    scores, masks, predicted = _random_problem()
    # Any increasing transform of the predictions is a perfect rank match.
    perfect = lds(scores, masks, np.exp(predicted / 10.0) + 3.0, n_bootstrap=50)
    assert perfect.mean == pytest.approx(1.0, abs=EXACT_ATOL)
    np.testing.assert_allclose(perfect.per_target, 1.0, rtol=0, atol=EXACT_ATOL)
    assert perfect.ci_low == pytest.approx(1.0, abs=EXACT_ATOL)
    assert perfect.ci_high == pytest.approx(1.0, abs=EXACT_ATOL)
    anti = lds(scores, masks, -2.0 * predicted, n_bootstrap=50)
    assert anti.mean == pytest.approx(-1.0, abs=EXACT_ATOL)


def test_bootstrap_interval_contains_mean_and_is_seeded() -> None:
    scores, masks, predicted = _random_problem()
    noise = np.random.default_rng(1).normal(scale=3.0, size=predicted.shape)
    margins = predicted + noise
    first = lds(scores, masks, margins, n_bootstrap=500, seed=3)
    again = lds(scores, masks, margins, n_bootstrap=500, seed=3)
    other = lds(scores, masks, margins, n_bootstrap=500, seed=4)
    assert first.ci_low < first.mean < first.ci_high
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    assert first.mean == other.mean  # the seed only affects the interval
    wide = lds(scores, masks, margins, n_bootstrap=500, seed=3, ci=0.99)
    assert wide.ci_low <= first.ci_low and wide.ci_high >= first.ci_high


def test_constant_targets_are_excluded_and_counted() -> None:
    scores, masks, predicted = _random_problem(n_targets=5)
    margins = predicted.copy()
    scores[1] = 0.0  # constant predictions for target 1
    margins[:, 3] = 7.0  # constant margins for target 3
    result = lds(scores, masks, margins, n_bootstrap=50)
    assert result.n_excluded == 2
    assert np.isnan(result.per_target[[1, 3]]).all()
    assert result.mean == pytest.approx(1.0, abs=EXACT_ATOL)
    with pytest.raises(ValueError, match="read-only"):
        result.per_target[0] = 0.0


def test_all_targets_excluded_raises() -> None:
    _, masks, predicted = _random_problem(n_targets=3)
    with pytest.raises(ValueError, match="LDS is undefined: for all 3 targets"):
        lds(np.zeros((3, masks.shape[1])), masks, predicted)


@pytest.mark.parametrize(
    ("n_score_cols", "n_margin_rows", "n_margin_cols", "match"),
    [
        (40, 6, 2, "scores has 40 training columns but masks has 38"),
        (38, 5, 2, "margins has 5 subset rows but masks has 6"),
        (38, 6, 3, "margins has 3 target columns but scores has 2 target rows"),
    ],
)
def test_shape_mismatches_name_both_sides(
    n_score_cols: int, n_margin_rows: int, n_margin_cols: int, match: str
) -> None:
    masks = make_subsets(38, 6)
    scores = np.ones((2, n_score_cols))
    margins = np.ones((n_margin_rows, n_margin_cols))
    with pytest.raises(ValueError, match=match):
        lds(scores, masks, margins)


def test_bad_inputs_raise() -> None:
    masks = HAND_MASKS
    with pytest.raises(TypeError, match="masks must have dtype bool.*got dtype int64"):
        lds(HAND_SCORES, masks.astype(np.int64), HAND_MARGINS)
    with pytest.raises(ValueError, match=r"scores must be 2-D \(n_targets, n_train\)"):
        lds(HAND_SCORES[0], masks, HAND_MARGINS)
    nan_margins = HAND_MARGINS.copy()
    nan_margins[2, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"margins must be finite.*first at \[2, 1\]"):
        lds(HAND_SCORES, masks, nan_margins)
    with pytest.raises(ValueError, match=r"ci must be a float in \(0, 1\), got 1.5"):
        lds(HAND_SCORES, masks, HAND_MARGINS, ci=1.5)
    with pytest.raises(ValueError, match="n_bootstrap must be an int >= 1, got 0"):
        lds(HAND_SCORES, masks, HAND_MARGINS, n_bootstrap=0)


# ----------------------------------------------------------------------------------------------
# compute_ground_truth
# ----------------------------------------------------------------------------------------------

N_TARGETS = 4


class FakeTrainer:
    """Deterministic stand-in for training: margins depend on the subset and the seed.

    Records every subset it is called on; can fail once on a chosen subset, or return bad
    margins for one.
    """

    def __init__(self, fail_on: int | None = None, bad: dict[int, np.ndarray] | None = None):
        self.calls: list[int] = []
        self.fail_on = fail_on
        self.bad = bad or {}

    def __call__(self, train_indices: np.ndarray, subset_index: int) -> np.ndarray:
        self.calls.append(subset_index)
        if subset_index == self.fail_on:
            self.fail_on = None  # fail the first time only
            raise RuntimeError(f"simulated crash on subset {subset_index}")
        if subset_index in self.bad:
            return self.bad[subset_index]
        weights = np.arange(1, N_TARGETS + 1, dtype=np.float64)
        return np.sqrt(train_indices.sum()) * weights + 0.1 * subset_index


def _masks() -> np.ndarray:
    return make_subsets(n_train=12, n_subsets=6, alpha=0.5, seed=2)


def test_ground_truth_without_cache() -> None:
    masks, trainer = _masks(), FakeTrainer()
    margins = compute_ground_truth(trainer, masks, N_TARGETS, cache_dir=None)
    assert margins.shape == (6, N_TARGETS) and margins.dtype == np.float32
    assert trainer.calls == list(range(6))
    expected = np.stack([trainer(np.flatnonzero(m), i) for i, m in enumerate(masks)])
    np.testing.assert_array_equal(margins, expected.astype(np.float32))


def test_ground_truth_resumes_after_crash(tmp_path: Path) -> None:
    masks = _masks()
    reference = compute_ground_truth(FakeTrainer(), masks, N_TARGETS, cache_dir=None)

    trainer = FakeTrainer(fail_on=3)
    with pytest.raises(RuntimeError, match="simulated crash on subset 3"):
        compute_ground_truth(trainer, masks, N_TARGETS, cache_dir=tmp_path)
    assert trainer.calls == [0, 1, 2, 3]
    state = load_ground_truth(tmp_path)
    np.testing.assert_array_equal(state.done, [True, True, True, False, False, False])
    np.testing.assert_array_equal(state.margins[:3], reference[:3])

    steps: list[tuple[int, int]] = []
    trainer.calls.clear()
    margins = compute_ground_truth(
        trainer, masks, N_TARGETS, cache_dir=tmp_path, progress=lambda d, t: steps.append((d, t))
    )
    assert trainer.calls == [3, 4, 5]
    assert steps == [(3, 6), (4, 6), (5, 6), (6, 6)]
    np.testing.assert_array_equal(margins, reference)

    # A complete cache trains nothing.
    trainer.calls.clear()
    again = compute_ground_truth(trainer, masks, N_TARGETS, cache_dir=tmp_path)
    assert trainer.calls == []
    np.testing.assert_array_equal(again, reference)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_ground_truth_refuses_mismatched_cache(tmp_path: Path) -> None:
    masks = _masks()
    compute_ground_truth(FakeTrainer(), masks, N_TARGETS, cache_dir=tmp_path)
    assert ground_truth_exists(tmp_path)
    other = make_subsets(n_train=12, n_subsets=6, alpha=0.5, seed=3)
    with pytest.raises(ConfigMismatchError, match=r"other masks: \d+ of 6 subsets differ"):
        compute_ground_truth(FakeTrainer(), other, N_TARGETS, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"shape \(6, 12\).*masks has shape \(5, 12\)"):
        compute_ground_truth(FakeTrainer(), masks[:5], N_TARGETS, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="n_targets=4, but n_targets=5 was requested"):
        compute_ground_truth(FakeTrainer(), masks, 5, cache_dir=tmp_path)


def test_ground_truth_non_finite_margins_name_subset_and_keep_work(tmp_path: Path) -> None:
    masks = _masks()
    bad = np.array([1.0, np.nan, 2.0, 3.0])
    trainer = FakeTrainer(bad={2: bad})
    with pytest.raises(NonFiniteError, match="for subset 2, first at target 1"):
        compute_ground_truth(trainer, masks, N_TARGETS, cache_dir=tmp_path)
    assert load_ground_truth(tmp_path).n_done == 2

    overflow = FakeTrainer(bad={0: np.array([1e39, 0.0, 0.0, 0.0])})  # inf as float32
    with pytest.raises(NonFiniteError, match="for subset 0"):
        compute_ground_truth(overflow, masks, N_TARGETS, cache_dir=None)


def test_ground_truth_wrong_shape_names_subset() -> None:
    trainer = FakeTrainer(bad={1: np.zeros(N_TARGETS + 1)})
    with pytest.raises(ValueError, match=r"shape \(5,\) for subset 1; expected \(4,\)"):
        compute_ground_truth(trainer, _masks(), N_TARGETS, cache_dir=None)


def test_load_ground_truth_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no ground-truth cache"):
        load_ground_truth(tmp_path / "nowhere")


def test_ground_truth_then_lds_end_to_end() -> None:
    # Additive "training": margins are exact subset sums of hidden per-example effects, so the
    # true effects as scores give LDS 1, and shuffled effects do much worse.
    rng = np.random.default_rng(7)
    effects = rng.normal(size=(N_TARGETS, 12))  # (n_targets, n_train)
    masks = _masks()
    margins = compute_ground_truth(
        lambda idx, _seed: effects[:, idx].sum(axis=1), masks, N_TARGETS, cache_dir=None
    )
    assert lds(effects, masks, margins, n_bootstrap=50).mean == pytest.approx(1.0, abs=1e-6)
    shuffled = lds(effects[:, rng.permutation(12)], masks, margins, n_bootstrap=50)
    assert shuffled.mean < 0.9
