"""The public API: featurize checkpoints, score targets, serve top-k.

Example::

    from trak_engine import TrakConfig, attribute

    result = attribute(model, checkpoints, (x_train, y_train), (x_test, y_test),
                       TrakConfig(proj_dim=512, lam=0.01), k=10)
    result.scores        # (n_targets, n_train) float32
    result.helpful_ids   # (n_targets, 10) int64, largest scores first
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trak_engine import scores as scoring
from trak_engine.config import TrakConfig
from trak_engine.data import Data, check_data, data_length, get_batch
from trak_engine.errors import EmptyTrainingSetError, MissingCheckpointError
from trak_engine.fingerprints import (
    check_distinct_checkpoints,
    data_fingerprint,
    model_fingerprint,
)
from trak_engine.gradients import grad_dim, per_example_gradients
from trak_engine.index import AttributionIndex, TopK, index_vectors, query_vectors
from trak_engine.projection import DEFAULT_MAX_BYTES, Projector, checkpoint_seed
from trak_engine.store import FeatureStore
from trak_engine.structured import STRUCTURED_TYPES, StructuredProjector

logger = logging.getLogger(__name__)

StateDict = Mapping[str, Tensor]
Progress = Callable[[str, int, int], None]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def store_meta(
    model: nn.Module,
    config: TrakConfig,
    splits: Mapping[str, Data],
    checkpoint_fps: list[str],
    backend: str,
) -> dict[str, Any]:
    """What the features depend on, for the store to check on reopening."""
    return {
        "config": config.feature_fields(),
        "model": model_fingerprint(model),
        "grad_dim": grad_dim(model, config.param_names),
        "projector": backend,
        "splits": {
            name: {"n": data_length(d), "fingerprint": data_fingerprint(d)}
            for name, d in splits.items()
        },
        "checkpoints": checkpoint_fps,
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }


def make_projector(
    model: nn.Module,
    config: TrakConfig,
    checkpoint: int,
    device: torch.device,
    max_proj_bytes: int,
) -> Projector | StructuredProjector:
    seed = checkpoint_seed(config.seed, checkpoint)
    if config.proj_type in STRUCTURED_TYPES:
        return StructuredProjector(
            model,
            config.param_names,
            config.proj_dim,
            seed,
            config.proj_type,
            device,
            max_proj_bytes,
        )
    return Projector(
        grad_dim(model, config.param_names),
        config.proj_dim,
        seed,
        config.proj_type,
        device,
        max_proj_bytes,
    )


def project_examples(
    model: nn.Module,
    projector: Projector | StructuredProjector,
    x: Tensor,
    y: Tensor,
    param_names: tuple[str, ...] | None,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Features (batch, k) float32 and Q (batch,) of a batch: projected margin gradients.

    ``offset`` is the global index of the first example, for error messages.
    """
    if isinstance(projector, StructuredProjector):  # no per-example gradients formed
        return projector.features(model, x, y, offset)
    grads, q = per_example_gradients(model, x, y, param_names, offset)
    return projector.project(grads), q


