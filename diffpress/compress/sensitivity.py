"""Per-layer quantization sensitivity, per timestep bucket (MixDQ, Zhao et al. 2024).

For every quantizable layer and every candidate format, the layer alone is quantized (every other
layer stays float) and the damage is measured two ways, decoupled as MixDQ does:

- output metric, for every layer: SQNR (dB) of the denoiser's output against the cached float
  output, on calls replayed from the calibration reservoir, one value per timestep bucket;
- image metric: PSNR/SSIM and relative error of final samples (seeded samples through the
  sampler) against the float model's samples; by default for every layer, or for a budget of
  `image_layers` layers.

Why two: one denoiser call's output SQNR sees the error of a single step, and the sampler amplifies
some layers' errors into the image far more than others. On builtin:digits at W4A8 (full methods),
the ratio of image to output relative error spans 85x across layers: 3.5x for the first down-block's
conv1, 300x for a mid-block time-embedding projection (bench/results/mixed-precision-digits-
sensitivity.json). The two rankings agree broadly (Spearman 0.97) but not on the layers a budget
decides between: at 5 average bits, the allocation costed by the image metric measured 38.69 dB,
the one costed by the output metric 37.10 dB (bench/results/mixed-precision-digits.json). So the
allocator's cost is the image relative error wherever it was measured. When the image budget is
smaller than the layer count, it goes to the layers where the output metric is least trustworthy:
(a) the largest per-bucket SQNR spread and (b) the largest output error, half each; the rest are
costed by the output metric, brought to image units by one global factor
(`SensitivityReport.output_to_image`).

What is measured (`SensitivityOptions.methods`):
- "full": each candidate's full preset (learned rounding, clipping search, smoothing), exactly the
  module a mixed recipe would contain. The model is quantized once per candidate (on a copy); the
  PTQ methods are layer-wise on the float model's recorded inputs, so these modules are reused
  unchanged by `compress --preset mixed`. Learned rounding recovers far more on some layers than on
  others, so it changes which layers need 8 bits; this is what mixed precision uses.
- "rtn": each candidate's round-to-nearest variant (`PRESET-rtn`), built on demand: no data, seconds
  per layer; what the sensitivity report uses by default. `bf16` rounds the weight to bfloat16 and back.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import CalibrationSet
from ..calibration.reservoir import ReservoirEntry
from ..errors import DiffpressError, InputError
from ..formats import spec_of
from ..kernels.layout import qdata_dtype, qdata_shape, scale_dtype_for, scales_shape
from ..recipe import QuantSpec, preset
from .swap import DEFAULT_SKIP, quantizable_layers, quantized_module, set_submodule, skip_reason

HIGH_PRECISION = "bf16"
METHODS = ("rtn", "full")


@dataclass(frozen=True)
class Candidate:
    """One candidate format: a preset name (or `bf16`: kept in high precision), with its bit widths."""

    name: str
    weight_bits: int
    act_bits: int

    @property
    def spec(self) -> QuantSpec | None:
        """The full plan used when the layer is compressed with this candidate (None: high precision)."""
        return None if self.name == HIGH_PRECISION else preset(self.name)

    @property
    def measurement_spec(self) -> QuantSpec | None:
        """The fast plan sensitivity is measured with: the preset's round-to-nearest variant."""
        return None if self.name == HIGH_PRECISION else preset(self.name + "-rtn")

    def packed_bytes(self, shape: tuple[int, int]) -> int:
        """Bytes of the stored weight of an (N, K) layer: codes plus scales, in the kernel layout."""
        if self.spec is None:
            return 2 * shape[0] * shape[1]
        spec = self.spec
        codes = math.prod(qdata_shape(spec.weight_format, shape)) * _itemsize(qdata_dtype(spec.weight_format))
        scales = math.prod(scales_shape(spec.granularity, shape, spec.group_size))
        return codes + scales * _itemsize(scale_dtype_for(spec.granularity))


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _candidate_of(name: str) -> Candidate:
    if name == HIGH_PRECISION:
        return Candidate(name, 16, 16)
    spec = preset(name)
    act_bits = spec_of(spec.act_format).bits if spec.act_format is not None else 16
    return Candidate(name, spec_of(spec.weight_format).bits, act_bits)


