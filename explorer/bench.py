"""LDS benchmark of TRAK on the demo digits, to choose proj_dim, lam and the checkpoint count.

``bench_lds(workdir, ...)`` trains (or reuses) the demo checkpoints, computes (or reuses) the
retraining ground truth of :mod:`explorer.lds_task`, featurizes the first ``n_targets`` test
digits and the training set once per ``proj_dim`` and scores every (proj_dim, lam, number of
checkpoints) against it. Next to TRAK it measures the floors a good attribution must beat:
projected features without the kernel, plain gradient inner products, and random scores; and
the unprojected limit (k = number of parameters), solved in the n x n dual form.

Everything lands under ``workdir`` and is reused by the next run::

    checkpoints/ckpt_000.pt ...          the attributed models (as in the demo build)
    ground-truth/gt-.../                 subset masks and retrained margins (resumable)
    features/k2048/                      feature store per proj_dim (with featurize timings)
    unprojected/ckpt_000.npz ...         exact gradient products per checkpoint
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from explorer.datasets import DemoSplit, load_demo_split, to_tensor
from explorer.demo import DemoConfig, train_or_load_checkpoints
from explorer.lds_task import GroundTruthConfig, demo_ground_truth
from explorer.models import build_model
from trak_engine import TrakConfig
from trak_engine.api import Attributor, featurize
from trak_engine.errors import ConfigMismatchError, IllConditionedKernelError
from trak_engine.gradients import per_example_gradients
from trak_engine.lds import LDSResult, lds
from trak_engine.scores import MIN_RCOND, mean_out_to_loss
from trak_engine.store import FeatureStore, describe_differences, write_json_atomic

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
Data = tuple[torch.Tensor, torch.Tensor]

BENCH_CONFIG_FILE = "bench-config.json"
TIMINGS_FILE = "featurize-seconds.json"
# The DemoConfig fields that decide the split and the checkpoints (not proj_dim, lam, ...).
TRAINING_FIELDS = (
    "model", "n_train", "n_test", "flip_fraction", "split_seed", "epochs", "lr", "train_seed",
)  # fmt: skip
GRAD_BATCH = 64
RANDOM_SEED = 0


@dataclass(frozen=True)
class BenchRow:
    """One attribution method and setting, scored by LDS.

    Attributes:
        method: ``"trak"``, ``"no kernel"`` (projected features, K = I), ``"unprojected"``
            (TRAK with k = n_params), ``"grad dot"`` (unprojected margin-gradient products
            times Q), ``"loss-grad dot"`` (loss-gradient products) or ``"random"``.
        proj_dim: k; None for the unprojected methods and random scores.
        lam: relative ridge term; None where there is no kernel.
        n_checkpoints: checkpoints averaged over.
        result: the LDS; None where the kernel was refused (see ``note``).
        rcond: smallest reciprocal condition number of the kernels (None without a kernel).
        featurize_s: seconds to featurize these checkpoints (measured once, kept on disk).
        score_s: seconds for the kernel inverses and the scores.
        note: why there is no result, or a remark.
    """

    method: str
    proj_dim: int | None
    lam: float | None
    n_checkpoints: int
    result: LDSResult | None
    rcond: float | None
    featurize_s: float | None
    score_s: float
    note: str = ""


# ----------------------------------------------------------------------------------------------
# Inputs: checks, checkpoints, targets
# ----------------------------------------------------------------------------------------------


def check_configs(demo: DemoConfig, truth: GroundTruthConfig) -> None:
    """Refuse a ground truth trained otherwise than the checkpoints, or too many targets."""
    for field in ("model", "epochs", "lr"):
        if getattr(demo, field) != getattr(truth, field):
            raise ValueError(
                f"the ground truth must retrain the attributed model: GroundTruthConfig."
                f"{field} = {getattr(truth, field)!r} but DemoConfig.{field} = "
                f"{getattr(demo, field)!r}"
            )
    if truth.n_targets > demo.n_test:
        raise ValueError(
            f"n_targets must be at most n_test = {demo.n_test} (the targets are the first test "
            f"digits), got {truth.n_targets}"
        )


def check_workdir(workdir: Path, demo: DemoConfig) -> None:
    """Record the training fields of ``demo`` in ``workdir``, refusing a workdir made otherwise."""
    fields = {k: v for k, v in dataclasses.asdict(demo).items() if k in TRAINING_FIELDS}
    path = workdir / BENCH_CONFIG_FILE
    if path.exists():
        diffs = describe_differences(json.loads(path.read_text()), fields)
        if diffs:
            raise ConfigMismatchError(
                f"{workdir} holds benchmark checkpoints trained otherwise: "
                + "; ".join(diffs)
                + ". Pass another --workdir, or delete that directory."
            )
        return
    workdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, fields)


def split_data(split: DemoSplit, n_targets: int) -> dict[str, Data]:
    """The training set and the first ``n_targets`` test digits, as the engine takes them.

    The target split is named after its size, so a store never mixes two target counts.
    """
    train = (to_tensor(split.train_images), torch.as_tensor(split.train_labels))
    targets = (
        to_tensor(split.test_images[:n_targets]),
        torch.as_tensor(split.test_labels[:n_targets]),
    )
    return {"train": train, target_split(n_targets): targets}


def target_split(n_targets: int) -> str:
    return f"targets{n_targets}"


# ----------------------------------------------------------------------------------------------
# Projected features and TRAK scores
# ----------------------------------------------------------------------------------------------


def featurize_timed(
    store_dir: Path,
    config: DemoConfig,
    states: Sequence[dict[str, torch.Tensor]],
    splits: dict[str, Data],
    trak_config: TrakConfig,
    progress: Progress | None,
) -> tuple[FeatureStore, list[float]]:
    """Featurize checkpoint by checkpoint; returns the store and seconds per checkpoint.

    The seconds of a checkpoint are measured when its features are computed and kept in the
    store directory, so a rerun reports the original cost instead of the time to reuse.
    """
    path = store_dir / TIMINGS_FILE
    seconds: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
    model = build_model(config.model)
    store: FeatureStore | None = None
    for m in range(len(states)):
        start = time.perf_counter()
        store = featurize(model, states[: m + 1], splits, trak_config, store_dir, progress=progress)
        if str(m) not in seconds:
            seconds[str(m)] = time.perf_counter() - start
            write_json_atomic(path, seconds)
    if store is None:
        raise ValueError("states must hold at least one checkpoint, got none")
    return store, [seconds[str(m)] for m in range(len(states))]


def trak_row(
    store: FeatureStore,
    lam: float,
    n_ckpts: int,
    split: str,
    truth: tuple[np.ndarray, np.ndarray],
    featurize_s: float,
    n_bootstrap: int,
) -> BenchRow:
    """TRAK scores from the store for one (lam, n_ckpts), scored by LDS."""
    k = int(store.meta["config"]["proj_dim"])
    start = time.perf_counter()
    try:
        attributor = Attributor(store, lam, n_checkpoints=n_ckpts, required_splits=[split])
    except IllConditionedKernelError as err:
        note = f"refused: {err}"
        return BenchRow("trak", k, lam, n_ckpts, None, None, featurize_s, 0.0, note)
    scores = attributor.scores(attributor.target_features(split))
    seconds = time.perf_counter() - start
    rcond = min(kernel.rcond for kernel in attributor.kernels)
    result = lds(scores, *truth, n_bootstrap=n_bootstrap)
    return BenchRow("trak", k, lam, n_ckpts, result, rcond, featurize_s, seconds)


def no_kernel_row(
    store: FeatureStore,
    n_ckpts: int,
    split: str,
    truth: tuple[np.ndarray, np.ndarray],
    featurize_s: float,
    n_bootstrap: int,
) -> BenchRow:
    """TRAK's formula with K = I: (1/M sum_m phi_m(x)^T phi_m,i) * mean Q_i."""
    start = time.perf_counter()
    dots, qs = [], []
    for m in range(n_ckpts):
        train, q = store.load(m, "train")
        targets, _ = store.load(m, split)
        # (n_targets, k) @ (k, n_train) -> (n_targets, n_train)
        dots.append(np.asarray(targets, np.float64) @ np.asarray(train, np.float64).T)
        qs.append(q)
    scores = np.mean(dots, axis=0) * mean_out_to_loss(qs)[None, :]
    seconds = time.perf_counter() - start
    k = int(store.meta["config"]["proj_dim"])
    result = lds(scores, *truth, n_bootstrap=n_bootstrap)
    return BenchRow("no kernel", k, None, n_ckpts, result, None, featurize_s, seconds)


