"""The verbs behind the CLI: each takes paths and options, returns a result object, prints nothing."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as checkpoints
from . import io
from .compress.swap import QuantizationReport
from .errors import InputError
from .recipe import Recipe, preset_recipe

MIXED_PRESET = "mixed"  # compress.allocate.MIXED_PRESET, repeated so this module imports nothing heavy
MIXED_CANDIDATES = ("w4a8-int", "w8a8-int8-learned")  # measured best pair on builtin:digits (bench/results)


@dataclass
class CompressionResult:
    model_class: str
    out: Path
    preset: str
    report: QuantizationReport
    bytes_before: int
    bytes_after: int
    seconds: float
    allocation: object | None = None  # compress.allocate.Allocation for preset `mixed`


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer (what the safetensors file holds)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@dataclass(frozen=True)
class CalibrationOptions:
    """How `compress` calibrates when the recipe's methods need data (ignored otherwise)."""

    num_samples: int = 32
    steps: int = 25
    buckets: int = 8
    reservoir_size: int = 4
    seed: int = 0
    strategy: str = "uniform"
    labels_or_prompts: tuple | None = None  # default: class labels 0..9 for built-in models
    calibration_file: str | Path | None = None  # reuse a saved CalibrationSet instead


def compress(model: str | Path, preset_name: str | None, out: str | Path, overwrite: bool = False,
             progress: bool = False, recipe: Recipe | str | Path | None = None,
             calibration: CalibrationOptions = CalibrationOptions(),
             mixed: "MixedOptions | None" = None) -> CompressionResult:
    """Calibrate (when the recipe's methods need it), quantize the denoiser of MODEL and save it to `out`.

    The recipe used (a preset is one too) is saved as recipe.yaml in the output directory; writes
    are atomic. Preset `mixed` (with `mixed=MixedOptions(avg_bits=...)`) calibrates, measures
    per-layer sensitivity, allocates formats by integer program and saves the resulting
    exact-name recipe (and allocation.json beside it).
    """
    started = time.perf_counter()
    if (preset_name is None) == (recipe is None):
        raise InputError("give exactly one of a preset or a recipe")
    if (preset_name == MIXED_PRESET) != (mixed is not None):
        raise InputError("preset 'mixed' needs a budget (--avg-bits B or --max-bytes N), and a budget needs "
                         "preset 'mixed'")
    source = checkpoints.resolve(model)
    _refuse_compressed(source)
    io.check_output(Path(out), overwrite, (source.root,))
    allocation, ready = None, None
    if mixed is not None:
        spec, allocation, calibration_set, denoiser, ready = _mixed_recipe(model, source, mixed, calibration, progress)
    else:
        spec = recipe if isinstance(recipe, Recipe) else load_recipe(preset_name, recipe)
        calibration_set, denoiser = _calibration_for(model, source, spec, calibration, progress)
    bytes_before = tensor_bytes(denoiser)
    from .compress.ptq import quantize_model

    report = quantize_model(denoiser, spec, calibration_set, progress=progress, ready=ready)
    if not report.quantized:
        raise InputError(f"{source.denoiser_dir}: no layer to quantize (every Linear/Conv2d is on the skip list)")
    attachments = {"recipe.yaml": spec.to_yaml()}
    if allocation is not None:
        attachments["allocation.json"] = json.dumps(allocation.to_dict(), indent=1) + "\n"
    saved = io.save(denoiser, out, source=source, overwrite=overwrite,
                    extra={"preset": preset_name, "recipe": spec.to_dict(), "skipped": report.skipped},
                    attachments=attachments)
    return CompressionResult(type(denoiser).__name__, saved, preset_name or "recipe", report, bytes_before,
                             tensor_bytes(denoiser), time.perf_counter() - started, allocation)


# ------------------------------------------------------------------ sensitivity and mixed precision


@dataclass(frozen=True)
class MixedOptions:
    """`compress --preset mixed`: a size budget (exactly one of avg_bits, max_bytes), candidates, method.

    methods: "full" measures and quantizes each layer with its candidates' full presets (learned
    rounding: minutes); the modules measured are the ones saved. "rtn": the round-to-nearest variants.
    image_layers: layers costed by the final-image metric (None: all; 0: output metric only).
    image_samples / image_steps: samples and sampler steps of the image metric (steps default: the
    calibration's). latency_table: JSON file candidate -> cost per weight element (a kernel
    benchmark); with max_latency it bounds the summed cost (without a table: stored bytes stand in).
    """

    avg_bits: float | None = None
    max_bytes: int | None = None
    max_latency: float | None = None
    candidates: tuple[str, ...] = MIXED_CANDIDATES
    calls_per_bucket: int = 2
    methods: str = "full"
    latency_table: str | Path | None = None
    image_layers: int | None = None
    image_samples: int = 16
    image_steps: int | None = None

    def __post_init__(self) -> None:
        if self.methods not in ("full", "rtn"):
            raise InputError(f"methods {self.methods!r} is not one of: full, rtn")

    @property
    def budget(self):
        from .compress.allocate import Budget

        return Budget(self.avg_bits, self.max_bytes, self.max_latency)


