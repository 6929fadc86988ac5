"""The verbs behind the CLI: each takes paths and options, returns a result object, prints nothing."""
from __future__ import annotations

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


@dataclass
class CompressionResult:
    model_class: str
    out: Path
    preset: str
    report: QuantizationReport
    bytes_before: int
    bytes_after: int
    seconds: float


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
             calibration: CalibrationOptions = CalibrationOptions()) -> CompressionResult:
    """Calibrate (when the recipe's methods need it), quantize the denoiser of MODEL and save it to `out`.

    The recipe used (a preset is one too) is saved as recipe.yaml in the output directory; writes
    are atomic.
    """
    started = time.perf_counter()
    if (preset_name is None) == (recipe is None):
        raise InputError("give exactly one of a preset or a recipe")
    spec = recipe if isinstance(recipe, Recipe) else load_recipe(preset_name, recipe)
    source = checkpoints.resolve(model)
    _refuse_compressed(source)
    io.check_output(Path(out), overwrite, (source.root,))
    calibration_set, denoiser = _calibration_for(model, source, spec, calibration, progress)
    bytes_before = tensor_bytes(denoiser)
    from .compress.ptq import quantize_model

    report = quantize_model(denoiser, spec, calibration_set, progress=progress)
    if not report.quantized:
        raise InputError(f"{source.denoiser_dir}: no layer to quantize (every Linear/Conv2d is on the skip list)")
    saved = io.save(denoiser, out, source=source, overwrite=overwrite,
                    extra={"preset": preset_name, "recipe": spec.to_dict(), "skipped": report.skipped},
                    attachments={"recipe.yaml": spec.to_yaml()})
    return CompressionResult(type(denoiser).__name__, saved, preset_name or "recipe", report, bytes_before,
                             tensor_bytes(denoiser), time.perf_counter() - started)


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
    items = options.labels_or_prompts or (tuple(range(10)) if _takes_labels(model) else None)
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
