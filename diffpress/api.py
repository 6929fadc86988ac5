"""The verbs: calibrate, sensitivity, allocate, prune, compress, evaluate, inspect, models, save, load.

Each takes a model (a checkpoint path or builtin:NAME; calibrate and sensitivity also take an
in-memory pipeline or denoiser) and options, returns a result object and prints nothing. The CLI
is a thin layer over these.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__, distributed
from .calibration import CalibrationOptions, CalibrationSet
from .calibration import calibrate as run_calibration
from .compression.allocate import Allocation, allocate_report
from .compression.layer_inputs import CaptureOptions
from .compression.rounding import RoundingOptions
from .compression.sensitivity.image_metric import ImageProbe, measured_curve
from .compression.sensitivity.measure import SensitivityOptions
from .compression.sensitivity.report import SensitivityReport
from .compression.swap import QuantizationReport
from .errors import InputError, OutputExistsError
from .io import load, save
from .metrics import state_bytes
from .outputs import reserved_output
from .placement import COMPUTE_DTYPES, Placement, placed, resident
from .resume import DEFAULT_EVERY_SECONDS, checkpointing, input_fingerprint, work_path
from .plan import MIXED, Budget, MixedPrecision, Plan, as_plan
from .presets import PRESETS, SensitivityMethods, candidate
from .calibration.strategies import StrategyName
from .prune_stage import (BudgetControl, Cost, DepthInit, DepthPattern, LearnObjective, LearnOptions, Method,
                          PruneStage, Scope, Unit, WarmStart)
from .stages import image_probe_for, latency_table, measure, mixed_recipe, prune_subject
from .subject import Calibration, Subject

# Types and tables the CLI builds its options from, so that it imports this module only:
# MIXED, PRESETS, Budget, MixedPrecision, SensitivityMethods, SensitivityOptions, StrategyName, candidate,
# Cost, LearnOptions, Method, Scope, Unit (and PruneStage), BudgetControl, DepthInit, DepthPattern, LearnObjective,
# WarmStart, COMPUTE_DTYPES, CaptureOptions, other_rank.

__all__ = ["calibrate", "sensitivity", "allocate", "prune", "compress", "evaluate", "inspect", "prunable_units",
           "removable_blocks",
           "models", "save", "load"]


def calibrate(model, prompts_or_labels=None, *, options: CalibrationOptions | None = None, forward_loop=None,
              out: str | Path | None = None, overwrite: bool = False, progress: bool = False,
              device=None, compute_dtype=None, **settings) -> CalibrationSet:
    """Record timestep-aware activation statistics and a reservoir of denoiser calls.

    model: a pipeline directory or builtin:NAME, a pipeline object, or a denoiser module with
    `forward_loop(denoiser)` making the calls. prompts_or_labels / options / settings: what to run on
    and how much (CalibrationOptions; settings override its fields by name, e.g. num_samples=8).
    Nothing given: the built-in model's default labels. out: also save the set there (safetensors,
    refused if it exists unless overwrite). device / compute_dtype: where the denoiser's calls run
    (default: the first CUDA device if any, else the CPU; the stored dtype) -- diffpress.placement.
    """
    where = Placement.resolve(device, compute_dtype)
    if out is not None and Path(out).exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it", "out")
    if isinstance(model, (str, Path)):
        subject = Subject.open(model)
        pipe = subject.pipeline("calibrating runs the model's sampler")
        prompts_or_labels = prompts_or_labels or (None if _names_items(options, settings) else subject.default_items)
        model = pipe
    from .calibration import find_denoiser

    with placed(find_denoiser(model), where):
        result = run_calibration(model, prompts_or_labels, options=options, forward_loop=forward_loop,
                                 progress=progress, **settings)
    if out is not None and distributed.is_main():
        result.save(out)
    return result


def _names_items(options: CalibrationOptions | None, settings: dict) -> bool:
    return bool(settings.get("prompts") or settings.get("labels") or (options is not None and options.items))


def sensitivity(model, calibration: Calibration = CalibrationOptions(), options: SensitivityOptions | None = None, *,
                image_probe: ImageProbe | None = None, image_samples: int = 16, image_steps: int | None = None,
                curve: bool = True, out: str | Path | None = None, overwrite: bool = False, avg_bits: float = 5.0,
                top_k: int = 5, progress: bool = False, resume: bool = False,
                checkpoint_every: float | None = DEFAULT_EVERY_SECONDS, device=None,
                compute_dtype=None) -> SensitivityReport:
    """Per-layer, per-timestep-bucket quantization sensitivity (MixDQ's output and image metrics).

    model: a checkpoint path / builtin:NAME, a pipeline, or a denoiser. calibration: options to
    calibrate now, or a CalibrationSet or saved file (a bare denoiser needs one). The output metric
    replays the calibration set; the image metric samples `image_samples` images of `image_steps`
    steps (default: the calibration's) through the pipeline, or through `image_probe(denoiser)` when
    given; `options.image_layers=0` turns it off. curve: also quantize the whole model at each point
    of the quality-vs-size curve and measure it (report.info["measured_curve"]). out: write
    report.html/md/json and recipe.yaml there (the allocation at `avg_bits`; `top_k` layers kept
    in high precision in the snippet). With `out`, progress is checkpointed and `resume` continues a killed
    run, as in `compress`. device / compute_dtype: as in `compress`.
    """
    options = options or SensitivityOptions(progress=progress)
    where = Placement.resolve(device, compute_dtype)
    out = _report_directory(out, overwrite)
    subject = Subject.open(model)
    if out is None:
        with placed(_working_denoiser(subject), where):
            return _sensitivity(subject, calibration, options, image_probe, image_samples, image_steps, curve,
                                progress)
    description = _run_description("sensitivity", subject, (options, image_samples, image_steps, curve), calibration)
    with reserved_output(out, True, (subject.root,) if subject.root else ()), \
            checkpointing(work_path(out), description, resume, checkpoint_every), \
            placed(_working_denoiser(subject), where):
        report = _sensitivity(subject, calibration, options, image_probe, image_samples, image_steps, curve, progress)
        from .report import write_report

        write_report(report, out, avg_bits=avg_bits, top_k=top_k, overwrite=True)
    return report


def _sensitivity(subject: Subject, calibration: Calibration, options: SensitivityOptions,
                 image_probe: ImageProbe | None, image_samples: int, image_steps: int | None,
                 curve: bool, progress: bool) -> SensitivityReport:
    calibration_set = subject.calibration_set(calibration, progress)
    calibration_options = calibration if isinstance(calibration, CalibrationOptions) else CalibrationOptions()
    probe = image_probe_for(subject, calibration_options, options.image_layers, image_samples, image_steps,
                            image_probe)
    measured = measure(subject.denoiser, calibration_set, options, probe)
    report = measured.report
    report.info.update({"model": subject.name, "calibration": _calibration_info(calibration, calibration_set),
                        "image_probe": {"samples": image_samples,
                                        "steps": image_steps or calibration_options.steps} if probe else None})
    if curve and probe is not None:
        report.info["measured_curve"] = measured_curve(report, subject.denoiser, measured.variants, probe, progress)
    return report


def _report_directory(out, overwrite: bool) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a directory", "out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace its "
                                "report", "out")
    return out


def _calibration_info(calibration: Calibration, calibration_set: CalibrationSet) -> dict:
    if isinstance(calibration, CalibrationOptions):
        return {"samples": calibration.num_samples, "steps": calibration.steps, "buckets": calibration.buckets,
                "reservoir_per_bucket": calibration.reservoir_size, "seed": calibration.seed}
    return {"file": str(calibration) if isinstance(calibration, (str, Path)) else None,
            "buckets": calibration_set.buckets.num_buckets}


def allocate(report: SensitivityReport, budget: Budget, candidates=None, latency_table=None,
             weights=None) -> Allocation:
    """Choose one candidate per layer of `report` under `budget` by 0/1 integer program (PuLP/CBC)."""
    return allocate_report(report, budget, candidates, latency_table, weights)


@dataclass
class PruneOutcome:
    """What `prune` did: the result of the stage (groups, kept units, parameters and MACs before and after),
    the pruned pipeline or denoiser (in memory), and where it was saved (None if not)."""

    result: object  # diffpress.pruning.PruneResult
    model: object
    out: Path | None


def prune(model, target_params: float | None = None, out: str | Path | None = None, *,
          target_macs: float | None = None, target_latency: float | None = None, remove_blocks: int | None = None,
          unit: str | None = None, method: str | None = None, scope: str = "global", steps: int | None = None,
          guidance_scale: float | None = None, learn: LearnOptions | dict | None = None,
          calibration: Calibration = CalibrationOptions(), seed: int = 0, recover_steps: int = 0,
          recover_learning_rate: float = 1e-4, overwrite: bool = False, progress: bool = False,
          resume: bool = False, checkpoint_every: float | None = DEFAULT_EVERY_SECONDS, device=None) -> PruneOutcome:
    """Remove attention heads, feed-forward neurons and ResNet channel groups (unit width), or whole blocks
    (unit blocks), from MODEL's denoiser.

    Keep `target_params` of the denoiser's parameters, or `target_macs` of its multiply-accumulates per
    call (blocks also: `target_latency`, of its measured seconds per call), or remove `remove_blocks`
    blocks. method, width: learned (default; a gate mask fitted to the float model's sampling trajectory,
    on calibration.prompts/labels or the built-in's), taylor, activation (both read a calibration set),
    magnitude or random; blocks: oneshot (default; least summed single-removal loss on replayed
    calibration calls) or random. remove_blocks or method oneshot imply unit blocks. steps /
    guidance_scale: the trajectory the mask is fitted on (default: the model's sampling defaults).
    recover_steps: after pruning, distill the pruned model from the float one for that many steps on
    replayed calibration calls (output loss plus normalized surviving-block feature loss); the loss
    curve is saved as recovery.json. out: save a diffusers-format directory there (atomically; it
    loads with diffpress.load and from_pretrained, and can be quantized with compress). With `out`, progress
    is checkpointed and `resume` continues a killed run, as in `compress`. device: where the pruning computes
    (default: the first CUDA device if any, else the CPU); the whole denoiser moves there in its stored dtype
    for the stage (mask learning and recovery train through its weights).
    """
    where = Placement.resolve(device)
    given = [(value, cost) for value, cost in ((target_params, Cost.PARAMS), (target_macs, Cost.MACS),
                                               (target_latency, Cost.LATENCY), (remove_blocks, None))
             if value is not None]
    if len(given) != 1:
        raise InputError("give exactly one of target_params, target_macs, target_latency and remove_blocks",
                         "target_params")
    target, cost = given[0]
    stage = PruneStage(None if cost is None else target, cost or Cost.PARAMS, method, scope, steps, guidance_scale,
                       learn if learn is not None else LearnOptions(), seed, unit,
                       remove_blocks=target if cost is None else None, recover_steps=recover_steps,
                       recover_learning_rate=recover_learning_rate)
    subject = Subject.open(model)
    if out is None:
        return PruneOutcome(_prune_on(subject, stage, calibration, progress, where),
                            subject._pipeline or subject.denoiser, None)
    with reserved_output(Path(out), overwrite, (subject.root,) if subject.root else (), _least_output_bytes(subject)), \
            checkpointing(work_path(Path(out)), _run_description("prune", subject, stage, calibration), resume,
                          checkpoint_every):
        result = _prune_on(subject, stage, calibration, progress, where)
        saved = save(subject.denoiser, out, source=subject.source, overwrite=overwrite,
                     extra={"pruned": _pruned_info(result)},
                     attachments={"recipe.yaml": _prune_recipe_yaml(stage), **_recovery_attachment([result])})
    return PruneOutcome(result, subject._pipeline or subject.denoiser, saved)


def _prune_on(subject: Subject, stage: PruneStage, calibration, progress: bool, where: Placement):
    """One prune stage with the whole denoiser resident on the placement's device."""
    with resident(_working_denoiser(subject), where):
        return prune_subject(subject, stage, calibration, progress)


def _pruned_info(result) -> dict:
    return {"stage": result.stage.to_dict(), "params_before": result.params_before,
            "params_after": result.params_after, "macs_before": result.macs_before, "macs_after": result.macs_after}


def _recovery_attachment(results) -> dict[str, str]:
    """recovery.json: the loss curve of every prune stage that distilled (none: no file)."""
    import json

    curves = [{"stage": r.stage.to_dict(), **r.recovery.to_dict()} for r in results if r.recovery is not None]
    return {"recovery.json": json.dumps(curves, indent=1) + "\n"} if curves else {}


def _prune_recipe_yaml(stage: PruneStage) -> str:
    import yaml

    return yaml.safe_dump({"prune": [stage.to_dict()]}, sort_keys=False)


@dataclass
class CompressionResult:
    model_class: str
    out: Path
    plan: Plan
    report: QuantizationReport
    bytes_before: int
    bytes_after: int
    seconds: float
    allocation: Allocation | None = None  # for a mixed-precision plan
    pruned: list = None  # the PruneResult of each prune stage
    placement: Placement | None = None  # where it computed (None: streamed on the CPU)


def other_rank() -> bool:
    """Under torchrun: whether this process is a rank other than 0 (it works alongside, rank 0 prints and
    writes)."""
    return distributed.active() and not distributed.is_main()


def compress(model: str | Path, plan, out: str | Path, *, calibration: Calibration = CalibrationOptions(),
             image_probe: ImageProbe | None = None, overwrite: bool = False, progress: bool = False,
             resume: bool = False, checkpoint_every: float | None = DEFAULT_EVERY_SECONDS,
             stream: bool = False, shard_bytes: int | None = None,
             rounding: RoundingOptions = RoundingOptions(), device=None, compute_dtype=None,
             capture: CaptureOptions = CaptureOptions()) -> CompressionResult:
    """Compress MODEL's denoiser with `plan` and save a diffusers-format directory at `out` (atomically).

    plan: a preset name ("w8a8-int8"), a recipe file or Recipe, a MixedPrecision or Budget (formats
    chosen per layer by integer program from measured sensitivity), or a Plan. calibration: how to
    calibrate when the plan's methods need data (options, or a CalibrationSet or saved file).
    image_probe: the image metric's sampler for a mixed plan on a bare denoiser. The recipe applied
    is saved as recipe.yaml (and allocation.json for a mixed plan). Progress is checkpointed to the hidden
    sibling .OUT.diffpress-work (calibration at most every `checkpoint_every` seconds, each quantized
    layer as it is done; None: off); `resume` continues a killed run with the same arguments from there,
    with a bit-identical result (diffpress.resume). stream: apply a calibration-free recipe tensor by tensor
    from the checkpoint's files without loading the model, writing safetensors shards of at most
    `shard_bytes` (default 1 GiB): memory independent of the model's size (diffpress.streaming); the result
    is the same as without it. rounding: iterations, captured rows, batch size and early stopping of
    learned rounding (compression.rounding.RoundingOptions). device: where calibration, layer-input capture,
    smoothing search, rounding, block reconstruction, sensitivity and pruning compute (default: the first CUDA
    device if any, else the CPU); compute_dtype: the dtype of denoiser calls there (default: the stored one;
    per-layer quantization math is float32 whatever it is). The model stays in host memory in its stored
    dtype and moves to the device one block at a time (diffpress.placement); the output is the same kind of
    checkpoint wherever it was made. capture: layer inputs for the per-layer methods are captured block group
    by block group within `capture.max_bytes`, from the float model or (inputs_from="quantized") from the model
    with the earlier groups already quantized (compression.layer_inputs.CaptureOptions).
    """
    started = time.perf_counter()
    plan = as_plan(plan)
    where = Placement.resolve(device, compute_dtype)
    subject = Subject.open(model)
    if stream:
        with reserved_output(Path(out), overwrite, (subject.root,) if subject.root else (), _least_output_bytes(subject)):
            return _streamed(subject, plan, Path(out), overwrite, progress, started, shard_bytes)
    with reserved_output(Path(out), overwrite, (subject.root,), _least_output_bytes(subject)), \
            checkpointing(work_path(Path(out)), {**_run_description("compress", subject, plan, calibration),
                                                 "rounding": repr(rounding), "capture": repr(capture),
                                                 "compute_dtype": str(where.compute_dtype)}, resume, checkpoint_every):
        return _compress(subject, plan, out, calibration, image_probe, overwrite, progress, started, rounding, where,
                         capture)


def _compress(subject: Subject, plan: Plan, out, calibration: Calibration, image_probe: ImageProbe | None,
              overwrite: bool, progress: bool, started: float, rounding: RoundingOptions,
              where: Placement, capture: CaptureOptions) -> CompressionResult:
    if plan.prune and not isinstance(calibration, CalibrationOptions):
        raise InputError("a plan with prune stages calibrates after pruning (the activations change); pass "
                         "calibration options, not a saved calibration set", "calibration")
    samples = plan.prune or plan.mixed is not None or (plan.recipe.needs_calibration
                                                       and isinstance(calibration, CalibrationOptions))
    denoiser = _working_denoiser(subject) if samples else subject.denoiser
    bytes_before = state_bytes(denoiser)
    with placed(denoiser, where):
        return _compress_placed(subject, plan, out, calibration, image_probe, overwrite, progress, started, rounding,
                                where, capture, bytes_before)


def _working_denoiser(subject: Subject):
    """The denoiser the verb works on: the pipeline's when the subject has one (load it first, so that the
    denoiser calibration and the image metric drive is the one placed, quantized and saved)."""
    if subject.has_pipeline:
        subject.pipeline("sampling")
    return subject.denoiser


def _compress_placed(subject: Subject, plan: Plan, out, calibration: Calibration, image_probe: ImageProbe | None,
                     overwrite: bool, progress: bool, started: float, rounding: RoundingOptions, where: Placement,
                     capture: CaptureOptions, bytes_before: int) -> CompressionResult:
    pruned = [_prune_on(subject, stage, calibration, progress, where) for stage in plan.prune]
    recipe, allocation, calibration_set, ready = plan.recipe, None, None, None
    if plan.mixed is not None:
        table = latency_table(plan.mixed)
        calibration_set = subject.calibration_set(calibration, progress)
        options = calibration if isinstance(calibration, CalibrationOptions) else CalibrationOptions()
        outcome = mixed_recipe(subject, calibration_set, plan.mixed, options, image_probe, table, progress)
        recipe, allocation, ready = outcome.recipe, outcome.allocation, outcome.ready
    elif recipe.needs_calibration:
        calibration_set = subject.calibration_set(calibration, progress)
    denoiser = subject.denoiser
    from .compression.ptq import quantize_model

    report = quantize_model(denoiser, recipe, calibration_set, progress=progress, ready=ready, rounding=rounding,
                            capture=capture)
    if not report.quantized:
        raise InputError(f"{subject.name}: no layer to quantize (every Linear/Conv2d is on the skip list)", "plan")
    saved = save(denoiser, out, source=subject.source, overwrite=overwrite,
                 extra={"preset": plan.name or ("mixed" if allocation else None), "recipe": recipe.to_dict(),
                        "skipped": report.skipped, **({"pruned": _pruned_info(pruned[-1])} if pruned else {})},
                 attachments={**_attachments(recipe, allocation, plan.prune), **_recovery_attachment(pruned)})
    return CompressionResult(type(denoiser).__name__, saved, plan, report, bytes_before, state_bytes(denoiser),
                             time.perf_counter() - started, allocation, pruned, where)


def _streamed(subject: Subject, plan: Plan, out: Path, overwrite: bool, progress: bool, started: float,
              shard_bytes: int | None) -> CompressionResult:
    from .io import _copy_pipeline_except, write_manifest
    from .outputs import atomic_directory
    from .streaming import SHARD_BYTES, stream_model

    source = subject.source
    if source is None:
        raise InputError("streaming reads the model's files: give a model or pipeline directory, not an object",
                         "stream")
    if plan.prune or plan.mixed is not None:
        raise InputError("streaming applies a calibration-free recipe (weight-only presets, round-to-nearest W8A8); "
                         "pruning and mixed precision need the model in memory: compress without --stream", "stream")
    component = source.denoiser_component if source.is_pipeline else None
    with atomic_directory(out.expanduser().resolve(), overwrite, _least_output_bytes(subject)) as staging:
        if component:
            _copy_pipeline_except(source.root, staging, component)
        target = staging / component if component else staging
        target.mkdir(exist_ok=True)
        streamed = stream_model(source, plan.recipe, target, shard_bytes or SHARD_BYTES, progress,
                                extra={"preset": plan.name, "recipe": plan.recipe.to_dict()})
        for name, text in _attachments(plan.recipe, None).items():
            (staging / name).write_text(text)
        write_manifest(staging, component)
    return CompressionResult(_model_class_name(source), out.expanduser().resolve(), plan, streamed.report, streamed.bytes_before,
                             streamed.bytes_after, time.perf_counter() - started)


def _model_class_name(source) -> str:
    from .checkpoint import _model_class

    return _model_class(source.denoiser_dir).__name__


def resumable(out: str | Path) -> bool:
    """Whether an interrupted run writing `out` left checkpoints that `resume=True` (--resume) would use."""
    from .resume import has_progress

    return has_progress(work_path(Path(out)))


def _run_description(command: str, subject: Subject, plan, calibration: Calibration) -> dict:
    """What a resumed run must match: the command, the model and its files, the plan and the calibration."""
    if isinstance(calibration, CalibrationSet):
        calibration = f"in-memory CalibrationSet of {len(calibration.timesteps)} calls"
    elif isinstance(calibration, (str, Path)) and Path(calibration).is_file():
        path = Path(calibration)  # the saved set and its reservoir shards beside it
        calibration = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(path.parent.glob(path.name + "*"))]
    return {"command": command, "version": __version__, "model": subject.name,
            "input_files": input_fingerprint(subject.root), "plan": repr(plan), "calibration": repr(calibration)}


def _least_output_bytes(subject: Subject) -> int:
    """A lower bound of what compress or prune writes, checked against the free space before the work: the
    pipeline's other files plus an eighth of the stored denoiser (4-bit codes of fp32 weights). The exact
    size is checked again before saving."""
    source = subject.source
    if source is None:
        return 0
    files = [p for p in source.root.rglob("*") if p.is_file()]
    denoiser = sum(p.stat().st_size for p in files if source.denoiser_dir in p.parents)
    return sum(p.stat().st_size for p in files) - denoiser + denoiser // 8


def _attachments(recipe, allocation: Allocation | None, prune_stages=()) -> dict[str, str]:
    import json

    attachments = {"recipe.yaml": Plan(recipe, prune_stages).to_yaml()}
    if allocation is not None:
        attachments["allocation.json"] = json.dumps(allocation.to_dict(), indent=1) + "\n"
    return attachments


def evaluate(model: str | Path, compressed: str | Path | None = None, *, num_samples: int = 100,
             steps: int | None = None, seed: int = 0, guidance_scale: float | None = None, progress: bool = False):
    """MODEL (and a compressed copy) sampled at identical seeds and noise: PSNR/SSIM vs the reference,
    classifier accuracy, Frechet distance, bytes and seconds (see diffpress.evaluation). steps and
    guidance_scale default to the built-in model's own (25 and 1 for builtin:digits)."""
    from .evaluation import EvalSettings, evaluate as run_eval

    settings = EvalSettings.for_model(model, num_samples, steps, seed, guidance_scale)
    return run_eval(model, compressed, settings, progress=progress)


@dataclass
class InspectRow:
    fqn: str
    kind: str  # Linear / Conv2d
    rule: str  # the rule that decided, "default", or the skip-list reason
    plan: str  # short plan description or "high precision"


def inspect(model: str | Path, plan) -> list[InspectRow]:
    """Which rule decides each compressible layer of MODEL's denoiser under `plan`, without loading weights.

    For a mixed-precision plan every layer not on the skip list is 'chosen by allocation'.
    """
    from . import checkpoint as checkpoints
    from .compression.surgery import compressible_layers, unsupported_reason
    from .compression.swap import DEFAULT_SKIP, plan_of, skip_reason

    plan = as_plan(plan)
    denoiser = checkpoints.build_on_meta(checkpoints.resolve(model))
    recipe = plan.recipe
    skip = DEFAULT_SKIP if recipe is None or recipe.keep_default_skips else ()
    rows = []
    for fqn, module in compressible_layers(denoiser):
        if recipe is None:
            reason = skip_reason(fqn, skip)
            rows.append(InspectRow(fqn, type(module).__name__, f"default skip: {reason}" if reason else "mixed",
                                   "high precision" if reason else "chosen by allocation among "
                                   + ", ".join(plan.mixed.candidates)))
            continue
        layer_plan, reason = plan_of(recipe, fqn, skip, module)
        rule = recipe.rule_for(fqn)
        decided_by = (f"default skip: {reason}" if skip_reason(fqn, skip) else f"unsupported: {reason}"
                      if unsupported_reason(module) else f"rule {rule.match!r}" if rule else "default")
        rows.append(InspectRow(fqn, type(module).__name__, decided_by,
                               layer_plan.describe() if layer_plan else "high precision"))
    return rows


def prunable_units(model: str | Path) -> list:
    """The prunable groups of MODEL's denoiser (diffpress.pruning.PruneGroup: name, kind, units, parameters per
    unit), from its config alone (no weights read)."""
    from . import checkpoint as checkpoints
    from .pruning import find_groups

    return find_groups(checkpoints.build_on_meta(checkpoints.resolve(model)))


def removable_blocks(model: str | Path, calibration: Calibration | None = None,
                     progress: bool = False) -> tuple[list, list[float] | None]:
    """The blocks depth pruning can remove from MODEL's denoiser (diffpress.pruning.Block: name, kind,
    parameters, what a pass-through returns), found on one real denoiser call, so the weights are read; with
    `calibration` (options, a set or a saved file), also each block's single-removal loss."""
    from .pruning.blocks import find_blocks
    from .pruning.depth import removal_losses
    from .pruning.prune import one_call

    subject = Subject.open(model)
    pipe = subject.pipeline("finding removable blocks") if subject.has_pipeline else None
    options = calibration if isinstance(calibration, CalibrationOptions) else CalibrationOptions()
    calibration_set = subject.calibration_set(calibration, progress) if calibration is not None or pipe is None \
        else None
    blocks = find_blocks(subject.denoiser, one_call(pipe, subject.items(options), calibration_set))
    losses = removal_losses(subject.denoiser, blocks, calibration_set, progress=progress) \
        if calibration is not None else None
    return blocks, losses


def models() -> list[tuple[str, str]]:
    """(name as accepted by MODEL, one-line summary) of every built-in model."""
    from .zoo import BUILTIN_PREFIX, BUILTINS

    return [(BUILTIN_PREFIX + model.name, model.summary) for model in BUILTINS.values()]
