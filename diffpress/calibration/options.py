"""CalibrationOptions: what to run a pipeline on and how much to keep, validated once at the boundary.

The same defaults serve `diffpress calibrate`, `compress` (when a recipe's methods need data) and
`sensitivity`: 32 samples of 25 steps, 8 timestep buckets, 4 reservoir calls kept per bucket,
seed 0, uniform reservoir sampling.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import InputError, require_int
from .strategies import Strategy, StrategyName


@dataclass(frozen=True)
class CalibrationOptions:
    """prompts or labels: what the pipeline is run on (sample i takes item i % len); neither: the model's
    default (class labels 0..9 for the built-in digits model). num_samples: samples to generate (None:
    one per item). steps: sampler steps. buckets: timestep buckets. reservoir_size: denoiser calls
    kept per bucket for replay (methods that fit to real inputs need at least 1). seed: batch j uses a
    generator seeded seed + j. strategy: which calls the reservoir keeps (a name, or a Strategy with its
    parameters). batch_size: samples per call.
    """

    prompts: tuple[str, ...] | None = None
    labels: tuple[int, ...] | None = None
    num_samples: int | None = 32
    steps: int = 25
    buckets: int = 8
    reservoir_size: int = 4
    seed: int = 0
    strategy: StrategyName | Strategy = StrategyName.UNIFORM
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.prompts is not None and self.labels is not None:
            raise InputError("give prompts or labels, not both", "prompts")
        self._check_items()
        if self.num_samples is not None:
            require_int(self.num_samples, "num_samples", 1)
        for name, minimum in (("steps", 1), ("buckets", 1), ("reservoir_size", 0), ("seed", 0), ("batch_size", 1)):
            require_int(getattr(self, name), name, minimum)
        if isinstance(self.strategy, Strategy):
            return
        try:
            object.__setattr__(self, "strategy", StrategyName(self.strategy))
        except ValueError:
            allowed = ", ".join(s.value for s in StrategyName)
            raise InputError(f"strategy {self.strategy!r} is not one of: {allowed}", "strategy") from None

    def _check_items(self) -> None:
        if self.prompts is not None:
            object.__setattr__(self, "prompts", tuple(self.prompts))
            if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
                raise InputError(f"prompts must be non-empty strings, got {list(self.prompts)!r}", "prompts")
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
            if not self.labels or not all(isinstance(v, int) and not isinstance(v, bool) for v in self.labels):
                raise InputError(f"labels must be class indices (integers), got {list(self.labels)!r}", "labels")

    @property
    def items(self) -> tuple | None:
        """The prompts or labels given, or None (the model's default applies)."""
        return self.prompts if self.prompts is not None else self.labels

    def to_dict(self) -> dict:
        strategy = self.strategy.name if isinstance(self.strategy, Strategy) else self.strategy
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "strategy": strategy.value}