CANDIDATES: dict[str, Candidate] = {name: _candidate_of(name) for name in
                                    (HIGH_PRECISION, "w8a8-int8", "w8a8-fp8", "w4a8-int", "w4a16-int4", "w4a8-fp4")}


def candidate(name: str) -> Candidate:
    """A candidate by name: the table's six, or any preset name (not its -rtn variant)."""
    if name in CANDIDATES:
        return CANDIDATES[name]
    if name.endswith("-rtn"):
        raise InputError(f"candidate {name!r}: name the preset ({name[:-4]}); its -rtn variant is what "
                         "sensitivity measures with anyway")
    try:
        return _candidate_of(name)
    except InputError:
        raise InputError(f"unknown candidate format {name!r}; allowed: {', '.join(CANDIDATES)} "
                         "or any preset name") from None


@dataclass(frozen=True)
class SensitivityOptions:
    """Budget and scope of a sensitivity run.

    candidates: formats to measure. calls_per_bucket: reservoir calls replayed per timestep bucket
    (cost grows linearly: layers x candidates x buckets x calls_per_bucket denoiser calls).
    image_layers: how many layers also get the image metric (None: every layer; 0: none; cost:
    that many x candidates sampler runs). skip: regexes of layers kept in high precision and not
    measured (default: the embedders / in / out projections). methods: "rtn" or "full" (what each
    candidate is measured with; see the module docstring).
    """

    candidates: tuple[str, ...] = tuple(CANDIDATES)
    calls_per_bucket: int = 1
    image_layers: int | None = None
    skip: tuple = DEFAULT_SKIP
    progress: bool = True
    methods: str = "rtn"

    def __post_init__(self) -> None:
        if not self.candidates:
            raise InputError("candidates is empty; give at least one of " + ", ".join(CANDIDATES))
        for name in self.candidates:
            candidate(name)
        if self.calls_per_bucket < 1:
            raise InputError(f"calls_per_bucket must be at least 1, got {self.calls_per_bucket}")
        if self.image_layers is not None and self.image_layers < 0:
            raise InputError(f"image_layers must be >= 0 (or None: every layer), got {self.image_layers}")
        if self.methods not in METHODS:
            raise InputError(f"methods {self.methods!r} is not one of: {', '.join(METHODS)}")


@dataclass(frozen=True)
class LayerInfo:
    fqn: str
    kind: str  # Linear / Conv2d
    shape: tuple[int, int]  # the (N, K) matrix the weight is stored as

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class ImageScore:
    psnr_db: float
    ssim: float | None
    relative_error: float  # |ref - x|^2 / |ref|^2 over the samples, comparable to 10^(-SQNR/10)


