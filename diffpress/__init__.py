"""diffpress: post-training compression for diffusion models.

The public API is imported lazily so that `import diffpress` stays light (no diffusers, no triton).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load": "diffpress.io",
    "save": "diffpress.io",
    "compress": "diffpress.api",
    "calibrate": "diffpress.calibration",
    "CalibrationSet": "diffpress.calibration",
    "quantize_": "diffpress.compress.swap",
    "QuantSpec": "diffpress.recipe",
    "PRESETS": "diffpress.recipe",
    "QuantFormat": "diffpress.formats",
    "Granularity": "diffpress.formats",
    "DiffpressError": "diffpress.errors",
    "sensitivity": "diffpress.api",
    "allocate": "diffpress.api",
    "Budget": "diffpress.compress.allocate",
    "SensitivityOptions": "diffpress.compress.sensitivity",
    "SensitivityReport": "diffpress.compress.sensitivity",
}

__all__ = ["__version__", *_EXPORTS]


_SUBPACKAGES = ("calibration", "compress", "kernels", "zoo")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"diffpress.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'diffpress' has no attribute {name!r}")