def _mixed_recipe(model, source, mixed: MixedOptions, options: CalibrationOptions, progress: bool):
    """(recipe, allocation, calibration set, float denoiser, ready modules) for preset `mixed`."""
    from .calibration import find_denoiser
    from .compress.sensitivity import LayerVariants, SensitivityOptions

    budget = mixed.budget  # validate before the long part
    calibration_set, pipe = _calibration_set(model, source, options, progress)
    sensitivity_options = SensitivityOptions(mixed.candidates, mixed.calls_per_bucket, mixed.image_layers,
                                             progress=progress, methods=mixed.methods)
    denoiser = find_denoiser(pipe)
    variants = LayerVariants.build(denoiser, calibration_set, sensitivity_options)
    report = measure_sensitivity(pipe, calibration_set, sensitivity_options, mixed.image_samples,
                                 mixed.image_steps or options.steps, _items(model, options), variants)
    allocation = allocate(report, budget, latency_table=mixed.latency_table)
    return (allocation.to_recipe(fast=mixed.methods == "rtn"), allocation, calibration_set, denoiser,
            variants.full_modules(allocation.choice))


def _items(model, options: CalibrationOptions):
    return options.labels_or_prompts or (tuple(range(10)) if _takes_labels(model) else None)


def _calibration_set(model, source, options: CalibrationOptions, progress: bool):
    """(CalibrationSet with a reservoir, the pipeline) from a saved file or by calibrating now."""
    from .calibration import CalibrationSet, calibrate

    if not source.is_pipeline:
        raise InputError(f"{source.root}: sensitivity replays calibration calls and samples images; pass a "
                         "pipeline directory or builtin:NAME")
    pipe = load_pipeline(model)
    if options.calibration_file is not None:
        return CalibrationSet.load(options.calibration_file), pipe
    items = _items(model, options)
    if not items:
        raise InputError("sensitivity needs calibration data: give --calib-prompts FILE, --calib-labels or "
                         "--calibration FILE")
    calibration_set = calibrate(pipe, list(items), num_inference_steps=options.steps,
                                num_samples=options.num_samples, seed=options.seed, buckets=options.buckets,
                                strategy=options.strategy, reservoir_size=options.reservoir_size, progress=progress)
    return calibration_set, pipe


def pipeline_image_probe(pipe, items, num_samples: int = 8, steps: int = 10, seed: int = 0):
    """A probe for the image metric: `num_samples` samples, `steps` steps, generator seeded `seed`."""
    import inspect

    chunk = [items[i % len(items)] for i in range(num_samples)]
    takes_labels = "class_labels" in inspect.signature(pipe.__call__).parameters

    @torch.no_grad()
    def probe(denoiser) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        if takes_labels:
            return pipe(class_labels=chunk, num_inference_steps=steps, generator=generator)
        result = pipe(prompt=list(chunk), num_inference_steps=steps, generator=generator, output_type="pt")
        return torch.as_tensor(result.images if hasattr(result, "images") else result[0])
    return probe


def measure_sensitivity(pipe, calibration_set, options, image_samples: int = 16, image_steps: int = 25,
                        items=None, variants=None):
    """Sensitivity of the pipeline's denoiser on `calibration_set`; the image metric samples the pipeline
    (`image_samples` samples of `items`, `image_steps` sampler steps; no `items`: no image metric)."""
    from .calibration import find_denoiser
    from .compress.sensitivity import measure_sensitivity as measure

    probe = None
    if options.image_layers != 0 and items:
        probe = pipeline_image_probe(pipe, list(items), image_samples, image_steps)
    return measure(find_denoiser(pipe), calibration_set, options, probe, variants)


