"""A sensitivity run: which layers and candidates, and the measurement that fills a SensitivityReport."""
from __future__ import annotations

import time
from dataclasses import dataclass

from torch import nn

from ...calibration import CalibrationSet
from ...errors import InputError, require_int
from ...plan import parse_methods
from ...presets import DEFAULT_SENSITIVITY_CANDIDATES, SensitivityMethods, candidate
from ..swap import DEFAULT_SKIP
from .image_metric import ImageProbe, image_sensitivity
from .output_metric import output_sensitivity, replay_reference
from .report import SensitivityReport
from .variants import LayerVariants, measured_layers

METHOD_NOTES = {SensitivityMethods.RTN: "round-to-nearest variant of each candidate (bf16: weight cast)",
                SensitivityMethods.FULL: "each candidate's full preset, layer-wise on the float model's inputs "
                                         "(bf16: weight cast)"}


@dataclass(frozen=True)
class SensitivityOptions:
    """Budget and scope of a sensitivity run.

    candidates: formats to measure. calls_per_bucket: reservoir calls replayed per timestep bucket
    (cost grows linearly: layers x candidates x buckets x calls_per_bucket denoiser calls).
    image_layers: how many layers also get the image metric (None: every layer; 0: none; cost:
    that many x candidates sampler runs). skip: regexes of layers kept in high precision and not
    measured (default: the embedders / in / out projections). methods: which plan of each candidate
    is measured (`SensitivityMethods`; see the package docstring).
    """

    candidates: tuple[str, ...] = DEFAULT_SENSITIVITY_CANDIDATES
    calls_per_bucket: int = 1
    image_layers: int | None = None
    skip: tuple = DEFAULT_SKIP
    progress: bool = True
    methods: SensitivityMethods = SensitivityMethods.RTN

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        if not self.candidates:
            raise InputError("candidates is empty; give at least one of " + ", ".join(DEFAULT_SENSITIVITY_CANDIDATES),
                             "candidates")
        for name in self.candidates:
            candidate(name)
        require_int(self.calls_per_bucket, "calls_per_bucket", 1)
        if self.image_layers is not None:
            require_int(self.image_layers, "image_layers", 0)
        object.__setattr__(self, "methods", parse_methods(self.methods))

    def variants(self, denoiser: nn.Module, calibration: CalibrationSet) -> LayerVariants:
        """The modules this run measures (for methods=full: every layer quantized once per candidate)."""
        return LayerVariants.build(denoiser, calibration, self.candidates, self.methods, self.skip, self.progress)


def measure_sensitivity(denoiser: nn.Module, calibration: CalibrationSet,
                        options: SensitivityOptions = SensitivityOptions(),
                        image_probe: ImageProbe | None = None,
                        variants: LayerVariants | None = None) -> SensitivityReport:
    """Quantize each layer alone with each candidate; measure output SQNR per bucket (and image scores).

    `denoiser` is modified during the run and restored (every swapped layer is put back).
    `image_probe(denoiser)` returns final samples from fixed seeds; without it, no image metric.
    `variants`: the quantized modules to measure (default: `options.variants(denoiser, calibration)`).
    """
    layers = measured_layers(denoiser, options.skip)
    if not layers:
        raise InputError("no layer to measure: every Linear/Conv2d is on the skip list")
    variants = variants if variants is not None else options.variants(denoiser, calibration)
    started = time.perf_counter()
    replay = replay_reference(denoiser, calibration, options.calls_per_bucket)
    sqnr = output_sensitivity(denoiser, layers, replay, options.candidates, variants, options.progress)
    report = SensitivityReport([info for info, _ in layers], list(options.candidates), sorted(set(replay.buckets)),
                               sqnr, activation_absmax=_activation_ranges(calibration, layers))
    output_seconds = time.perf_counter() - started
    if image_probe is not None and options.image_layers != 0:
        report.image = image_sensitivity(denoiser, report, image_probe, options.image_layers, variants,
                                         options.progress)
    report.info = {"calls_replayed": len(replay.calls), "calls_per_bucket": options.calls_per_bucket,
                   "methods": options.methods.value, "measurement": METHOD_NOTES[options.methods],
                   "quantize_seconds": round(variants.seconds, 2), "output_seconds": round(output_seconds, 2),
                   "image_seconds": round(time.perf_counter() - started - output_seconds, 2)}
    return report


def _activation_ranges(calibration: CalibrationSet, layers) -> dict[str, list[float]]:
    buckets = range(calibration.buckets.num_buckets)
    ranges = {}
    for info, _ in layers:
        stats = calibration.layer_stats(info.fqn)
        ranges[info.fqn] = [round(stats[b].absmax, 6) if b in stats else None for b in buckets]
    return ranges
