"""Timestep sampling strategies: which (sample, step) denoiser calls enter the input reservoir.

Each bucket keeps at most `size` calls. A strategy sees every call's normalized timestep
t in [0, 1] and decides, with a seeded key of the call (`reservoir.selection_key`), whether it is a
candidate:

- `uniform` (Q-Diffusion): every call is a candidate; reservoir sampling keeps a uniform random
  subset of each bucket's calls, so every denoising step is equally likely to be kept.
- `ndtc` (PTQ4DM, "normally distributed time-step calibration"): a call is a candidate with
  probability exp(-(t - mean)^2 / (2 std^2)), so the kept timesteps follow a normal distribution
  around `mean` (PTQ4DM centres it mid-trajectory); buckets far from the mean fill slowly or not at all.
- `eda` (EDA-DM, density and diversity): keeps a uniform candidate pool of `pool_factor * size`
  calls per bucket; at the end picks `size` of them greedily in a feature space (the denoiser input
  x_t average-pooled to at most 256 values, unit-normalized), scoring each by its density (mean
  cosine similarity to its k nearest candidates: typical inputs) plus its diversity (distance to the
  calls already picked: coverage), so the kept inputs are representative and not redundant.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from ..errors import InputError


class StrategyName(str, enum.Enum):
    UNIFORM = "uniform"
    NDTC = "ndtc"
    EDA = "eda"


@dataclass(frozen=True)
class Strategy:
    name: StrategyName = StrategyName.UNIFORM
    ndtc_mean: float = 0.4
    ndtc_std: float = 0.25
    eda_pool_factor: int = 4
    eda_neighbors: int = 5
    eda_diversity_weight: float = 0.5

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "name", StrategyName(self.name))
        except ValueError:
            allowed = ", ".join(s.value for s in StrategyName)
            raise InputError(f"strategy {self.name!r} is not one of: {allowed}", "strategy") from None
        if self.ndtc_std <= 0:
            raise InputError(f"ndtc_std must be positive, got {self.ndtc_std}", "strategy")

    def candidate_probability(self, t_normalized: float) -> float:
        if self.name is StrategyName.NDTC:
            return math.exp(-((t_normalized - self.ndtc_mean) ** 2) / (2 * self.ndtc_std ** 2))
        return 1.0

    def pool_size(self, size: int) -> int:
        return size * self.eda_pool_factor if self.name is StrategyName.EDA else size


def eda_select(features: torch.Tensor, size: int, neighbors: int, diversity_weight: float) -> list[int]:
    """Greedy density + diversity selection of `size` rows of `features` (EDA-DM); returns indices."""
    count = features.shape[0]
    if count <= size:
        return list(range(count))
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    similarity = unit @ unit.T
    k = min(neighbors, count - 1)
    density = (similarity.fill_diagonal_(-math.inf).topk(k, dim=1).values.sum(1) / k)
    distance = (2 - 2 * (unit @ unit.T)).clamp_min(0).sqrt()
    chosen = [int(density.argmax())]
    while len(chosen) < size:
        spread = distance[:, chosen].min(dim=1).values
        score = (1 - diversity_weight) * density + diversity_weight * spread
        score[chosen] = -math.inf
        chosen.append(int(score.argmax()))
    return sorted(chosen)


def eda_features(sample: torch.Tensor) -> torch.Tensor:
    """Per-call feature vector: the batch's x_t average-pooled to at most 256 values."""
    flat = sample.detach().float().reshape(1, 1, -1)
    return torch.nn.functional.adaptive_avg_pool1d(flat, min(256, flat.shape[-1])).flatten()