def sensitivity(model: str | Path, options=None, calibration: CalibrationOptions = CalibrationOptions(),
                image_samples: int = 16, image_steps: int | None = None, progress: bool = False,
                curve: bool = True):
    """Calibrate MODEL (or load --calibration) and measure per-layer, per-bucket sensitivity (MixDQ).

    image_steps default: the calibration's sampler steps. curve: also quantize the model as a whole at
    each point of the quality-vs-size curve (compress.allocate.curve_allocations) and measure it on the
    image metric's samples (report.info["measured_curve"]).
    """
    from .calibration import find_denoiser
    from .compress.sensitivity import LayerVariants, SensitivityOptions, measure_sensitivity as measure

    options = options or SensitivityOptions(progress=progress)
    source = checkpoints.resolve(model)
    calibration_set, pipe = _calibration_set(model, source, calibration, progress)
    steps = image_steps or calibration.steps
    items = _items(model, calibration)
    probe = pipeline_image_probe(pipe, list(items), image_samples, steps) if items else None
    denoiser = find_denoiser(pipe)
    variants = LayerVariants.build(denoiser, calibration_set, options)
    report = measure(denoiser, calibration_set, options, probe if options.image_layers != 0 else None, variants)
    report.info.update({"model": str(model), "calibration": {"samples": calibration.num_samples,
                        "steps": calibration.steps, "buckets": calibration.buckets,
                        "reservoir_per_bucket": calibration.reservoir_size, "seed": calibration.seed},
                        "image_probe": {"samples": image_samples, "steps": steps}})
    if curve and probe is not None:
        report.info["measured_curve"] = measured_curve(report, denoiser, variants, probe, progress)
    return report


def measured_curve(report, denoiser, variants, probe, progress: bool = False) -> list[dict]:
    """Each curve allocation quantized as a whole, scored on the probe's samples against the float model's."""
    from tqdm.auto import tqdm

    from .compress.allocate import choices_from_report, curve_allocations
    from .compress.sensitivity import measure_choice
    from .report.render import curve_point

    reference = probe(denoiser).detach().float()
    points = []
    for kind, allocation in tqdm(curve_allocations(choices_from_report(report), report.candidates),
                                 desc="quality-vs-size curve", unit="allocation", disable=not progress):
        score = measure_choice(denoiser, variants, allocation.choice, probe, reference)
        psnr = round(score.psnr_db, 3) if math.isfinite(score.psnr_db) else None  # None: non-finite samples
        points.append({**curve_point(kind, allocation), "psnr_db": psnr,
                       "ssim": None if score.ssim is None else round(score.ssim, 5)})
    return points


def allocate(report, budget, candidates=None, latency_table: str | Path | dict | None = None, weights=None):
    """Choose one candidate per layer under `budget` (compress.allocate.Budget) by 0/1 integer program."""
    from .compress.allocate import allocate as solve, choices_from_report, load_latency_table

    names = candidates or report.candidates
    table = load_latency_table(latency_table, names) if isinstance(latency_table, (str, Path)) else latency_table
    return solve(choices_from_report(report, candidates, table, weights), budget)


def sensitivity_report(model: str | Path, out: str | Path, options=None,
                       calibration: CalibrationOptions = CalibrationOptions(), avg_bits: float = 5.0,
                       top_k: int = 5, image_samples: int = 16, image_steps: int | None = None, overwrite: bool = False,
                       progress: bool = False):
    """Measure sensitivity and write DIR/report.json, report.html (self-contained) and report.md."""
    from .report import write_report

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        from .errors import OutputExistsError
        raise OutputExistsError(f"{out} exists and is not empty; pass --overwrite to replace its report")
    report = sensitivity(model, options, calibration, image_samples, image_steps, progress)
    return write_report(report, out, avg_bits=avg_bits, top_k=top_k)


def _needs_calibration(recipe: Recipe) -> bool:
    plans = [recipe.default] + [rule.plan for rule in recipe.rules]
    return any(plan is not None and plan.needs_calibration for plan in plans)


def _calibration_for(model, source, recipe: Recipe, options: CalibrationOptions, progress: bool):
    """(CalibrationSet or None, the float denoiser) for this recipe."""
    if not _needs_calibration(recipe):
        return None, checkpoints.load_denoiser(source)
    from .calibration import CalibrationSet, calibrate, find_denoiser

    if options.calibration_file is not None:
        return CalibrationSet.load(options.calibration_file), checkpoints.load_denoiser(source)
    if not source.is_pipeline:
        raise InputError(f"{source.root}: this recipe's methods need calibration data; pass a pipeline "
                         "directory (or builtin:NAME) to calibrate on, or --calibration FILE")
    items = _items(model, options)
    if not items:
        raise InputError("this recipe's methods need calibration data: give --calib-prompts FILE, "
                         "--calib-labels or --calibration FILE")
    pipe = load_pipeline(model)
    calibration_set = calibrate(pipe, list(items), num_inference_steps=options.steps,
                                num_samples=options.num_samples, seed=options.seed, buckets=options.buckets,
                                strategy=options.strategy, reservoir_size=options.reservoir_size, progress=progress)
    return calibration_set, find_denoiser(pipe)