def projected_rows(
    workdir: Path,
    config: DemoConfig,
    states: Sequence[dict[str, torch.Tensor]],
    splits: dict[str, Data],
    proj_dim: int,
    grid: tuple[Sequence[float], Sequence[int]],
    truth: tuple[np.ndarray, np.ndarray],
    n_bootstrap: int,
    progress: Progress | None,
) -> list[BenchRow]:
    """Every (lam, n_checkpoints) of ``grid`` at one proj_dim, then the kernel-free floor."""
    lams, checkpoints = grid
    trak_config = TrakConfig(proj_dim=proj_dim, seed=config.proj_seed, proj_type=config.proj_type)
    kind = "" if config.proj_type == "gaussian" else f"{config.proj_type}-"
    store_dir = workdir / "features" / f"{kind}k{proj_dim}"
    store, seconds = featurize_timed(store_dir, config, states, splits, trak_config, progress)
    split = next(name for name in splits if name != "train")
    rows = []
    for n_ckpts in checkpoints:
        featurize_s = float(sum(seconds[:n_ckpts]))
        for lam in lams:
            rows.append(trak_row(store, lam, n_ckpts, split, truth, featurize_s, n_bootstrap))
        rows.append(no_kernel_row(store, n_ckpts, split, truth, featurize_s, n_bootstrap))
    return rows


