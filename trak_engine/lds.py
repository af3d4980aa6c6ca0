"""Linear datamodeling score (LDS), the evaluation metric of TRAK (Park et al., ICML 2023).

The LDS asks how well attribution scores predict what happens when a model is retrained on a
random subset of the training set. For subsets ``S_1..S_m`` (boolean masks over the training
set) and a target example ``j``:

* the *predicted* effect of subset ``S_i`` is the sum of the target's scores over the subset,
  ``sum_{k in S_i} scores[j, k]``;
* the *ground truth* is the margin on target ``j`` of a model actually trained on ``S_i``.

The LDS of target ``j`` is the Spearman rank correlation between the two over the ``m`` subsets,
and the reported LDS is its mean over targets, with a bootstrap interval over targets.

Three steps, one function each: :func:`make_subsets` draws the masks,
:func:`compute_ground_truth` trains one model per subset (cached on disk and resumable) and
:func:`lds` scores attributions against the result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import numbers
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from scipy.stats import rankdata

from trak_engine.errors import ConfigMismatchError, NonFiniteError

logger = logging.getLogger(__name__)

MASKS_FILE = "masks.npy"
STATE_FILE = "state.npz"
META_FILE = "meta.json"
_CACHE_FORMAT = 1
# Bootstrap resamples are drawn in blocks of about this many indices to bound memory.
_BOOTSTRAP_BLOCK = 1 << 22


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    """Returns ``value`` as an int, raising if it is not an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _check_masks(masks: object) -> np.ndarray:
    """Checks that ``masks`` is a 2-D boolean array with at least two rows and one column."""
    if not isinstance(masks, np.ndarray):
        raise TypeError(f"masks must be a numpy array, got {type(masks).__name__}")
    if masks.dtype != np.bool_:
        raise TypeError(
            f"masks must have dtype bool (True = in the subset), got dtype {masks.dtype}; "
            "make them with make_subsets or convert with masks.astype(bool)"
        )
    if masks.ndim != 2 or masks.shape[0] < 2 or masks.shape[1] < 1:
        raise ValueError(
            "masks must be 2-D (n_subsets, n_train) with n_subsets >= 2 and n_train >= 1, "
            f"got shape {masks.shape}"
        )
    return masks