def _refuse_compressed(source: checkpoints.Checkpoint) -> None:
    config = checkpoints.read_json(source.denoiser_dir / "config.json")
    if "quantization_config" in config:
        raise InputError(f"{source.denoiser_dir}: already compressed; load it with diffpress.load, "
                         "or compress the original checkpoint")


def list_builtins() -> list[tuple[str, str]]:
    """(name as accepted by MODEL, one-line summary) of every built-in model."""
    from .zoo import BUILTIN_PREFIX, BUILTINS

    return [(BUILTIN_PREFIX + model.name, model.summary) for model in BUILTINS.values()]


def evaluate(model: str | Path, compressed: str | Path | None = None, num_samples: int = 100, steps: int = 25,
             seed: int = 0, guidance_scale: float = 1.0, progress: bool = False):
    """Reference vs compressed on identical seeds: see diffpress.evaluate.evaluate."""
    from .evaluate import EvalSettings, evaluate as run_eval

    settings = EvalSettings(num_samples=num_samples, steps=steps, seed=seed, guidance_scale=guidance_scale)
    return run_eval(model, compressed, settings, progress=progress)


def grid_path_for(compressed: str | Path) -> Path:
    """Where the side-by-side grid goes: beside the compressed directory, never inside it."""
    compressed = Path(compressed).expanduser().resolve()
    return compressed.parent / f"{compressed.name}-grid.png"


def save_grid(result, path: str | Path) -> Path:
    from .evaluate import save_grid as write_grid

    return write_grid(result.reference_images, result.compressed_images, Path(path))


def load_pipeline(model: str | Path):
    """An uncompressed pipeline from a pipeline directory or builtin:NAME (for calibration)."""
    source = checkpoints.resolve(model)
    if not source.is_pipeline:
        raise InputError(f"{source.root}: calibration drives a pipeline; pass a pipeline directory "
                         "(model_index.json) or builtin:NAME, or use diffpress.calibrate(denoiser, forward_loop=...)")
    return checkpoints.load_pipeline(source.root)


def calibrate_to_file(model: str | Path, out: str | Path, prompts: list[str] | None, labels: list[int] | None,
                      num_samples: int | None, steps: int, buckets: int, strategy: str, seed: int,
                      reservoir_size: int, progress: bool = True):
    """Load MODEL, calibrate it on prompts or labels, save the CalibrationSet to `out`."""
    from .calibration import calibrate

    items = prompts if prompts is not None else labels
    if items is None:
        items = list(range(10)) if _takes_labels(model) else None
    if not items:
        raise InputError("give --prompts FILE or --labels for this model (nothing to calibrate on)")
    started = time.perf_counter()
    calibration = calibrate(load_pipeline(model), items, num_inference_steps=steps, num_samples=num_samples,
                            seed=seed, buckets=buckets, strategy=strategy, reservoir_size=reservoir_size,
                            progress=progress)
    return calibration, calibration.save(out), time.perf_counter() - started


def _takes_labels(model) -> bool:
    return isinstance(model, str) and model.startswith("builtin:")


def read_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such prompts file")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"{path}: the prompts file is empty (one prompt per line)")
    return prompts


@dataclass
class InspectRow:
    fqn: str
    kind: str  # Linear / Conv2d
    rule: str  # the rule that decided, "default", or the skip-list reason
    plan: str  # short plan description or "high precision"


def inspect_recipe(model: str | Path, recipe: Recipe) -> list[InspectRow]:
    """Which rule decides each quantizable layer of MODEL's denoiser, without loading weights."""
    from .compress.swap import DEFAULT_SKIP, plan_of, quantizable_layers, skip_reason

    denoiser = checkpoints.build_on_meta(checkpoints.resolve(model))
    skip = DEFAULT_SKIP if recipe.keep_default_skips else ()
    rows = []
    for fqn, module in quantizable_layers(denoiser):
        plan, reason = plan_of(recipe, fqn, skip)
        rule = recipe.rule_for(fqn)
        decided_by = skip_reason(fqn, skip) and f"default skip: {reason}" or (f"rule {rule.match!r}" if rule else "default")
        rows.append(InspectRow(fqn, type(module).__name__, decided_by, plan.describe() if plan else "high precision"))
    return rows


def load_recipe(preset_name: str | None, recipe_path: str | Path | None) -> Recipe:
    """The recipe a --preset or --recipe argument names."""
    return preset_recipe(preset_name) if preset_name else Recipe.load(recipe_path)