# ----------------------------------------------------------------------------------------------
# Unprojected gradients: exact products, in the dual (n x n) form
# ----------------------------------------------------------------------------------------------


def all_gradients(model: torch.nn.Module, data: Data) -> tuple[torch.Tensor, torch.Tensor]:
    """Margin gradients (n, n_params) float32 and Q (n,) float32 of every example."""
    x, y = data
    grads, qs = [], []
    for lo in range(0, x.shape[0], GRAD_BATCH):
        g, q = per_example_gradients(model, x[lo : lo + GRAD_BATCH], y[lo : lo + GRAD_BATCH])
        grads.append(g)
        qs.append(q)
    return torch.cat(grads), torch.cat(qs)


def gradient_products(
    workdir: Path,
    config: DemoConfig,
    states: Sequence[dict[str, torch.Tensor]],
    splits: dict[str, Data],
) -> list[dict[str, np.ndarray]]:
    """Per checkpoint, exact products of the unprojected margin gradients G (cached).

    Returns:
        Per checkpoint a dict: ``cross`` (n_targets, n_train) float64 G_x G^T, ``gram``
        (n_train, n_train) float64 G G^T, ``q`` (n_train,) and ``q_targets`` (n_targets,).
    """
    split = next(name for name in splits if name != "train")
    model = build_model(config.model)
    out = []
    for m, state in enumerate(states):
        path = workdir / "unprojected" / split / f"ckpt_{m:03d}.npz"
        if not path.exists():
            model.load_state_dict(state)
            g_train, q = all_gradients(model, splits["train"])  # (n_train, p), (n_train,)
            g_targets, q_targets = all_gradients(model, splits[split])  # (n_targets, p)
            g64 = g_train.double()
            arrays = {
                "cross": (g_targets.double() @ g64.T).numpy(),  # (n_targets, n_train)
                "gram": (g64 @ g64.T).numpy(),  # (n_train, n_train)
                "q": q.numpy(),
                "q_targets": q_targets.numpy(),
                "n_params": np.array(g_train.shape[1]),
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        with np.load(path) as saved:
            out.append({name: saved[name] for name in saved.files})
    return out


def dual_scores(product: dict[str, np.ndarray], lam: float) -> tuple[np.ndarray, float]:
    """g_x^T (G^T G + lam_abs I)^-1 g_i for all targets and train examples, and an rcond.

    With G (n, p) and n < p, ``(G^T G + l I)^-1 G^T = G^T (G G^T + l I)^-1``, so the scores
    are ``cross @ (gram + l I)^-1`` (n_targets, n_train) without forming the p x p kernel;
    ``l = lam * trace(G^T G) / p``, the engine's relative ridge with k = p. The rcond returned
    is that of ``gram + l I``. With lam = 0 the p x p kernel is singular (n < p), and the dual
    gives its pseudo-inverse limit ``g_x^T G^+ e_i``, when G G^T is invertible.

    Raises:
        IllConditionedKernelError: ``gram + l I`` is singular or has rcond below MIN_RCOND.
    """
    gram, n_params = product["gram"], int(product["n_params"])
    kernel = gram + lam * np.trace(gram) / n_params * np.eye(gram.shape[0])
    try:
        chol = scipy.linalg.cho_factor(kernel, lower=True)
    except np.linalg.LinAlgError as err:
        raise IllConditionedKernelError(f"G G^T + lam I is not positive definite: {err}") from err
    anorm = float(np.abs(kernel).sum(axis=0).max())
    rcond, info = scipy.linalg.lapack.dpocon(chol[0], anorm, uplo="L")
    if info != 0 or rcond < MIN_RCOND:
        raise IllConditionedKernelError(
            f"G G^T + lam I (lam = {lam}) has rcond {rcond:.2e} < {MIN_RCOND:.0e}"
        )
    # (n_train, n_train) solve against (n_train, n_targets) -> transpose to (n_targets, n_train)
    return scipy.linalg.cho_solve(chol, product["cross"].T).T, float(rcond)


def unprojected_rows(
    products: list[dict[str, np.ndarray]],
    lams: Sequence[float],
    checkpoints: Sequence[int],
    truth: tuple[np.ndarray, np.ndarray],
    n_bootstrap: int,
) -> list[BenchRow]:
    """Unprojected TRAK per (lam, M) (refused kernels noted), and plain gradient products."""
    rows = []
    for n_ckpts in checkpoints:
        used = products[:n_ckpts]
        mean_q = mean_out_to_loss([p["q"] for p in used])[None, :]  # (1, n_train)
        for lam in lams:
            start = time.perf_counter()
            try:
                solved = [dual_scores(p, lam) for p in used]
            except IllConditionedKernelError as err:
                note = f"refused: {err}"
                rows.append(BenchRow("unprojected", None, lam, n_ckpts, None, None, None, 0, note))
                continue
            scores = np.mean([s for s, _ in solved], axis=0) * mean_q
            rcond = min(r for _, r in solved)
            result = lds(scores, *truth, n_bootstrap=n_bootstrap)
            seconds = time.perf_counter() - start
            rows.append(BenchRow("unprojected", None, lam, n_ckpts, result, rcond, None, seconds))
        plain = np.mean([p["cross"] for p in used], axis=0) * mean_q
        rows.append(_row("grad dot", n_ckpts, plain, truth, n_bootstrap))
        # Loss gradients are -Q times margin gradients: Q_x Q_i g_x^T g_i, averaged.
        loss = np.mean([p["q_targets"][:, None] * p["cross"] * p["q"][None, :] for p in used], 0)
        rows.append(_row("loss-grad dot", n_ckpts, loss, truth, n_bootstrap))
    return rows


def _row(
    method: str,
    n_ckpts: int,
    scores: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray],
    n_bootstrap: int,
) -> BenchRow:
    result = lds(scores, *truth, n_bootstrap=n_bootstrap)
    return BenchRow(method, None, None, n_ckpts, result, None, None, 0.0)


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------


