"""What the verbs run between loading a model and writing a result, each written once.

`prune_subject`: one prune stage on a subject's denoiser (prune and a recipe's prune stages run it).

`measure`: sensitivity of a subject's denoiser (the image probe, the measured modules, the
report); `sensitivity` and a mixed-precision `compress` both run it. `mixed_recipe`: measure, then
allocate, giving the exact-name recipe and the modules it was measured with (so nothing is
quantized twice).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from .calibration import CalibrationOptions, CalibrationSet
from .compression import selection
from .compression.allocate import Allocation, allocate_report, load_latency_table
from .compression.sensitivity.image_metric import ImageProbe
from .compression.sensitivity.measure import SensitivityOptions, measure_sensitivity
from .compression.sensitivity.report import SensitivityReport
from .compression.sensitivity.variants import LayerVariants
from .errors import InputError
from .plan import MixedPrecision
from .prune_stage import NEEDS_CALIBRATION, Cost, LearnObjective, Method, PruneStage, Unit
from .recipe import Recipe
from .subject import Subject


@dataclass
class Measured:
    report: SensitivityReport
    variants: LayerVariants
    probe: ImageProbe | None


def image_probe_for(subject: Subject, calibration: CalibrationOptions, image_layers: int | None, samples: int,
                    steps: int | None, given: ImageProbe | None) -> ImageProbe | None:
    """The probe of the image metric: the one given, else one sampling the subject's pipeline; None when
    the image metric is off (image_layers 0). InputError when it is on and nothing can sample."""
    if image_layers == 0:
        return None
    if given is not None:
        return given
    probe = subject.image_probe(calibration, samples, steps or calibration.steps)
    if probe is None:
        raise InputError(f"{subject.name}: the image metric samples images, which needs a pipeline and prompts or "
                         "labels to sample on; pass image_layers=0 (--image-layers 0: output metric only) or, in "
                         "Python, image_probe=callable(denoiser) -> samples", "image_layers")
    return probe


def measure(denoiser: nn.Module, calibration_set: CalibrationSet, options: SensitivityOptions,
            probe: ImageProbe | None) -> Measured:
    variants = options.variants(denoiser, calibration_set)
    return Measured(measure_sensitivity(denoiser, calibration_set, options, probe, variants), variants, probe)


@dataclass
class MixedOutcome:
    recipe: Recipe
    allocation: Allocation
    ready: dict[str, nn.Module] | None  # the measured module of every chosen layer (methods=full)
    report: SensitivityReport


def latency_table(mixed: MixedPrecision) -> dict[str, float] | None:
    """The plan's latency table, read and checked (do this before any long work)."""
    return load_latency_table(mixed.latency_table, mixed.candidates) if mixed.latency_table else None


def mixed_recipe(subject: Subject, calibration_set: CalibrationSet, mixed: MixedPrecision,
                 calibration: CalibrationOptions, image_probe: ImageProbe | None, table: dict[str, float] | None,
                 progress: bool) -> MixedOutcome:
    """Measure every layer with each candidate, allocate under the budget, and say what to quantize."""
    options = SensitivityOptions(mixed.candidates, mixed.calls_per_bucket, mixed.image_layers, progress=progress,
                                 methods=mixed.methods)
    probe = image_probe_for(subject, calibration, mixed.image_layers, mixed.image_samples, mixed.image_steps,
                            image_probe)
    measured = measure(subject.denoiser, calibration_set, options, probe)
    allocation = _chosen_allocation(subject, calibration, mixed, measured, table, image_probe, progress)
    return MixedOutcome(allocation.to_recipe(mixed.methods), allocation,
                        measured.variants.full_modules(allocation.choice), measured.report)


VALIDATION_SEED = 1  # the image metric's probe samples seed 0


def _chosen_allocation(subject: Subject, calibration: CalibrationOptions, mixed: MixedPrecision, measured: Measured,
                       table, given_probe: ImageProbe | None, progress: bool) -> Allocation:
    """The image-metric allocation, or with validation samples the best of the contenders measured on held-out
    samples (a probe given in Python is used as it is: its seeds are its own)."""
    if not mixed.validation_samples or measured.probe is None:
        return allocate_report(measured.report, mixed.budget, latency_table=table)
    probe = given_probe or subject.image_probe(calibration, mixed.validation_samples,
                                               mixed.image_steps or calibration.steps, VALIDATION_SEED)
    allocations = selection.contenders(measured.report, mixed.budget, latency_table=table)
    if len(allocations) == 1:
        return allocations[selection.IMAGE_METRIC]
    allocation, chosen = selection.select(subject.denoiser, allocations, measured.variants, probe,
                                          mixed.validation_samples, progress)
    allocation.selection = chosen.to_dict()
    return allocation


def prune_subject(subject: Subject, stage: PruneStage, calibration, progress: bool):
    """Run `stage` on the subject's denoiser, in place (the pipeline's, when it has one: the learned mask samples
    it). calibration: options or a set, for the baselines that read statistics (taylor, activation)."""
    from .pruning import prune_denoiser

    pipe = None
    learned = stage.method is Method.LEARNED
    objective = stage.learn.objective or LearnObjective.default(subject.has_pipeline)
    if subject.has_pipeline:
        pipe = subject.pipeline("pruning")
    elif learned and objective is LearnObjective.TRAJECTORY:
        subject.pipeline("the learned mask samples the model's pipeline",
                         ": use learn objective replay, or --method taylor|activation|magnitude|random, with "
                         "--calibration FILE")
    options = calibration if isinstance(calibration, CalibrationOptions) else CalibrationOptions()
    calibration_set = None
    blocks = stage.unit is Unit.BLOCKS and stage.method is not Method.RANDOM
    replayed = learned and objective is LearnObjective.REPLAY
    if stage.method in NEEDS_CALIBRATION or blocks or replayed or stage.cost is Cost.LATENCY or stage.recover_steps \
            or pipe is None:
        calibration_set = subject.calibration_set(calibration, progress)
    steps, guidance = subject.sampling_defaults
    if stage.guidance_scale is None:
        stage = replace(stage, guidance_scale=guidance)
    return prune_denoiser(subject.denoiser, stage, pipe=pipe, items=subject.items(options),
                          calibration=calibration_set, default_steps=steps or options.steps, progress=progress)
