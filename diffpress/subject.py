"""The model a verb works on: a checkpoint (pipeline or bare denoiser directory, or builtin:NAME) or an
in-memory pipeline or denoiser, loaded once, with what it can be calibrated and sampled on.

A pipeline can calibrate itself and sample images; a bare denoiser can do neither, so it needs a
saved calibration set (or a CalibrationSet object) and, for the image metric, a probe callable.
What each verb needs is asked for here, with one message per missing piece.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from . import checkpoint as checkpoints
from .calibration import CalibrationOptions, CalibrationSet, calibrate, find_denoiser
from .compression.sensitivity.image_metric import ImageProbe, pipeline_image_probe
from .compression.surgery import compressible_layers
from .errors import InputError

Calibration = CalibrationOptions | CalibrationSet | str | Path


@dataclass
class Subject:
    """`source`: the validated checkpoint (None for in-memory objects). The pipeline and the denoiser
    are loaded on first use; a loaded pipeline's denoiser is the one the verb works on."""

    name: str
    source: checkpoints.Checkpoint | None
    _pipeline: object | None = None
    _denoiser: nn.Module | None = None
    default_items: tuple | None = field(default=None)

    @classmethod
    def open(cls, model, refuse_compressed: bool = True) -> "Subject":
        """A checkpoint path / builtin:NAME, a diffusers pipeline object, or a denoiser module."""
        if isinstance(model, nn.Module):
            return cls(type(model).__name__, None, _denoiser=model)
        if not isinstance(model, (str, Path)):
            return cls(type(model).__name__, None, _pipeline=model, _denoiser=find_denoiser(model))
        source = checkpoints.resolve(model)
        if refuse_compressed:
            _refuse_compressed(source)
        return cls(str(model), source, default_items=_builtin_items(model))

    @property
    def sampling_defaults(self) -> tuple[int | None, float | None]:
        """(steps, guidance scale) the model is sampled with by default: a built-in's own, else (None, None)."""
        from .zoo import BUILTIN_PREFIX, builtin

        if isinstance(self.name, str) and self.name.startswith(BUILTIN_PREFIX):
            entry = builtin(self.name)
            return entry.eval_steps, entry.eval_guidance
        return None, None

    @property
    def root(self) -> Path | None:
        return self.source.root if self.source else None

    @property
    def has_pipeline(self) -> bool:
        return self._pipeline is not None or (self.source is not None and self.source.is_pipeline)

    def pipeline(self, why: str, remedy: str = ""):
        """The pipeline (loaded on first use); InputError saying `why` it is needed (and the `remedy`) when
        there is none."""
        if self._pipeline is None:
            if not self.has_pipeline:
                raise InputError(f"{self.name}: {why}, which needs a pipeline (a pipeline directory with "
                                 f"model_index.json, or builtin:NAME); this is a bare denoiser{remedy}", "model")
            self._pipeline = checkpoints.load_pipeline(self.source.root)
            self._denoiser = find_denoiser(self._pipeline)
        return self._pipeline

    @property
    def denoiser(self) -> nn.Module:
        if self._denoiser is None:
            self._denoiser = checkpoints.load_denoiser(self.source)
        return self._denoiser

    def items(self, options: CalibrationOptions) -> tuple | None:
        """The prompts or labels given, else the model's default (built-ins), else None."""
        return options.items if options.items is not None else self.default_items

    def calibration_set(self, calibration: Calibration, progress: bool = False) -> CalibrationSet:
        """A CalibrationSet as given, loaded from a file, or made now by running the pipeline."""
        if isinstance(calibration, CalibrationSet):
            result = calibration
        elif isinstance(calibration, (str, Path)):
            result = CalibrationSet.load(calibration)
        else:
            result = self._calibrate(calibration, progress)
        check_calibration_matches(self.denoiser, result)
        return result

    def _calibrate(self, options: CalibrationOptions, progress: bool) -> CalibrationSet:
        pipe = self.pipeline("this needs calibration data, and calibrating runs the model's sampler",
                             ": pass a saved calibration set (--calibration FILE)")
        items = self.items(options)
        if not items:
            raise InputError(f"{self.name}: nothing to calibrate on: give prompts (--calib-prompts FILE) or class "
                             "labels (--calib-labels), or a saved calibration set (--calibration FILE)", "prompts")
        return calibrate(pipe, items, options=options, progress=progress)

    def image_probe(self, options: CalibrationOptions, samples: int, steps: int, seed: int = 0) -> ImageProbe | None:
        """A probe sampling `samples` of the calibration items for `steps` steps (generator seed `seed`); None
        when the subject has no pipeline or nothing to sample on."""
        items = self.items(options)
        if not self.has_pipeline or not items:
            return None
        return pipeline_image_probe(self.pipeline("the image metric samples images"), list(items), samples, steps,
                                    seed)


def check_calibration_matches(denoiser: nn.Module, calibration: CalibrationSet) -> None:
    """A calibration set recorded on another model is refused before any work: it names layers this model
    lacks, or none of this model's layers. (Layers a model never calls have no statistics; that is fine.)"""
    recorded = set(calibration.layers)
    layers = {fqn for fqn, _ in compressible_layers(denoiser)}
    unknown = sorted(recorded - layers)
    if unknown or not recorded & layers:
        example = f" (e.g. {unknown[0]!r})" if unknown else ""
        raise InputError(f"the calibration set was recorded on another model: {len(unknown)} of its layers are not "
                         f"in this one{example}, and it shares {len(recorded & layers)} of this model's "
                         f"{len(layers)} layers", "calibration")


def _refuse_compressed(source: checkpoints.Checkpoint) -> None:
    config = checkpoints.read_json(source.denoiser_dir / "config.json")
    if (config.get("quantization_config") or {}).get("layers"):  # pruned-only models may be quantized
        raise InputError(f"{source.denoiser_dir}: already compressed; load it with diffpress.load, "
                         "or compress the original checkpoint", "model")


def _builtin_items(model) -> tuple | None:
    from .zoo import BUILTIN_PREFIX, builtin

    if not (isinstance(model, str) and model.startswith(BUILTIN_PREFIX)):
        return None
    entry = builtin(model)
    return entry.calibration_labels or entry.calibration_prompts