def _check_float_matrix(name: str, value: object, dims: str) -> np.ndarray:
    """Returns ``value`` as a finite 2-D float64 array with shape ``dims``."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array {dims}, got {type(value).__name__}")
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    if value.ndim != 2:
        raise ValueError(f"{name} must be 2-D {dims}, got shape {value.shape}")
    out = value.astype(np.float64, copy=False)
    bad = ~np.isfinite(out)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise NonFiniteError(
            f"{name} must be finite, but {int(bad.sum())} entries are NaN or infinite "
            f"(first at [{row}, {col}]: {out[row, col]})"
        )
    return out


# ----------------------------------------------------------------------------------------------
# Subsets
# ----------------------------------------------------------------------------------------------


def make_subsets(n_train: int, n_subsets: int, alpha: float = 0.5, seed: int = 0) -> np.ndarray:
    """Draws random training subsets of a fixed size, as boolean masks.

    Each subset holds exactly ``k = round(alpha * n_train)`` examples drawn without replacement
    (Python's ``round``, so halves round to even: ``round(2.5) == 2``). The same arguments
    always give the same masks.

    Args:
        n_train: Size of the training set, ``>= 2``.
        n_subsets: Number of subsets, ``>= 2`` (a correlation needs at least two).
        alpha: Fraction of the training set in each subset, in ``(0, 1)``; the paper uses 0.5.
        seed: Seed of the ``numpy.random.default_rng`` that draws the subsets.

    Returns:
        ``(n_subsets, n_train)`` bool array; row ``i`` is True on the examples of subset ``i``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range, or ``alpha`` gives empty or full subsets.
    """
    n_train = _check_int("n_train", n_train, 2)
    n_subsets = _check_int("n_subsets", n_subsets, 2)
    seed = _check_int("seed", seed, 0)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a float in (0, 1), got {type(alpha).__name__} {alpha!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be a float in (0, 1), got {alpha}")
    k = round(alpha * n_train)
    if not 0 < k < n_train:
        raise ValueError(
            f"alpha={alpha} with n_train={n_train} gives subsets of {k} examples; "
            f"each subset needs between 1 and {n_train - 1} examples"
        )
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_subsets, n_train), dtype=bool)
    for i in range(n_subsets):
        masks[i, rng.choice(n_train, size=k, replace=False)] = True
    return masks


# ----------------------------------------------------------------------------------------------
# Ground truth: one trained model per subset, cached on disk
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class GroundTruthState:
    """What a ground-truth cache holds.

    Attributes:
        masks: ``(n_subsets, n_train)`` bool subset masks.
        margins: ``(n_subsets, n_targets)`` float32 margins; rows not yet done are zero.
        done: ``(n_subsets,)`` bool, True where the subset's model has been trained.
    """

    masks: np.ndarray
    margins: np.ndarray
    done: np.ndarray

    @property
    def n_done(self) -> int:
        """Number of subsets already computed."""
        return int(self.done.sum())


def ground_truth_exists(cache_dir: Path) -> bool:
    """Returns True if ``cache_dir`` holds a ground-truth cache (complete or not)."""
    return (Path(cache_dir) / META_FILE).is_file()


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Writes a file through ``write(fileobj)`` into a temp file, then renames it onto ``path``.

    A crash leaves either the old file or the new one, never a half-written file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_state(cache_dir: Path, margins: np.ndarray, done: np.ndarray) -> None:
    """Saves margins and the done record together, so they can never disagree."""
    _write_atomic(cache_dir / STATE_FILE, lambda f: np.savez(f, margins=margins, done=done))


def _init_cache(cache_dir: Path, masks: np.ndarray, n_targets: int) -> None:
    """Creates a new cache: masks first, then the metadata that marks the cache as valid."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": _CACHE_FORMAT,
        "n_subsets": masks.shape[0],
        "n_train": masks.shape[1],
        "n_targets": n_targets,
    }
    _write_atomic(cache_dir / MASKS_FILE, lambda f: np.save(f, masks))
    n_subsets = masks.shape[0]
    _save_state(cache_dir, np.zeros((n_subsets, n_targets), np.float32), np.zeros(n_subsets, bool))
    _write_atomic(cache_dir / META_FILE, lambda f: f.write(json.dumps(meta).encode()))


def load_ground_truth(cache_dir: Path) -> GroundTruthState:
    """Loads a ground-truth cache written by :func:`compute_ground_truth`.

    Args:
        cache_dir: Folder of the cache.

    Returns:
        The cached masks, margins and done record, possibly incomplete (see ``done``).

    Raises:
        FileNotFoundError: If ``cache_dir`` holds no ground-truth cache.
        ValueError: If the cache files are inconsistent with each other.
    """
    cache_dir = Path(cache_dir)
    if not ground_truth_exists(cache_dir):
        raise FileNotFoundError(
            f"no ground-truth cache in {cache_dir} ({META_FILE} is missing); "
            "run compute_ground_truth with cache_dir to create one"
        )
    meta = json.loads((cache_dir / META_FILE).read_text())
    if meta.get("format") != _CACHE_FORMAT:
        raise ValueError(
            f"ground-truth cache in {cache_dir} has format {meta.get('format')!r}, this "
            f"version reads format {_CACHE_FORMAT}; delete the folder or use another cache_dir"
        )
    masks = np.load(cache_dir / MASKS_FILE)
    with np.load(cache_dir / STATE_FILE) as state:
        margins, done = state["margins"], state["done"]
    n_subsets, n_train, n_targets = meta["n_subsets"], meta["n_train"], meta["n_targets"]
    expected = [(n_subsets, n_train), (n_subsets, n_targets), (n_subsets,)]
    found = [masks.shape, margins.shape, done.shape]
    if found != expected or masks.dtype != np.bool_ or done.dtype != np.bool_:
        raise ValueError(
            f"ground-truth cache in {cache_dir} is inconsistent: {META_FILE} implies shapes "
            f"(masks, margins, done) = {expected}, the files hold {found} with dtypes "
            f"{(masks.dtype, margins.dtype, done.dtype)}; delete the folder to start over"
        )
    return GroundTruthState(masks=masks, margins=margins, done=done)


