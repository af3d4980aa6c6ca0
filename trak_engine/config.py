"""Configuration of an attribution run: a frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trak_engine.structured import STRUCTURED_TYPES, kronecker_factors

PROJECTION_TYPES = ("gaussian", "rademacher", "none", *STRUCTURED_TYPES)
MODEL_OUTPUTS = ("margin",)


@dataclass(frozen=True)
class TrakConfig:
    """What determines the features and scores (and nothing that only affects speed).

    Attributes:
        proj_dim: k, the dimension of the projected gradients.
        lam: ridge term, relative to the mean eigenvalue of Phi^T Phi: the kernel is
            ``Phi^T Phi + lam * trace(Phi^T Phi) / k * I``. 0 means the paper's plain inverse;
            the engine then refuses a rank-deficient kernel instead of returning noise. The
            default 10 was chosen by the linear datamodeling score at k = 2048 (the best lam
            grows with k, about k / 200: docs/lds-demo.md, docs/benchmarks.md).
        seed: base seed of the projection; checkpoint m uses a seed derived from (seed, m).
        proj_type: ``"khatri_rao"`` (the default: as good as a dense Gaussian matrix by the
            linear datamodeling score and tens of times faster, docs/benchmarks.md),
            ``"gaussian"`` or ``"rademacher"`` entries, scaled by ``1/sqrt(k)``;
            ``"none"`` uses the raw gradients as features (proj_dim must equal their size);
            ``"khatri_rao"`` or ``"kronecker"`` project ``nn.Linear`` layers from their inputs
            and output gradients without forming per-example gradients (see
            ``trak_engine.structured``; ``"kronecker"`` needs proj_dim = k_out * k_in with
            factors at most 1:16 apart, e.g. a power of two).
        param_names: take gradients for these parameters only (names as in
            ``model.named_parameters()``); ``None`` means all parameters.
        model_output: the model output function; ``"margin"`` is the classification margin.
    """

    proj_dim: int = 2048
    lam: float = 10.0
    seed: int = 0
    proj_type: str = "khatri_rao"
    param_names: tuple[str, ...] | None = None
    model_output: str = "margin"

    def __post_init__(self) -> None:
        if isinstance(self.proj_dim, bool) or not isinstance(self.proj_dim, int):
            raise TypeError(f"proj_dim must be an int, got {type(self.proj_dim).__name__}")
        if self.proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1, got {self.proj_dim}")
        if not isinstance(self.lam, (int, float)) or not self.lam >= 0:
            raise ValueError(f"lam must be a finite number >= 0, got {self.lam!r}")
        if self.lam == float("inf"):
            raise ValueError(f"lam must be a finite number >= 0, got {self.lam!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.proj_type not in PROJECTION_TYPES:
            raise ValueError(f"proj_type must be one of {PROJECTION_TYPES}, got {self.proj_type!r}")
        if self.proj_type == "kronecker":
            kronecker_factors(self.proj_dim)  # raises for a proj_dim without balanced factors
        if self.model_output not in MODEL_OUTPUTS:
            raise ValueError(
                f"model_output must be one of {MODEL_OUTPUTS}, got {self.model_output!r}"
            )
        if self.param_names is not None:
            names = tuple(self.param_names)
            if not names or not all(isinstance(n, str) for n in names):
                raise ValueError(
                    f"param_names must be None or a non-empty tuple of str, got {names!r}"
                )
            object.__setattr__(self, "param_names", names)

    def feature_fields(self) -> dict[str, Any]:
        """The fields that determine the features (lam only enters the scores)."""
        fields = dataclasses.asdict(self)
        fields.pop("lam")
        if fields["param_names"] is not None:
            fields["param_names"] = list(fields["param_names"])
        return fields

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        if fields["param_names"] is not None:
            fields["param_names"] = list(fields["param_names"])
        return fields

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrakConfig:
        data = dict(data)
        if data.get("param_names") is not None:
            data["param_names"] = tuple(data["param_names"])
        return cls(**data)