def featurize_split(
    model: nn.Module,
    data: Data,
    projector: Projector | StructuredProjector,
    param_names: tuple[str, ...] | None,
    batch_size: int,
) -> Callable[[int, int], tuple[np.ndarray, np.ndarray]]:
    """A chunk function for the store: projected gradients and Q of examples [start, stop)."""
    device = next(model.parameters()).device

    def chunk(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        feats, qs = [], []
        for lo in range(start, stop, batch_size):
            x, y = get_batch(data, lo, min(stop, lo + batch_size))
            projected, q = project_examples(
                model, projector, x.to(device), y.to(device), param_names, lo
            )
            feats.append(projected.cpu())
            qs.append(q.cpu())
        return torch.cat(feats).numpy(), torch.cat(qs).numpy()

    return chunk


def featurize(
    model: nn.Module,
    checkpoints: Sequence[StateDict],
    splits: Mapping[str, Data],
    config: TrakConfig,
    store_dir: str | os.PathLike[str],
    *,
    batch_size: int = 256,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
    max_proj_bytes: int = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
    seconds: dict[int, float] | None = None,
) -> FeatureStore:
    """Compute (or resume) projected gradient features for every checkpoint and split.

    Args:
        model: the architecture; its weights are replaced by each checkpoint in turn (on a
            copy: the caller's model is left as it was).
        checkpoints: M state dicts of independently trained models.
        splits: name -> data, e.g. ``{"train": (x, y), "test": (x, y)}``.
        config: features depend on its proj_dim, seed, proj_type, param_names, model_output.
        store_dir: the feature store directory; made with another config, model, dataset or
            checkpoints, it is refused with a message naming what differs.
        batch_size, chunk_size, device, max_proj_bytes: speed and memory only.
        progress: ``progress(stage, done, total)``, stage like ``"checkpoint 1/3: train"``.
        seconds: if given, filled with checkpoint -> wall seconds spent featurizing it now
            (all splits; checkpoints already complete on disk are left out).

    Returns:
        The store, holding (n, k) float32 features and (n,) Q per checkpoint and split.
    """
    if not checkpoints:
        raise ValueError("checkpoints must hold at least one state dict, got none")
    for name, data in splits.items():
        check_data(data, f"splits[{name!r}]")
    device = torch.device(device) if device is not None else default_device()
    work_model = copy.deepcopy(model).to(device)
    fps = check_distinct_checkpoints(checkpoints)
    backend = make_projector(work_model, config, 0, device, 0).backend
    store = FeatureStore(store_dir, store_meta(work_model, config, splits, fps, backend))
    for m, state in enumerate(checkpoints):
        if all(store.exists(m, name) for name in splits):
            continue
        started = time.perf_counter()
        work_model.load_state_dict(state)
        projector = None
        for name, data in splits.items():
            if store.exists(m, name):
                continue
            projector = projector or make_projector(work_model, config, m, device, max_proj_bytes)
            chunk_fn = featurize_split(work_model, data, projector, config.param_names, batch_size)
            stage = f"checkpoint {m + 1}/{len(checkpoints)}: {name}"
            report = (lambda d, t, s=stage: progress(s, d, t)) if progress else None
            store.compute(m, name, data_length(data), config.proj_dim, chunk_fn, chunk_size, report)
        if seconds is not None:
            seconds[m] = time.perf_counter() - started
    return store


class Attributor:
    """Kernel inverses and training directions of the featurized checkpoints.

    Args:
        store: a feature store with complete training features.
        lam: relative ridge term (see ``TrakConfig.lam``).
        n_checkpoints: how many checkpoints to use (default: all recorded in the store).
        train_split: name of the training split.
        allow_partial: use only the checkpoints whose features are complete instead of
            raising; ``self.used`` then lists them.

    Raises:
        MissingCheckpointError: some of the checkpoints have no complete features.
        IllConditionedKernelError: a kernel cannot be inverted reliably.
    """

    def __init__(
        self,
        store: FeatureStore,
        lam: float,
        n_checkpoints: int | None = None,
        train_split: str = "train",
        allow_partial: bool = False,
        required_splits: Sequence[str] = (),
    ) -> None:
        wanted = len(store.meta["checkpoints"]) if n_checkpoints is None else n_checkpoints
        splits = [train_split, *required_splits]
        present = [m for m in range(wanted) if all(store.exists(m, s) for s in splits)]
        missing = sorted(set(range(wanted)) - set(present))
        if missing and not allow_partial:
            raise MissingCheckpointError(
                f"features of checkpoint(s) {missing} (of {wanted}) are missing or incomplete "
                f"for split(s) {splits}; run featurize for them, or pass allow_partial=True to "
                f"average over the {len(present)} present"
            )
        if not present:
            raise MissingCheckpointError(f"no checkpoint has complete features in {store.root}")
        if missing:
            logger.warning("scoring with %d of %d checkpoints", len(present), wanted)
        n_train = store.meta["splits"][train_split]["n"]
        if n_train == 0:
            raise EmptyTrainingSetError("the training split has no examples")
        self.store, self.lam, self.used, self.train_split = store, lam, present, train_split
        self.kernels: list[scoring.KernelInverse] = []
        self.directions: list[np.ndarray] = []
        qs = []
        for m in present:
            feats, q = store.load(m, train_split)
            kinv = scoring.kernel_inverse(feats, lam)
            self.kernels.append(kinv)
            self.directions.append(scoring.train_directions(feats, kinv.inverse))
            qs.append(np.asarray(q))
        self.q = qs
        self.mean_q = scoring.mean_out_to_loss(qs)

    def target_features(self, split: str) -> list[np.ndarray]:
        """Per used checkpoint, (n_targets, k) stored features of ``split``."""
        return [np.asarray(self.store.load(m, split)[0]) for m in self.used]

    def scores(self, target_features: Sequence[np.ndarray]) -> np.ndarray:
        """(n_targets, n_train) float32 TRAK scores for per-checkpoint target features."""
        return scoring.trak_scores(target_features, self.directions, self.q).astype(np.float32)

    def index(self, use_gpu: bool | None = None) -> AttributionIndex:
        """A FAISS index whose inner products with ``query_vectors`` are the scores."""
        return AttributionIndex(index_vectors(self.directions, self.mean_q), use_gpu)


@dataclass(frozen=True)
class AttributionResult:
    """Scores and top-k of targets against a training set.

    Attributes:
        scores: (n_targets, n_train) float32 TRAK scores.
        helpful_ids, helpful_scores: (n_targets, k) largest scores first.
        harmful_ids, harmful_scores: (n_targets, k) smallest (most negative) first.
        checkpoints_used: how many checkpoints entered the scores.
    """

    scores: np.ndarray
    helpful_ids: np.ndarray
    helpful_scores: np.ndarray
    harmful_ids: np.ndarray
    harmful_scores: np.ndarray
    checkpoints_used: int


def score_features(
    store: FeatureStore,
    lam: float,
    target_split: str,
    k: int = 10,
    train_split: str = "train",
    allow_partial: bool = False,
) -> AttributionResult:
    """Scores and top-k from a store with features for ``train_split`` and ``target_split``."""
    attributor = Attributor(
        store,
        lam,
        train_split=train_split,
        allow_partial=allow_partial,
        required_splits=[target_split],
    )
    phi = attributor.target_features(target_split)
    queries = query_vectors(phi)
    index = attributor.index()
    helpful: TopK = index.helpful(queries, k)
    harmful: TopK = index.harmful(queries, k)
    return AttributionResult(
        scores=attributor.scores(phi),
        helpful_ids=helpful.ids,
        helpful_scores=helpful.scores,
        harmful_ids=harmful.ids,
        harmful_scores=harmful.scores,
        checkpoints_used=len(attributor.used),
    )


def attribute(
    model: nn.Module,
    checkpoints: Sequence[StateDict],
    train: Data,
    targets: Data,
    config: TrakConfig | None = None,
    *,
    k: int = 10,
    workdir: str | os.PathLike[str] | None = None,
    **featurize_options: Any,
) -> AttributionResult:
    """Attribute every target to the training set with TRAK, end to end.

    Args:
        model: the architecture (a classifier returning logits).
        checkpoints: M state dicts of independently trained models.
        train, targets: ``(x, y)`` tensors or map-style Datasets; targets use their labels.
        config: TrakConfig (defaults: k=2048, lam=0).
        k: how many helpful and harmful ids per target (capped at n_train).
        workdir: where features are stored (and resumed from); a temporary dir if None.
        **featurize_options: batch_size, chunk_size, device, max_proj_bytes, progress.

    Raises:
        EmptyTrainingSetError: ``train`` has no examples.
    """
    config = config or TrakConfig()
    check_data(train, "train")
    if data_length(train) == 0:
        raise EmptyTrainingSetError("train has no examples: there is nothing to attribute to")
    splits = {"train": train, "targets": targets}
    if workdir is not None:
        store = featurize(model, checkpoints, splits, config, Path(workdir), **featurize_options)
        return score_features(store, config.lam, "targets", k)
    with tempfile.TemporaryDirectory(prefix="trak-") as tmp:
        store = featurize(model, checkpoints, splits, config, tmp, **featurize_options)
        return score_features(store, config.lam, "targets", k)