def _check_cache_matches(
    cache_dir: Path, state: GroundTruthState, masks: np.ndarray, n_targets: int
) -> None:
    """Refuses a cache made for other masks or another number of targets."""
    fix = "use another cache_dir, or delete this one to start over"
    if state.masks.shape != masks.shape:
        raise ConfigMismatchError(
            f"ground-truth cache in {cache_dir} was made with masks of shape "
            f"{state.masks.shape} (n_subsets, n_train), but masks has shape {masks.shape}; {fix}"
        )
    if not np.array_equal(state.masks, masks):
        n_rows = int((state.masks != masks).any(axis=1).sum())
        raise ConfigMismatchError(
            f"ground-truth cache in {cache_dir} was made with other masks: {n_rows} of "
            f"{masks.shape[0]} subsets differ (same shape {masks.shape}); {fix}"
        )
    if state.margins.shape[1] != n_targets:
        raise ConfigMismatchError(
            f"ground-truth cache in {cache_dir} was made with n_targets="
            f"{state.margins.shape[1]}, but n_targets={n_targets} was requested; {fix}"
        )


def _check_margins(value: object, subset: int, n_targets: int) -> np.ndarray:
    """Returns the margins of one subset as ``(n_targets,)`` float32, or raises naming it."""
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, caught below
            out = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"train_and_eval returned {type(value).__name__} for subset {subset}; "
            f"expected an array of {n_targets} margins"
        ) from exc
    if out.shape != (n_targets,):
        raise ValueError(
            f"train_and_eval returned margins of shape {out.shape} for subset {subset}; "
            f"expected ({n_targets},), one margin per target"
        )
    bad = ~np.isfinite(out)
    if bad.any():
        raise NonFiniteError(
            f"train_and_eval returned {int(bad.sum())} non-finite margins (NaN, inf, or beyond "
            f"float32) for subset {subset}, first at target {int(np.argmax(bad))}; the model "
            "trained on this subset probably diverged"
        )
    return out


