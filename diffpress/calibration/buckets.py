"""Timestep buckets: equal-width bins over the normalized timestep t / timestep_range in [0, 1]."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class TimestepBuckets:
    """`num_buckets` equal-width bins over [0, 1]; bucket 0 holds the least noisy timesteps.

    `timestep_range` is what the denoiser's timestep argument is divided by: 1000 for UNets, DiTs
    and SD3 (which receive t in [0, 1000]); 1.0 for FLUX, whose pipeline passes timestep / 1000.
    """

    num_buckets: int = 8
    timestep_range: float = 1000.0

    def __post_init__(self) -> None:
        if isinstance(self.num_buckets, bool) or not isinstance(self.num_buckets, int) or self.num_buckets < 1:
            raise InputError(f"buckets must be an integer >= 1, got {self.num_buckets!r}", "buckets")
        if not (isinstance(self.timestep_range, (int, float)) and self.timestep_range > 0):
            raise InputError(f"timestep_range must be positive, got {self.timestep_range!r}", "timestep_range")

    def normalize(self, timestep: float) -> float:
        return min(max(timestep / self.timestep_range, 0.0), 1.0)

    def bucket_of(self, timestep: float) -> int:
        return min(int(self.normalize(timestep) * self.num_buckets), self.num_buckets - 1)

    def bounds(self, bucket: int) -> tuple[float, float]:
        """The [low, high) range of raw timesteps a bucket covers."""
        width = self.timestep_range / self.num_buckets
        return bucket * width, (bucket + 1) * width