@dataclass
class SensitivityReport:
    """Per (layer, candidate): output SQNR per bucket; image scores for a few layers; activation ranges."""

    layers: list[LayerInfo]
    candidates: list[str]
    buckets: list[int]  # the timestep buckets measured, in order
    output_sqnr: dict[str, dict[str, list[float]]]  # fqn -> candidate -> dB per bucket (-inf: non-finite)
    image: dict[str, dict[str, ImageScore]] = field(default_factory=dict)
    activation_absmax: dict[str, list[float]] = field(default_factory=dict)  # fqn -> input absmax per bucket
    info: dict = field(default_factory=dict)

    def layer(self, fqn: str) -> LayerInfo:
        return next(layer for layer in self.layers if layer.fqn == fqn)

    def output_error(self, fqn: str, name: str) -> float:
        """Relative noise power of the denoiser output, averaged over buckets (inf if non-finite)."""
        values = self.output_sqnr[fqn][name]
        return sum(10 ** (-v / 10) if v != -math.inf else math.inf for v in values) / len(values)

    def output_sqnr_db(self, fqn: str, name: str) -> float:
        return _db(self.output_error(fqn, name))

    def cost(self, fqn: str, name: str) -> float:
        """What the allocator minimizes: the image relative error where it was measured, otherwise the
        output relative error brought to image units (`output_to_image`)."""
        image = self.image.get(fqn, {}).get(name)
        if image is not None:
            return image.relative_error
        return self.output_to_image * self.output_error(fqn, name)

    @property
    def output_to_image(self) -> float:
        """One factor mapping output relative error onto image relative error: the ratio of their totals
        over every image-measured (layer, candidate); 1 when no layer has the image metric. It only
        matters when some layers have the image metric and others do not."""
        pairs = [(self.output_error(f, c), score.relative_error) for f, per in self.image.items()
                 for c, score in per.items() if math.isfinite(score.relative_error)]
        pairs = [(o, i) for o, i in pairs if math.isfinite(o)]
        output_total = sum(o for o, _ in pairs)
        return sum(i for _, i in pairs) / output_total if output_total > 0 else 1.0

    def ranking(self, name: str) -> list[str]:
        """Layers from most to least sensitive to candidate `name` (ties by name)."""
        return sorted(self.output_sqnr, key=lambda fqn: (-self.cost(fqn, name), fqn))

    def bucket_spread_db(self, fqn: str, name: str) -> float:
        finite = [v for v in self.output_sqnr[fqn][name] if math.isfinite(v)]
        return max(finite) - min(finite) if finite else 0.0

    def to_dict(self) -> dict:
        return {"layers": [{"fqn": l.fqn, "kind": l.kind, "shape": list(l.shape)} for l in self.layers],
                "candidates": self.candidates, "buckets": self.buckets,
                "output_sqnr_db": {f: {c: [_json_float(v) for v in vs] for c, vs in per.items()}
                                   for f, per in self.output_sqnr.items()},
                "image": {f: {c: {k: _json_float(v) if isinstance(v, float) else v for k, v in vars(s).items()}
                              for c, s in per.items()} for f, per in self.image.items()},
                "activation_absmax": self.activation_absmax, "info": self.info}

    @classmethod
    def from_dict(cls, data: dict) -> "SensitivityReport":
        layers = [LayerInfo(l["fqn"], l["kind"], tuple(l["shape"])) for l in data["layers"]]
        sqnr = {f: {c: [-math.inf if v is None else v for v in vs] for c, vs in per.items()}
                for f, per in data["output_sqnr_db"].items()}
        image = {f: {c: _image_score_from(s) for c, s in per.items()} for f, per in data.get("image", {}).items()}
        return cls(layers, list(data["candidates"]), list(data["buckets"]), sqnr, image,
                   data.get("activation_absmax", {}), data.get("info", {}))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityReport":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _db(error: float) -> float:
    if error == 0:
        return math.inf
    return -10 * math.log10(error) if math.isfinite(error) else -math.inf


def _json_float(value: float) -> float | None:
    """JSON has no infinities: non-finite values (a layer that broke the model) are written as null."""
    return value if math.isfinite(value) else None


def _image_score_from(data: dict) -> "ImageScore":
    broken = data["relative_error"] is None
    return ImageScore(-math.inf if broken else data["psnr_db"], data["ssim"],
                      math.inf if broken else data["relative_error"])


# ----------------------------------------------------------------------------------- measurement


ImageProbe = Callable[[nn.Module], torch.Tensor]  # runs a few seeded samples through the denoiser


@dataclass
class _Replay:
    """The replayed calls, their buckets and the cached float outputs."""

    calls: list[ReservoirEntry]
    buckets: list[int]
    reference: list[torch.Tensor]


def measure_sensitivity(denoiser: nn.Module, calibration: CalibrationSet,
                        options: SensitivityOptions = SensitivityOptions(),
                        image_probe: ImageProbe | None = None,
                        variants: "LayerVariants | None" = None) -> SensitivityReport:
    """Quantize each layer alone with each candidate; measure output SQNR per bucket (and image scores).

    `denoiser` is modified during the run and restored (every swapped layer is put back).
    `image_probe(denoiser)` returns final samples from fixed seeds; without it, no image metric.
    `variants`: the quantized modules to measure (default: `LayerVariants.build(...)` with `options`).
    """
    layers = measured_layers(denoiser, options.skip)
    if not layers:
        raise InputError("no layer to measure: every Linear/Conv2d is on the skip list")
    if variants is None:
        variants = LayerVariants.build(denoiser, calibration, options)
    started = time.perf_counter()
    replay = _replay(denoiser, calibration, options.calls_per_bucket)
    sqnr = _output_sensitivity(denoiser, layers, replay, options, variants)
    report = SensitivityReport([info for info, _ in layers], list(options.candidates), sorted(set(replay.buckets)),
                               sqnr, activation_absmax=_activation_ranges(calibration, layers))
    output_seconds = time.perf_counter() - started
    if image_probe is not None and options.image_layers != 0:
        report.image = _image_sensitivity(denoiser, layers, report, image_probe, options, variants)
    report.info = {"calls_replayed": len(replay.calls), "calls_per_bucket": options.calls_per_bucket,
                   "methods": options.methods, "measurement": METHOD_NOTES[options.methods],
                   "quantize_seconds": round(variants.seconds, 2), "output_seconds": round(output_seconds, 2),
                   "image_seconds": round(time.perf_counter() - started - output_seconds, 2)}
    return report


