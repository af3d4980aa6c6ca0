"""Counterfactual check of attributions: remove the top-k helpful examples and retrain.

For a test example x with true label y, TRAK names the training examples whose presence most
raises the margin f(x) = logit[y] - logsumexp(other logits). If they matter, a model retrained
without them should have a lower margin on x than a model retrained without k random examples.

The retrained models use exactly the recipe of the demo's saved checkpoints (architecture,
SGD schedule, epochs, learning rate, batch size 64, no weight decay): checkpoint ``m`` was
trained on the full training set with seed ``train_seed + m``, so for seed ``train_seed + m``
it is the baseline. The retrained model also keeps the baseline's shuffle and batches, minus
the removed examples (see ``train_without``), so the removal is the only difference: on the
demo, re-shuffling instead moved the margins of untouched targets by about +-1, enough to
hide the effect of removing 50 of 4,000 examples.

Everything here is a pure function of its arguments: no global state, progress through a
callback, and cancellation through a ``cancel()`` predicate polled at every optimizer step, so
it can run on a worker thread while the Streamlit script thread keeps rendering.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from explorer.artifacts import ExplorerData, load_explorer_data
from explorer.datasets import to_tensor
from explorer.demo import DemoConfig, load_checkpoints, load_demo_config
from explorer.training import MOMENTUM, clone_state_dict, init_model, predict
from trak_engine.outputs import margin

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as ``progress(steps_done, steps_total)``, optimizer steps over all retrained models."""
Cancel = Callable[[], bool]
"""Returns True when the caller wants the run stopped."""

BATCH_SIZE = 64
"""The batch size the demo checkpoints were trained with (``train_classifier``'s default)."""
RANDOM_STREAM = 7_919
"""Mixed into the seed of the random removal sets, so they are not drawn from the training seed."""


class CounterfactualCancelled(RuntimeError):
    """``cancel()`` returned True; the run stopped and nothing was returned."""


def random_removal(n_train: int, k: int, seed: int) -> np.ndarray:
    """(k,) int64 distinct, sorted training ids drawn uniformly; fixed by (n_train, k, seed)."""
    rng = np.random.default_rng([RANDOM_STREAM, seed])
    return np.sort(rng.choice(n_train, size=k, replace=False)).astype(np.int64)


def train_without(
    config: DemoConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    removed: np.ndarray,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Train the demo model with the demo recipe, leaving the ``removed`` examples out.

    The loop is ``explorer.training.train_classifier``'s (seeded init and shuffling, SGD with
    momentum 0.9, linear decay to 0, batches of 64, no weight decay) over the full training
    set, with the removed examples dropped from the batches they fall in. Every other example
    is therefore seen at the same step, with the same batch-mates and learning rate, as in the
    baseline, which isolates the effect of the removal from that of a new shuffle. The loss is
    the mean over a batch's kept examples; a batch left empty makes no update (the learning
    rate schedule still advances). With ``removed`` empty and ``seed = train_seed + m`` this
    reproduces checkpoint ``m`` bit for bit (tested).

    Args:
        x: (n_train, 1, 28, 28) float32 inputs; y: (n_train,) int64 training labels.
        removed: training ids to leave out.
        seed: initialization and shuffling seed.
        progress: called as ``progress(steps_done, steps_total)`` after every step.

    Returns:
        The final state dict, tensors cloned to the CPU.

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    n = x.shape[0]
    keep = torch.ones(n, dtype=torch.bool)
    keep[torch.as_tensor(np.asarray(removed, dtype=np.int64))] = False
    model = init_model(config.model, seed)
    total = config.epochs * math.ceil(n / BATCH_SIZE)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=MOMENTUM)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            idx = idx[keep[idx]]  # drop the removed examples from this batch
            if len(idx):
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss is {loss.item()} at step {step + 1}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            schedule.step()
            step += 1
            if progress is not None:
                progress(step, total)
    model.eval()
    return clone_state_dict(model)


