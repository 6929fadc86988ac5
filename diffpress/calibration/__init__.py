"""Timestep-aware calibration: hook a denoiser, record per-layer input statistics per timestep
bucket and a bounded reservoir of denoiser inputs. Never imports compress or kernels."""
from .buckets import TimestepBuckets
from .calibration_set import CalibrationSet
from .collector import CalibrationError, Collector, find_denoiser
from .drive import calibrate, collect
from .options import CalibrationOptions
from .stats import ActStats
from .strategies import Strategy, StrategyName

__all__ = ["ActStats", "CalibrationError", "CalibrationOptions", "CalibrationSet", "Collector", "Strategy", "StrategyName",
           "TimestepBuckets", "calibrate", "collect", "find_denoiser"]
