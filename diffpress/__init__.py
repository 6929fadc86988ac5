"""diffpress: post-training compression for diffusion models.

The public API is imported lazily so that `import diffpress` stays light (no torch, no diffusers,
no triton). Every name below is documented in the README's "Python API" table; no subpackage or
module shares a name with an export (a test checks both), so `diffpress.compress` is always the verb.

`import diffpress` also registers post-import hooks (`diffpress._hooks`): when diffusers (or peft)
loads, the diffpress quantizer backend (and LoRA dispatch) is added to it, so that plain
`DiffusionPipeline.from_pretrained(dir)` reads diffpress output. Nothing heavy is imported until then.
"""
from __future__ import annotations

import importlib

from . import _hooks

__version__ = "0.1.0"

_EXPORTS = {
    # verbs
    "calibrate": "diffpress.api",
    "sensitivity": "diffpress.api",
    "allocate": "diffpress.api",
    "prune": "diffpress.api",
    "compress": "diffpress.api",
    "evaluate": "diffpress.api",
    "inspect": "diffpress.api",
    "prunable_units": "diffpress.api",
    "removable_blocks": "diffpress.api",
    "models": "diffpress.api",
    "save": "diffpress.io",
    "load": "diffpress.io",
    "quantize_": "diffpress.compression.swap",
    # plans
    "Plan": "diffpress.plan",
    "Recipe": "diffpress.recipe",
    "Rule": "diffpress.recipe",
    "QuantSpec": "diffpress.recipe",
    "MixedPrecision": "diffpress.plan",
    "Budget": "diffpress.plan",
    "PRESETS": "diffpress.presets",
    "PruneStage": "diffpress.prune_stage",
    "LearnOptions": "diffpress.prune_stage",
    "RoundingOptions": "diffpress.compression.rounding",
    "CaptureOptions": "diffpress.compression.layer_inputs",
    "QuantFormat": "diffpress.formats",
    "Granularity": "diffpress.formats",
    # calibration and sensitivity
    "CalibrationOptions": "diffpress.calibration",
    "CalibrationSet": "diffpress.calibration",
    "SensitivityOptions": "diffpress.compression.sensitivity.measure",
    "SensitivityMethods": "diffpress.presets",
    "SensitivityReport": "diffpress.compression.sensitivity.report",
    # errors
    "DiffpressError": "diffpress.errors",
    "InputError": "diffpress.errors",
    # diffusers
    "DiffpressConfig": "diffpress.integrations.diffusers_backend",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # a later submodule import cannot shadow what was already resolved
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"diffpress.{name}")  # subpackages, e.g. diffpress.calibration
        except ModuleNotFoundError as error:
            if error.name != f"diffpress.{name}":
                raise
    raise AttributeError(f"module 'diffpress' has no attribute {name!r}")


def _register_integrations() -> None:
    from . import integrations

    _hooks.when_imported("diffusers.quantizers.auto", integrations.on_diffusers_quantizers)
    _hooks.when_imported("diffusers.models.modeling_utils", integrations.on_modeling_utils)
    _hooks.when_imported("peft.tuners.lora.model", integrations.on_peft_lora_model)


_register_integrations()