def target_margins(
    config: DemoConfig, state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Margins (n,) float64 with labels ``y`` and predictions (n,) int64 of one model on ``x``."""
    model = init_model(config.model, 0)
    model.load_state_dict(state)
    pred, _, logits = predict(model, x)
    return margin(logits.double(), y).numpy(), pred.numpy()


@dataclass(frozen=True)
class CounterfactualResult:
    """Margins of the targets under the baseline and the two kinds of removal.

    Attributes:
        runs: one row per (test_id, seed): ``test_id, seed, label, baseline_margin,
            baseline_pred, top_k_margin, top_k_pred, random_margin, random_pred,
            top_k_change, random_change`` (change = retrained - baseline margin; negative is
            a drop), ``top_k_flips, random_flips`` (prediction differs from the baseline's).
        summary: one row per test_id: ``test_id, label, n_seeds, mean_top_k_change,
            mean_random_change, top_k_flips, random_flips``.
        top_k_ids: test_id -> (k,) int64 helpful ids that were removed (best first).
        random_ids: seed -> (k,) int64 random ids that were removed.
        k: how many examples each retrained model lacks.
        same_label: whether the helpful ids were taken among the target's label only.
        seconds: wall time of the whole run.
    """

    runs: pd.DataFrame
    summary: pd.DataFrame
    top_k_ids: dict[int, np.ndarray]
    random_ids: dict[int, np.ndarray]
    k: int
    same_label: bool
    seconds: float


def check_request(
    data: ExplorerData, test_ids: Sequence[int], k: int, n_seeds: int, n_ckpt: int
) -> None:
    """Raise ValueError naming the first bad argument of :func:`run_counterfactual`."""
    n_train, n_test = len(data.train_labels), len(data.test_labels)
    if len(test_ids) == 0:
        raise ValueError("test_ids must name at least one test example; received none")
    bad = [t for t in test_ids if not 0 <= t < n_test]
    if bad:
        raise ValueError(f"test_ids must be in [0, {n_test}); received {bad}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n_train:
        raise ValueError(f"k must be an int in [1, {n_train - 1}] (n_train - 1); received {k!r}")
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or not 1 <= n_seeds <= n_ckpt:
        raise ValueError(
            f"n_seeds must be an int in [1, {n_ckpt}]: each seed needs a saved full-data "
            f"checkpoint as its baseline and this workdir has {n_ckpt}; received {n_seeds!r}"
        )


def _step_reporter(
    progress: Progress | None, cancel: Cancel | None, job: int, n_jobs: int, steps: int
) -> Callable[[int, int], None]:
    """A training progress callback: offsets the step count by job and polls ``cancel``."""

    def report(done: int, total: int) -> None:
        if cancel is not None and cancel():
            raise CounterfactualCancelled(f"cancelled during model {job + 1} of {n_jobs}")
        if progress is not None:
            progress(job * steps + done, n_jobs * steps)

    return report


def helpful_ids(data: ExplorerData, test_id: int, k: int, same_label: bool) -> np.ndarray:
    """(k,) int64 training ids with the largest scores for ``test_id``, largest first.

    With ``same_label`` only training examples whose (training) label is the target's true
    label compete. Ties go to the smaller id.

    Raises:
        ValueError: fewer than k training examples carry that label.
    """
    row = np.asarray(data.scores[test_id], dtype=np.float64)  # (n_train,)
    pool = np.arange(len(row))
    if same_label:
        label = int(data.test_labels[test_id])
        pool = np.flatnonzero(data.train_labels == label)
        if len(pool) < k:
            raise ValueError(
                f"k={k} but only {len(pool)} training examples are labeled {label} "
                f"(the label of test {test_id}); lower k or pass same_label=False"
            )
    return pool[np.argsort(-row[pool], kind="stable")[:k]].astype(np.int64)


def _removal_jobs(
    data: ExplorerData, test_ids: Sequence[int], k: int, seeds: Sequence[int], same_label: bool
) -> tuple[list[tuple[str, int, int, np.ndarray]], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Jobs ``(kind, test_id or -1, seed, removed ids)``; random sets are shared by targets."""
    top = {t: helpful_ids(data, t, k, same_label) for t in test_ids}
    rand = {s: random_removal(len(data.train_labels), k, s) for s in seeds}
    jobs = [("random", -1, s, rand[s]) for s in seeds]
    jobs += [("top_k", t, s, top[t]) for t in top for s in seeds]
    return jobs, top, rand


def run_counterfactual(
    workdir: str | os.PathLike[str],
    test_ids: Sequence[int],
    k: int = 50,
    *,
    n_seeds: int = 3,
    same_label: bool = False,
    data: ExplorerData | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> CounterfactualResult:
    """Retrain without the top-k helpful and without k random examples; compare margins.

    For each seed ``s = train_seed + m`` (m < n_seeds) one model is trained without the k
    random ids of that seed (shared by all targets) and, per target, one without the target's
    top-k helpful ids; the baseline is saved checkpoint m. Costs ``n_seeds * (len(test_ids) +
    1)`` trainings of the demo model.

    Args:
        workdir: a demo artifact directory (demo-config.json, checkpoints/, artifacts).
        test_ids: test examples to check; their true labels define the margins.
        k: examples removed per retrained model, in [1, n_train - 1].
        n_seeds: seeds (= saved checkpoints used as baselines), in [1, n_checkpoints].
        same_label: take the top-k helpful among training examples labeled like the target.
            TRAK scores scale with Q_i = 1 - p(label_i), so on the demo the overall top 50
            are mostly mislabeled examples (38 of 50 for test 0); removing them cleans the data
            and can raise the margin. Restricted to the target's label, removal drops it.
        data: the loaded artifacts of ``workdir`` (loaded here if None).
        progress: ``progress(steps_done, steps_total)`` over all trainings.
        cancel: polled at every optimizer step; returning True stops the run.

    Raises:
        TypeError: test_ids are not ints.
        ValueError: a bad test id, k or n_seeds; fewer than k examples with the label.
        FileNotFoundError: not a demo workdir, or a checkpoint is missing.
        CounterfactualCancelled: ``cancel()`` returned True.
    """
    start = time.perf_counter()
    config = load_demo_config(workdir)
    data = data if data is not None else load_explorer_data(workdir)
    ids = np.atleast_1d(np.asarray(test_ids))
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"test_ids must be ints; received {ids.tolist()!r}")
    test_ids = [int(t) for t in ids]
    check_request(data, test_ids, k, n_seeds, config.n_checkpoints)
    seeds = [config.train_seed + m for m in range(n_seeds)]
    baselines = load_checkpoints(workdir, config, n_seeds)
    x, y = to_tensor(data.train_images), torch.as_tensor(data.train_labels)
    tx = to_tensor(data.test_images[test_ids])  # (n_targets, 1, 28, 28)
    ty = torch.as_tensor(data.test_labels[test_ids])
    jobs, top, rand = _removal_jobs(data, test_ids, k, seeds, same_label)
    steps = config.epochs * math.ceil(len(y) / BATCH_SIZE)
    # Margins and predictions of every target under every model, keyed (kind, test_id, seed).
    outcomes = {
        ("baseline", -1, s): target_margins(config, state, tx, ty)
        for s, state in zip(seeds, baselines, strict=True)
    }
    for j, (kind, t, s, removed) in enumerate(jobs):
        report = _step_reporter(progress, cancel, j, len(jobs), steps)
        state = train_without(config, x, y, removed, s, report)
        outcomes[(kind, t, s)] = target_margins(config, state, tx, ty)
        logger.info("counterfactual model %d/%d (%s, seed %d) done", j + 1, len(jobs), kind, s)
    runs = _runs_table(test_ids, seeds, data.test_labels, outcomes)
    return CounterfactualResult(
        runs=runs,
        summary=summarize(runs),
        top_k_ids=top,
        random_ids=rand,
        k=int(k),
        same_label=bool(same_label),
        seconds=time.perf_counter() - start,
    )


def _runs_table(
    test_ids: list[int],
    seeds: list[int],
    test_labels: np.ndarray,
    outcomes: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]],
) -> pd.DataFrame:
    """One row per (test_id, seed); see ``CounterfactualResult.runs``."""
    rows = []
    for col, t in enumerate(test_ids):
        for s in seeds:
            base_m, base_p = (a[col] for a in outcomes[("baseline", -1, s)])
            top_m, top_p = (a[col] for a in outcomes[("top_k", t, s)])
            rnd_m, rnd_p = (a[col] for a in outcomes[("random", -1, s)])
            rows.append(
                {
                    "test_id": t,
                    "seed": s,
                    "label": int(test_labels[t]),
                    "baseline_margin": float(base_m),
                    "baseline_pred": int(base_p),
                    "top_k_margin": float(top_m),
                    "top_k_pred": int(top_p),
                    "random_margin": float(rnd_m),
                    "random_pred": int(rnd_p),
                    "top_k_change": float(top_m - base_m),
                    "random_change": float(rnd_m - base_m),
                    "top_k_flips": bool(top_p != base_p),
                    "random_flips": bool(rnd_p != base_p),
                }
            )
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per test_id: seeds, mean margin changes, and how many seeds flipped the prediction."""
    grouped = runs.groupby("test_id", sort=False)
    return pd.DataFrame(
        {
            "label": grouped["label"].first(),
            "n_seeds": grouped.size(),
            "mean_top_k_change": grouped["top_k_change"].mean(),
            "mean_random_change": grouped["random_change"].mean(),
            "top_k_flips": grouped["top_k_flips"].sum().astype(int),
            "random_flips": grouped["random_flips"].sum().astype(int),
        }
    ).reset_index()
