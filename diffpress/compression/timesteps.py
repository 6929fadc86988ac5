"""Run-time timestep tracking for static (per timestep bucket) activation scales.

A forward pre-hook on the denoiser reads each call's timestep by value (as calibration does) and
stores its bucket; quantized layers with static activation scales index their per-bucket scales
with it. The tracker hangs on the denoiser as `diffpress_timestep_tracker`.
"""
from __future__ import annotations

import inspect

from torch import nn

from ..calibration.buckets import TimestepBuckets
from ..calibration.collector import timestep_value
from ..errors import DiffpressError

TRACKER_ATTRIBUTE = "diffpress_timestep_tracker"


class TimestepTracker:
    def __init__(self, buckets: TimestepBuckets) -> None:
        self.buckets = buckets
        self.bucket: int | None = None
        self._signature = None

    def on_call(self, module, args, kwargs) -> None:
        if self._signature is None:
            self._signature = inspect.signature(module.forward)
        timestep = self._signature.bind(*args, **kwargs).arguments.get("timestep")
        self.bucket = self.buckets.bucket_of(timestep_value(timestep))

    def on_return(self, module, args, output) -> None:
        self.bucket = None

    def current_bucket(self, layer: str) -> int:
        if self.bucket is None:
            raise DiffpressError(f"layer {layer} uses static per-timestep activation scales: call it through "
                                 "its denoiser, which passes the timestep")
        return self.bucket


def attach_tracker(denoiser: nn.Module, buckets: TimestepBuckets) -> TimestepTracker:
    """Install (or return the existing) tracker on the denoiser."""
    tracker = getattr(denoiser, TRACKER_ATTRIBUTE, None)
    if tracker is not None:
        return tracker
    tracker = TimestepTracker(buckets)
    denoiser.register_forward_pre_hook(tracker.on_call, with_kwargs=True)
    denoiser.register_forward_hook(tracker.on_return)
    object.__setattr__(denoiser, TRACKER_ATTRIBUTE, tracker)
    return tracker