def bench_lds(
    workdir: str | os.PathLike[str],
    *,
    demo_config: DemoConfig | None = None,
    truth_config: GroundTruthConfig | None = None,
    proj_dims: Sequence[int] = (2048,),
    lams: Sequence[float] = (0.01,),
    checkpoints: Sequence[int] = (3,),
    unprojected: bool = False,
    n_bootstrap: int = 1000,
    progress: Progress | None = None,
) -> list[BenchRow]:
    """LDS of TRAK on the demo task for every (proj_dim, lam, number of checkpoints).

    Args:
        workdir: where checkpoints, ground truth, features and gradient products are kept
            and reused (a workdir made with other training settings is refused).
        demo_config: the task and training (its proj_dim, lam, n_checkpoints are ignored).
        truth_config: the ground truth (its model, epochs, lr must match ``demo_config``).
        proj_dims, lams, checkpoints: the grid; lam = 0 with proj_dim > n_train is reported
            as refused, like any kernel the engine refuses.
        unprojected: also score unprojected TRAK (per lam) and gradient inner products
            (needs an (n_train, n_params) gradient matrix in memory: 0.5 GB for the demo).
        n_bootstrap: bootstrap resamples of the LDS interval.
        progress: ``progress(stage, done, total)``.

    Returns:
        Rows in the order: per proj_dim and checkpoint count, TRAK per lam then the
        kernel-free floor; then the unprojected rows; then random scores.
    """
    demo_config = demo_config or DemoConfig()
    truth_config = truth_config or GroundTruthConfig()
    check_configs(demo_config, truth_config)
    if not checkpoints or min(checkpoints) < 1:
        raise ValueError(f"checkpoints must be counts >= 1, got {list(checkpoints)}")
    workdir = Path(workdir)
    check_workdir(workdir, demo_config)
    split = load_demo_split(
        seed=demo_config.split_seed, n_train=demo_config.n_train, n_test=demo_config.n_test,
        flip_fraction=demo_config.flip_fraction,
    )  # fmt: skip
    needed = dataclasses.replace(demo_config, n_checkpoints=max(checkpoints))
    states, _ = train_or_load_checkpoints(workdir, needed, split, progress)
    truth = ground_truth(workdir, truth_config, split, progress)
    splits = split_data(split, truth_config.n_targets)
    rows: list[BenchRow] = []
    for k in proj_dims:
        grid = (lams, checkpoints)
        rows += projected_rows(
            workdir, needed, states, splits, k, grid, truth, n_bootstrap, progress
        )
    if unprojected:
        products = gradient_products(workdir, needed, states, splits)
        rows += unprojected_rows(products, lams, checkpoints, truth, n_bootstrap)
    noise = np.random.default_rng(RANDOM_SEED).standard_normal(
        (truth_config.n_targets, split.n_train)
    )
    rows.append(_row("random", 0, noise, truth, n_bootstrap))
    return rows


def ground_truth(
    workdir: Path, config: GroundTruthConfig, split: DemoSplit, progress: Progress | None
) -> tuple[np.ndarray, np.ndarray]:
    """Masks and margins of the retrained subsets, cached under ``workdir/ground-truth``."""
    report = (lambda d, t: progress("ground truth (subsets)", d, t)) if progress else None
    return demo_ground_truth(workdir / "ground-truth", config, split, report)


def format_table(rows: Sequence[BenchRow]) -> str:
    """A Markdown table of the rows: one line each, LDS with its bootstrap interval."""
    head = "| method | k | lam | ckpts | LDS [95% CI] | min rcond | featurize s | score s |"
    lines = [head, "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for row in rows:
        res = row.result
        score = f"{res.mean:.3f} [{res.ci_low:.3f}, {res.ci_high:.3f}]" if res else "refused"
        cells = [
            row.method,
            "-" if row.proj_dim is None else str(row.proj_dim),
            "-" if row.lam is None else f"{row.lam:g}",
            str(row.n_checkpoints) if row.n_checkpoints else "-",
            score,
            "-" if row.rcond is None else f"{row.rcond:.1e}",
            "-" if row.featurize_s is None else f"{row.featurize_s:.0f}",
            f"{row.score_s:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
