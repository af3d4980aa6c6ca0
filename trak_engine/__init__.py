"""TRAK engine: training-data attribution (Park et al., ICML 2023) without any UI code.

Stages, one module each: ``outputs`` (model output and out-to-loss term), ``gradients``
(per-example gradients with ``torch.func``), ``projection`` (seeded random projection),
``store`` (resumable on-disk features), ``scores`` (kernel and scores), ``index`` (FAISS top-k)
and ``lds`` (linear datamodeling score). ``api`` ties them together.
"""

from trak_engine.api import AttributionResult, attribute, featurize, score_features
from trak_engine.config import TrakConfig
from trak_engine.errors import (
    ConfigMismatchError,
    IllConditionedKernelError,
    MissingCheckpointError,
    NonFiniteError,
    TrakError,
)
from trak_engine.index import AttributionIndex

__all__ = [
    "AttributionIndex",
    "AttributionResult",
    "ConfigMismatchError",
    "IllConditionedKernelError",
    "MissingCheckpointError",
    "NonFiniteError",
    "TrakConfig",
    "TrakError",
    "attribute",
    "featurize",
    "score_features",
]