METHOD_NOTES = {"rtn": "round-to-nearest variant of each candidate (bf16: weight cast)",
                "full": "each candidate's full preset, layer-wise on the float model's inputs (bf16: weight cast)"}


class LayerVariants:
    """The quantized module each (layer, candidate) is measured with.

    rtn: built on demand from the candidate's round-to-nearest variant. full: given up front, one
    module per (layer, candidate), from quantizing a copy of the model once per candidate with the
    candidate's full preset (`build`); `compress --preset mixed` assembles its model from them.
    """

    def __init__(self, layers: Sequence[tuple[LayerInfo, nn.Module]], modules: dict | None = None,
                 seconds: float = 0.0) -> None:
        self.float_modules = {info.fqn: module for info, module in layers}
        self.modules = modules  # (fqn, candidate) -> module; None: rtn, built on demand
        self.seconds = seconds  # spent quantizing up front

    @classmethod
    def build(cls, denoiser: nn.Module, calibration: CalibrationSet, options: SensitivityOptions) -> "LayerVariants":
        """The variants of every layer `options` measures (`measured_layers` with its skip list)."""
        layers = measured_layers(denoiser, options.skip)
        if options.methods == "rtn":
            return cls(layers)
        started, modules = time.perf_counter(), {}
        for name in tqdm(options.candidates, desc="quantize per candidate", unit="candidate",
                         disable=not options.progress):
            for fqn, module in _quantized_copy(denoiser, [info.fqn for info, _ in layers], candidate(name),
                                               calibration, options.progress).items():
                modules[fqn, name] = module
        return cls(layers, modules, time.perf_counter() - started)

    def module(self, fqn: str, name: str) -> nn.Module:
        if self.modules is not None:
            return self.modules[fqn, name]
        return quantized_for_measurement(self.float_modules[fqn], candidate(name))

    def full_modules(self, choice: dict[str, str]) -> dict[str, nn.Module] | None:
        """The full-method module of each chosen (layer, candidate), None if this run measured rtn."""
        if self.modules is None:
            return None
        return {fqn: self.modules[fqn, name] for fqn, name in choice.items() if name != HIGH_PRECISION}


def _quantized_copy(denoiser: nn.Module, fqns: list[str], choice: Candidate, calibration: CalibrationSet,
                    progress: bool = False) -> dict[str, nn.Module]:
    """Every named layer under `choice`'s full preset, quantized together on a copy of the model."""
    from ..recipe import Recipe, Rounding, Rule
    from .ptq import quantize_model

    if choice.spec is None:
        return {fqn: quantized_for_measurement(denoiser.get_submodule(fqn), choice) for fqn in fqns}
    if choice.spec.rounding is Rounding.BLOCK:
        raise InputError(f"candidate {choice.name!r} uses block reconstruction, which depends on the whole block's "
                         "formats; measure it with methods='rtn' or pick a layer-wise preset")
    copied = copy.deepcopy(denoiser)
    recipe = Recipe(default=None, rules=tuple(Rule(fqn, choice.spec) for fqn in fqns), keep_default_skips=False)
    quantize_model(copied, recipe, calibration, progress=progress)
    return {fqn: copied.get_submodule(fqn) for fqn in fqns}