def compute_ground_truth(
    train_and_eval: Callable[[np.ndarray, int], np.ndarray],
    masks: np.ndarray,
    n_targets: int,
    cache_dir: Path | None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Trains one model per subset and records its margins on the targets.

    With ``cache_dir``, the margins of each subset are saved as soon as they are computed
    (atomically, margins and done record in one file), so an interrupted run resumes at the
    first missing subset and nothing computed is lost. A cache made with other masks or another
    ``n_targets`` is refused rather than mixed.

    Args:
        train_and_eval: ``train_and_eval(train_indices, subset_index)`` trains a model on the
            training examples ``train_indices`` (``(k,)`` int64, sorted), seeded by
            ``subset_index``, and returns its margins on the targets, ``(n_targets,)``.
        masks: ``(n_subsets, n_train)`` bool subset masks, e.g. from :func:`make_subsets`.
        n_targets: Number of target examples, ``>= 1``.
        cache_dir: Folder for the cache (created if missing), or None to keep nothing on disk.
        progress: Called as ``progress(n_done, n_subsets)`` once at the start (counting cached
            subsets) and after each subset.

    Returns:
        ``(n_subsets, n_targets)`` float32 margins; row ``i`` comes from the model of subset
        ``i``.

    Raises:
        ConfigMismatchError: If ``cache_dir`` holds a cache made with other masks or
            ``n_targets``.
        NonFiniteError: If ``train_and_eval`` returns NaN or infinite margins; the message
            names the subset. Subsets done before it stay in the cache.
        ValueError: If ``train_and_eval`` returns margins of the wrong shape.
        TypeError: If ``masks`` is not bool, or the margins cannot be read as numbers.
        Exception: Whatever ``train_and_eval`` raises is raised unchanged after logging.
    """
    masks = _check_masks(masks)
    n_targets = _check_int("n_targets", n_targets, 1)
    state = _open_state(masks, n_targets, cache_dir)
    n_subsets = masks.shape[0]
    if progress is not None:
        progress(state.n_done, n_subsets)
    for i in np.flatnonzero(~state.done).tolist():
        try:
            raw = train_and_eval(np.flatnonzero(masks[i]), i)
        except Exception:
            where = f"saved in {cache_dir}; rerun to resume" if cache_dir else "not saved"
            logger.warning(
                "train_and_eval failed on subset %d; the %d subsets done before it are %s",
                i,
                state.n_done,
                where,
            )
            raise
        state.margins[i] = _check_margins(raw, i, n_targets)
        state.done[i] = True
        if cache_dir is not None:
            _save_state(Path(cache_dir), state.margins, state.done)
        if progress is not None:
            progress(state.n_done, n_subsets)
    return state.margins


def _open_state(masks: np.ndarray, n_targets: int, cache_dir: Path | None) -> GroundTruthState:
    """Loads and checks the cache in ``cache_dir``, creating it if missing."""
    n_subsets = masks.shape[0]
    if cache_dir is None:
        margins = np.zeros((n_subsets, n_targets), np.float32)
        return GroundTruthState(masks=masks, margins=margins, done=np.zeros(n_subsets, bool))
    cache_dir = Path(cache_dir)
    if not ground_truth_exists(cache_dir):
        _init_cache(cache_dir, masks, n_targets)
    state = load_ground_truth(cache_dir)
    _check_cache_matches(cache_dir, state, masks, n_targets)
    if 0 < state.n_done:
        first = int(np.argmin(state.done)) if state.n_done < n_subsets else n_subsets
        logger.info(
            "ground truth in %s: %d of %d subsets cached, resuming at subset %d",
            cache_dir,
            state.n_done,
            n_subsets,
            first,
        )
    return state


# ----------------------------------------------------------------------------------------------
# The score
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class LDSResult:
    """Linear datamodeling score of a set of attribution scores.

    Attributes:
        mean: Mean Spearman correlation over the targets that have one.
        ci_low: Lower end of the bootstrap percentile interval of ``mean``.
        ci_high: Upper end of the bootstrap percentile interval of ``mean``.
        per_target: ``(n_targets,)`` float64 correlation of each target (read-only); NaN where
            the predicted effects or the margins are constant over the subsets.
        n_excluded: Number of NaN entries of ``per_target``, left out of ``mean`` and the
            interval.
        n_targets: Number of targets.
        n_subsets: Number of subsets the correlations are taken over.
        ci_level: Coverage of the interval, e.g. 0.95.
    """

    mean: float
    ci_low: float
    ci_high: float
    per_target: np.ndarray
    n_excluded: int
    n_targets: int
    n_subsets: int
    ci_level: float


def _check_lds_inputs(
    scores: np.ndarray, masks: np.ndarray, margins: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checks types and shapes of :func:`lds` inputs; returns them as float64 / bool."""
    masks = _check_masks(masks)
    scores = _check_float_matrix("scores", scores, "(n_targets, n_train)")
    margins = _check_float_matrix("margins", margins, "(n_subsets, n_targets)")
    if scores.shape[1] != masks.shape[1]:
        raise ValueError(
            f"scores has {scores.shape[1]} training columns but masks has {masks.shape[1]}; "
            "scores must be (n_targets, n_train) and masks (n_subsets, n_train)"
        )
    if margins.shape[0] != masks.shape[0]:
        raise ValueError(
            f"margins has {margins.shape[0]} subset rows but masks has {masks.shape[0]}; "
            "margins must be (n_subsets, n_targets) and masks (n_subsets, n_train)"
        )
    if margins.shape[1] != scores.shape[0]:
        raise ValueError(
            f"margins has {margins.shape[1]} target columns but scores has {scores.shape[0]} "
            "target rows; margins must be (n_subsets, n_targets) and scores (n_targets, n_train)"
        )
    return scores, masks, margins


def spearman_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation between matching columns of two matrices.

    Ties get their average rank (as in ``scipy.stats.spearmanr``), then the ranks are
    Pearson-correlated.

    Args:
        x: ``(n, m)`` float array.
        y: ``(n, m)`` float array, same shape as ``x``.

    Returns:
        ``(m,)`` float64; entry ``j`` is the correlation of ``x[:, j]`` and ``y[:, j]``, NaN
        where either column is constant.
    """
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must be 2-D arrays of one shape, got {x.shape} and {y.shape}")
    rx = rankdata(x, axis=0, method="average")  # (n, m)
    ry = rankdata(y, axis=0, method="average")  # (n, m)
    rx -= rx.mean(axis=0)  # centre each column
    ry -= ry.mean(axis=0)
    num = (rx * ry).sum(axis=0)  # (m,)
    den = np.sqrt((rx * rx).sum(axis=0) * (ry * ry).sum(axis=0))  # (m,); 0 for a constant column
    rho = np.full(x.shape[1], np.nan)
    ok = den > 0
    rho[ok] = np.clip(num[ok] / den[ok], -1.0, 1.0)
    return rho


def _bootstrap_interval(
    values: np.ndarray, n_bootstrap: int, seed: int, ci: float
) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (``(n,)``), resampling with replacement."""
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    means = np.empty(n_bootstrap)
    block = max(1, _BOOTSTRAP_BLOCK // n)
    for start in range(0, n_bootstrap, block):
        stop = min(start + block, n_bootstrap)
        idx = rng.integers(0, n, size=(stop - start, n))  # (block, n) resampled targets
        means[start:stop] = values[idx].mean(axis=1)  # (block,)
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def lds(
    scores: np.ndarray,
    masks: np.ndarray,
    margins: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> LDSResult:
    """Linear datamodeling score of attribution scores against retrained-model margins.

    For each target ``j``, the predicted effect of subset ``i`` is ``masks[i] @ scores[j]`` and
    ``per_target[j]`` is its Spearman correlation with ``margins[:, j]`` over the subsets. The
    LDS is the mean over targets; targets whose predictions or margins are constant have no
    correlation and are excluded (counted in ``n_excluded``). The interval resamples targets
    with replacement ``n_bootstrap`` times and takes percentiles of the resampled means.

    Args:
        scores: ``(n_targets, n_train)`` attribution scores, any real dtype, finite.
        masks: ``(n_subsets, n_train)`` bool subset masks, ``n_subsets >= 2``.
        margins: ``(n_subsets, n_targets)`` margins of the model trained on each subset, e.g.
            from :func:`compute_ground_truth`, finite.
        n_bootstrap: Number of bootstrap resamples, ``>= 1``.
        seed: Seed of the bootstrap resampling.
        ci: Coverage of the interval, in ``(0, 1)``.

    Returns:
        The score, its interval and the per-target correlations.

    Raises:
        TypeError: If an input has the wrong type or dtype.
        ValueError: If shapes disagree (the message gives both sides), an argument is out of
            range, or every target is excluded.
        NonFiniteError: If ``scores`` or ``margins`` holds NaN or infinity.
    """
    scores, masks, margins = _check_lds_inputs(scores, masks, margins)
    n_bootstrap = _check_int("n_bootstrap", n_bootstrap, 1)
    seed = _check_int("seed", seed, 0)
    if isinstance(ci, bool) or not isinstance(ci, numbers.Real):
        raise TypeError(f"ci must be a float in (0, 1), got {type(ci).__name__} {ci!r}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be a float in (0, 1), got {ci}")
    predicted = masks.astype(np.float64) @ scores.T  # (n_subsets, n_targets) subset sums
    per_target = spearman_columns(predicted, margins)  # (n_targets,)
    valid = per_target[~np.isnan(per_target)]
    n_targets, n_excluded = per_target.shape[0], per_target.shape[0] - valid.shape[0]
    if valid.shape[0] == 0:
        raise ValueError(
            f"LDS is undefined: for all {n_targets} targets the predicted effects or the "
            "margins are constant over the subsets; check that the scores are not all zero "
            "and that the margins vary between subsets"
        )
    if n_excluded:
        logger.warning(
            "LDS: %d of %d targets excluded (constant predictions or margins)",
            n_excluded,
            n_targets,
        )
    ci_low, ci_high = _bootstrap_interval(valid, n_bootstrap, seed, float(ci))
    per_target.setflags(write=False)
    return LDSResult(
        mean=float(valid.mean()),
        ci_low=ci_low,
        ci_high=ci_high,
        per_target=per_target,
        n_excluded=n_excluded,
        n_targets=n_targets,
        n_subsets=masks.shape[0],
        ci_level=float(ci),
    )