def measured_layers(denoiser: nn.Module, skip: Sequence) -> list[tuple[LayerInfo, nn.Module]]:
    """(info, float module) of every quantizable layer not on the skip list, in module order."""
    result = []
    for fqn, module in quantizable_layers(denoiser):
        if skip_reason(fqn, skip) is None:
            shape = (module.weight.shape[0], module.weight[0].numel())
            result.append((LayerInfo(fqn, type(module).__name__, shape), module))
    return result


def _replay(denoiser: nn.Module, calibration: CalibrationSet, calls_per_bucket: int) -> _Replay:
    calls = calibration.entries(calls_per_bucket)
    if not calls:
        raise InputError("the calibration set has no reservoir entries to replay; calibrate with reservoir_size >= 1")
    reference = [_denoise(denoiser, entry) for entry in calls]
    for entry, output in zip(calls, reference):
        if not torch.isfinite(output).all():
            raise DiffpressError(f"the float denoiser's output is not finite (NaN/Inf) on the reservoir call at "
                                 f"timestep {entry.timestep:g}; sensitivity needs a model that runs cleanly")
    return _Replay(calls, [entry.bucket for entry in calls], reference)


@torch.no_grad()
def _denoise(denoiser: nn.Module, entry: ReservoirEntry) -> torch.Tensor:
    return output_tensor(denoiser(**entry.call_kwargs())).float()


def output_tensor(output) -> torch.Tensor:
    """The predicted tensor of a denoiser's return value (tuple, diffusers output object or tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    for name in ("sample", "noise_pred"):
        if getattr(output, name, None) is not None:
            return getattr(output, name)
    return output[0]


def _output_sensitivity(denoiser, layers, replay: _Replay, options: SensitivityOptions,
                        variants: LayerVariants) -> dict:
    result: dict[str, dict[str, list[float]]] = {}
    total = len(layers) * len(options.candidates)
    with tqdm(total=total, desc="sensitivity", unit="layer x format", disable=not options.progress) as bar:
        for info, module in layers:
            result[info.fqn] = {}
            for name in options.candidates:
                with swapped(denoiser, info.fqn, module, variants.module(info.fqn, name)):
                    outputs = [_denoise(denoiser, entry) for entry in replay.calls]
                result[info.fqn][name] = per_bucket_sqnr(replay.reference, outputs, replay.buckets)
                bar.update()
    return result


def per_bucket_sqnr(reference: list[torch.Tensor], outputs: list[torch.Tensor], buckets: list[int]) -> list[float]:
    """SQNR (dB) per bucket, summing signal and noise power over that bucket's calls; -inf if non-finite."""
    signal, noise = {}, {}
    for ref, out, bucket in zip(reference, outputs, buckets):
        signal[bucket] = signal.get(bucket, 0.0) + float(ref.double().square().sum())
        error = float((ref.double() - out.double()).square().sum()) if torch.isfinite(out).all() else math.inf
        noise[bucket] = noise.get(bucket, 0.0) + error
    return [_ratio_db(signal[b], noise[b]) for b in sorted(signal)]


def _ratio_db(signal: float, noise: float) -> float:
    if not math.isfinite(noise):
        return -math.inf
    if noise == 0:
        return 200.0  # bit-exact: cap so JSON and sums stay finite
    return 10 * math.log10(max(signal, 1e-30) / noise)


class swapped:
    """Context manager: layer `fqn` replaced by `replacement`, the float module put back on exit."""

    def __init__(self, denoiser: nn.Module, fqn: str, module: nn.Module, replacement: nn.Module) -> None:
        self.denoiser, self.fqn, self.module, self.replacement = denoiser, fqn, module, replacement

    def __enter__(self) -> None:
        set_submodule(self.denoiser, self.fqn, self.replacement)

    def __exit__(self, *exc) -> None:
        set_submodule(self.denoiser, self.fqn, self.module)


def quantized_for_measurement(module: nn.Module, choice: Candidate) -> nn.Module:
    """The layer under `choice`'s fast plan; bf16: a copy whose weight went through bfloat16."""
    spec = choice.measurement_spec
    if spec is not None:
        return quantized_module(module, spec)
    rounded = copy.deepcopy(module)
    with torch.no_grad():
        rounded.weight.copy_(module.weight.to(torch.bfloat16).to(module.weight.dtype))
    return rounded


def _activation_ranges(calibration: CalibrationSet, layers) -> dict[str, list[float]]:
    buckets = range(calibration.buckets.num_buckets)
    ranges = {}
    for info, _ in layers:
        stats = calibration.layer_stats(info.fqn)
        ranges[info.fqn] = [round(stats[b].absmax, 6) if b in stats else None for b in buckets]
    return ranges


# ---------------------------------------------------------------------------------- image metric


def image_metric_layers(report: SensitivityReport, count: int | None) -> list[str]:
    """Every layer (count None), or half by largest per-bucket SQNR spread and half by largest output
    error (at the cheapest candidate): where the output metric is least trustworthy."""
    if count is None:
        return list(report.output_sqnr)
    if count == 0:
        return []
    cheapest = min(report.candidates, key=lambda name: (candidate(name).weight_bits, report.candidates.index(name)))
    by_spread = sorted(report.output_sqnr, key=lambda f: (-report.bucket_spread_db(f, cheapest), f))
    by_error = sorted(report.output_sqnr, key=lambda f: (-report.output_error(f, cheapest), f))
    chosen: list[str] = []
    for fqn in _interleave(by_spread, by_error):
        if fqn not in chosen:
            chosen.append(fqn)
        if len(chosen) == min(count, len(by_error)):
            break
    return chosen


def _interleave(first: list[str], second: list[str]):
    for a, b in zip(first, second):
        yield a
        yield b


def _image_sensitivity(denoiser, layers, report: SensitivityReport, probe: ImageProbe,
                       options: SensitivityOptions, variants: LayerVariants) -> dict[str, dict[str, ImageScore]]:
    modules = {info.fqn: module for info, module in layers}
    reference = _sample(probe, denoiser)
    if not torch.isfinite(reference).all():
        raise DiffpressError("the float model's samples are not finite (NaN/Inf); the image metric needs clean samples")
    chosen = image_metric_layers(report, options.image_layers)
    scores: dict[str, dict[str, ImageScore]] = {}
    with tqdm(total=len(chosen) * len(options.candidates), desc="image metric", unit="layer x format",
              disable=not options.progress) as bar:
        for fqn in chosen:
            scores[fqn] = {}
            for name in options.candidates:
                with swapped(denoiser, fqn, modules[fqn], variants.module(fqn, name)):
                    scores[fqn][name] = image_score(reference, _sample(probe, denoiser))
                bar.update()
    return scores


@torch.no_grad()
def _sample(probe: ImageProbe, denoiser: nn.Module) -> torch.Tensor:
    return probe(denoiser).detach().float()


def image_score(reference: torch.Tensor, images: torch.Tensor) -> ImageScore:
    """PSNR over the reference's value range, SSIM where images are at least 11x11, relative error."""
    from .. import metrics

    if not torch.isfinite(images).all():
        return ImageScore(-math.inf, None, math.inf)
    low, high = float(reference.min()), float(reference.max())
    span = max(high - low, 1e-12)
    unit = lambda x: ((x - low) / span).clamp(0, 1)
    psnr = min(metrics.psnr_db(unit(reference), unit(images)), 200.0)  # identical samples: cap, as SQNR
    ssim = metrics.ssim(unit(reference), unit(images)) if reference.dim() == 4 and min(reference.shape[-2:]) >= 11 else None
    noise = float((reference.double() - images.double()).square().sum())
    relative = noise / max(float(reference.double().square().sum()), 1e-30)
    return ImageScore(psnr, ssim, relative)


@torch.no_grad()
def measure_choice(denoiser: nn.Module, variants: LayerVariants, choice: dict[str, str], probe: ImageProbe,
                   reference: torch.Tensor) -> ImageScore:
    """Image score of the model with every layer of `choice` quantized at once (the float modules are
    put back afterwards): a measured point of the quality-vs-size curve."""
    for fqn, name in choice.items():
        set_submodule(denoiser, fqn, variants.module(fqn, name))
    try:
        return image_score(reference, _sample(probe, denoiser))
    finally:
        for fqn in choice:
            set_submodule(denoiser, fqn, variants.float_modules[fqn])
