"""Post-training quantization with calibration: apply a recipe's methods layer by layer.

Per layer, in order: smoothing (strength searched on captured inputs, or fixed), the low-rank
branch on the smoothed weight, scale choice (absmax or MSE clipping) -- `prepare_layer` -- then
rounding (nearest, learned per layer on captured inputs, or learned per block by
`block_reconstruction`), then static activation scales per timestep bucket from the calibration
statistics when the plan asks for them -- `finish_layer`. Structural methods (shortcut splitting,
BOS-aware cross-attention) use what `input_sources` finds by replaying calibration calls.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import placement, resume
from ..calibration import CalibrationSet
from ..errors import InputError
from ..formats import spec_of
from ..numerics import check_weights
from ..kernels import reference
from ..kernels.layout import PackedWeight
from ..recipe import ActMode, QuantSpec, Recipe, Rotation, Rounding, layer_scale_method
from .block_reconstruction import PreparedLayer, reconstruct_blocks
from .gptq import gptq_rounding
from .input_sources import find_concat_splits, find_constant_first_tokens
from .layer_inputs import CaptureOptions, InputsFrom, LayerInputs, capture_groups, capture_layer_inputs
from .layer_records import layer_record, restore_layer
from .low_rank import split_low_rank
from .quantize import quantize_weight
from .rotation import layer_signs, rotate_flat
from .rounding import RoundingOptions, learn_rounding
from .smoothing import DEFAULT_ALPHAS, smoothed_weight, smoothing_factors, supports_smoothing, weight_channel_absmax
from .surgery import compressed_module, compressible_layers, replace_module
from .swap import DEFAULT_SKIP, QuantizationReport, plan_of
from .timesteps import attach_tracker


@dataclass
class LayerContext:
    """What one layer's methods may use: its float module, calibration statistics and captured inputs."""

    fqn: str
    module: nn.Module
    spec: QuantSpec
    calibration: CalibrationSet | None
    inputs: LayerInputs | None
    act_split: int | None = None  # shortcut splitting: where the concatenated input's halves meet
    first_token: torch.Tensor | None = None  # BOS-aware: the prompt-independent first input token


def quantize_model(denoiser: nn.Module, recipe: Recipe, calibration: CalibrationSet | None = None,
                   progress: bool = False, rounding: RoundingOptions = RoundingOptions(),
                   ready: Mapping[str, nn.Module] | None = None,
                   capture: CaptureOptions = CaptureOptions()) -> QuantizationReport:
    """Quantize `denoiser` in place with `recipe`; methods that need data use `calibration`. rounding: the
    iterations, captured rows, batch size and early stopping of learned rounding (iterations also for
    block reconstruction). capture: how layer inputs are captured (block groups within a memory budget,
    from the float or the progressively quantized model).

    ready: layers already quantized with exactly their recipe plan (e.g. by a sensitivity run with
    full methods), put in place as they are instead of being quantized again.
    """
    report, plans = _plans(denoiser, recipe, calibration, ready or {})
    for fqn, (module, _) in plans.items():
        check_weights(fqn, module)
    wanted = _needs_inputs(plans)
    _check_calibration(calibration, plans, wanted)
    splits, first_tokens = _input_sources(denoiser, calibration, plans)
    contexts = {fqn: LayerContext(fqn, module, plan, calibration, None, splits.get(fqn), first_tokens.get(fqn))
                for fqn, (module, plan) in plans.items()}
    # a resumed run takes the layers an interrupted one finished from its checkpoints (block reconstruction
    # optimizes layers together, so a plan with block rounding redoes every layer)
    checkpoints = resume.stage("quantize")
    blockwise_plan = any(plan.rounding is Rounding.BLOCK for _, plan in plans.values())
    finished = {fqn for fqn in contexts if checkpoints.has(fqn)} if not blockwise_plan else set()
    tracker = attach_tracker(denoiser, calibration.buckets) if _any_static(plans) else None
    done: dict[str, nn.Module] = {}

    def put(fqn: str, quantized: nn.Module) -> None:
        quantized.fqn, quantized.timestep_tracker = fqn, tracker
        done[fqn] = quantized
        if capture.inputs_from is InputsFrom.QUANTIZED:
            replace_module(denoiser, fqn, quantized)

    bar = tqdm(total=len(contexts), desc="quantize", unit="layer", disable=not progress)
    for fqn in finished:
        put(fqn, restore_layer(contexts[fqn].module, fqn, *checkpoints.load(fqn), checkpoints.directory))
        bar.update()
    blockwise: dict[str, PreparedLayer] = {}
    todo = [fqn for fqn in contexts if fqn not in finished]
    for group in capture_groups(denoiser, todo, wanted, rounding.rows, capture.max_bytes):
        capturing = wanted.intersection(group)
        inputs = capture_layer_inputs(denoiser, calibration, capturing, max_rows=rounding.rows,
                                      progress=progress and len(todo) == len(group)) if capturing else {}
        for fqn in group:
            context = replace(contexts[fqn], inputs=inputs.pop(fqn, None))
            if context.spec.rounding is Rounding.BLOCK:
                blockwise[fqn] = _prepared_on_cpu(context)
                continue
            put(fqn, _quantized_on_device(context, None, None, rounding))
            checkpoints.save(fqn, *layer_record(done[fqn]))
            bar.update()
    block_packed = reconstruct_blocks(denoiser, calibration, blockwise, rounding.iterations,
                                      progress=progress) if blockwise else {}
    for fqn, prepared in blockwise.items():
        put(fqn, _quantized_on_device(contexts[fqn], prepared, block_packed.get(fqn), rounding))
        bar.update()
    bar.close()
    for fqn in contexts:  # in module order
        if capture.inputs_from is InputsFrom.FLOAT:
            replace_module(denoiser, fqn, done[fqn])
        report.quantized.append(fqn)
    return report


def _quantized_on_device(context: LayerContext, prepared: PreparedLayer | None, block_packed: PackedWeight | None,
                         rounding: RoundingOptions) -> nn.Module:
    """One layer prepared (unless block reconstruction did) and finished on the placement's device; the
    quantized module where the float one lives."""
    home = context.module.weight.device
    with layer_on_device(context) as on_device:
        prepared = prepared.to(placement.current().device) if prepared is not None else prepare_layer(on_device)
        return finish_layer(on_device, prepared, block_packed, rounding).to(home)


@contextmanager
def layer_on_device(context: LayerContext) -> Iterator[LayerContext]:
    """The layer's float module (in its stored dtype) and captured inputs on the current placement's device,
    for one layer's work; the module is back where it was afterwards (what it made, the caller moves home)."""
    device = placement.current().device
    with placement.materialized(context.module, placement.Placement(device)):
        yield replace(context, inputs=context.inputs.to(device) if context.inputs is not None else None,
                      first_token=placement.to_device(context.first_token))


def _prepared_on_cpu(context: LayerContext) -> PreparedLayer:
    """A block-reconstruction layer's plan, made on the device and kept on the CPU until its block is fitted."""
    with layer_on_device(context) as on_device:
        return prepare_layer(on_device).to("cpu")


def _plans(denoiser: nn.Module, recipe: Recipe, calibration: CalibrationSet | None,
           ready: Mapping[str, nn.Module]) -> tuple[QuantizationReport, dict]:
    """The report so far (skipped layers, ready modules put in place) and fqn -> (module, plan) of the rest."""
    skip = DEFAULT_SKIP if recipe.keep_default_skips else ()
    report, plans = QuantizationReport(), {}
    for fqn, module in compressible_layers(denoiser):
        plan, reason = plan_of(recipe, fqn, skip, module)
        if plan is None:
            report.skipped[fqn] = reason
        elif fqn in ready:
            _put_ready(denoiser, fqn, ready[fqn], plan, calibration)
            report.quantized.append(fqn)
        else:
            plans[fqn] = (module, _usable_plan(plan, module))
    return report, plans


def _check_calibration(calibration: CalibrationSet | None, plans, wanted: set[str]) -> None:
    """Before any work: a calibration set when methods need one, with statistics for every layer whose
    methods read them, and reservoir calls to replay when methods replay them."""
    needing = sorted(fqn for fqn, (_, plan) in plans.items() if plan.needs_calibration)
    if needing and calibration is None:
        raise InputError(f"{len(needing)} layers use calibration-driven methods (e.g. {needing[0]}); "
                         "pass a CalibrationSet", "calibration")
    if calibration is None:
        return
    reading = sorted(fqn for fqn, (_, plan) in plans.items() if plan.smoothing is not None or plan.act_mode is ActMode.STATIC)
    recorded = set(calibration.layers)
    missing = [fqn for fqn in reading if fqn not in recorded]
    if missing:
        raise InputError(f"the calibration set has no statistics for layer {missing[0]!r} ({len(missing)} layers "
                         "missing): it was recorded on another model", "calibration")
    replaying = wanted or any(plan.split_shortcuts or plan.bos_aware for _, plan in plans.values())
    if replaying and not calibration.entries():
        example = sorted(wanted)[0] if wanted else next(iter(plans))
        raise InputError(f"the calibration set's reservoir is empty (it was calibrated with reservoir_size 0), but "
                         f"this recipe's methods replay calibration calls (e.g. for {example}); calibrate with "
                         "reservoir_size >= 1", "calibration")


def _put_ready(denoiser: nn.Module, fqn: str, quantized: nn.Module, plan: QuantSpec, calibration) -> None:
    if getattr(quantized, "spec", None) != _usable_plan(plan, denoiser.get_submodule(fqn)):
        raise InputError(f"{fqn}: the ready module was quantized with {getattr(quantized, 'spec', None)}, "
                         f"not the recipe's plan {plan}", "ready")
    quantized.fqn = fqn
    quantized.timestep_tracker = attach_tracker(denoiser, calibration.buckets) if plan.act_mode is ActMode.STATIC \
        else None
    replace_module(denoiser, fqn, quantized)


def _usable_plan(plan: QuantSpec, module: nn.Module) -> QuantSpec:
    """Drop methods a layer's shape cannot take (grouped convs: no smoothing, rotation or low-rank branch)."""
    if supports_smoothing(module):
        return plan
    return replace(plan, smoothing=None, low_rank=0, rotation=Rotation.NONE)


def _needs_inputs(plans) -> set[str]:
    return {fqn for fqn, (_, plan) in plans.items()
            if plan.smoothing == "auto" or plan.rounding is not Rounding.NEAREST or plan.rotation is Rotation.AUTO}


def _input_sources(denoiser: nn.Module, calibration: CalibrationSet | None, plans) -> tuple[dict, dict]:
    """Concat splits for layers with split_shortcuts, constant first tokens for bos_aware linears."""
    splitting = {fqn for fqn, (m, plan) in plans.items() if plan.split_shortcuts and isinstance(m, nn.Conv2d)}
    bos = {fqn for fqn, (m, plan) in plans.items() if plan.bos_aware and isinstance(m, nn.Linear)}
    if not (splitting or bos):
        return {}, {}
    calls = [entry.call_kwargs() for entry in calibration.entries()]
    if not calls:
        raise InputError("split_shortcuts and bos_aware replay calibration calls, but the calibration set's "
                         "reservoir is empty (calibrate with reservoir_size >= 1)", "calibration")
    splits = find_concat_splits(denoiser, calls[0]) if splitting else {}
    first_tokens = find_constant_first_tokens(denoiser, calls, bos) if bos else {}
    return {fqn: split for fqn, split in splits.items() if fqn in splitting}, first_tokens


def _any_static(plans) -> bool:
    return any(plan.act_mode is ActMode.STATIC for _, plan in plans.values())


def quantize_layer(context: LayerContext, rounding: RoundingOptions = RoundingOptions()) -> nn.Module:
    """One layer through the method pipeline on its own (on the current placement's device); returns its
    QuantLinear / QuantConv2d beside the float module (same device)."""
    return _quantized_on_device(context, None, None, rounding)


def prepare_layer(context: LayerContext) -> PreparedLayer:
    """Smoothing, the rotation, the low-rank split and the scales with nearest rounding: everything before
    rounding."""
    spec, module = context.spec, context.module
    signs, factors = _rotation_and_smoothing(context)
    weight = _transformed_weight(module, factors, signs)
    low_rank = split_low_rank(weight, spec.low_rank) if spec.low_rank else None
    if low_rank is not None:
        weight = low_rank[2]
    nearest = quantize_weight(weight, spec.weight_format, spec.granularity, spec.group_size,
                              layer_scale_method(spec, module))
    down_up = (low_rank[0], low_rank[1]) if low_rank is not None else None
    return PreparedLayer(module, spec, weight, nearest, factors, down_up, context.act_split, signs)


def _rotation_and_smoothing(context: LayerContext) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(rotation signs or None, smoothing factors or None). Rotation auto: the smoothing is chosen with and
    without the rotation, and the pair with the smaller output error on the captured inputs kept."""
    smoothing = context.spec.smoothing is not None
    if context.spec.rotation is Rotation.NONE:
        return None, _smoothing(context) if smoothing else None
    signs = layer_signs(context.module, context.act_split)
    if context.spec.rotation is Rotation.HADAMARD:
        return signs, _smoothing(context, signs) if smoothing else None
    ones = torch.ones(context.module.weight.shape[1], device=context.module.weight.device)
    options = [(candidate, _smoothing(context, candidate) if smoothing else None) for candidate in (None, signs)]
    errors = [_output_error(context, factors if factors is not None else ones, candidate)
              for candidate, factors in options]
    return options[int(errors[1] < errors[0])]


def _transformed_weight(module: nn.Module, factors: torch.Tensor | None, signs: torch.Tensor | None) -> torch.Tensor:
    """The flattened (N, K) float32 weight the quantizer sees: columns times the smoothing factors, rotated."""
    weight = smoothed_weight(module, factors) if factors is not None else _flat_weight(module)
    return rotate_flat(weight, signs, _patch_size(module)) if signs is not None else weight


def _transformed_rows(module: nn.Module, rows: torch.Tensor, factors: torch.Tensor | None,
                      signs: torch.Tensor | None) -> torch.Tensor:
    """Captured input rows as the quantizer sees them: divided by the smoothing factors, rotated."""
    if factors is not None:
        rows = rows / _row_factors(module, factors)
    return rotate_flat(rows, signs, _patch_size(module)) if signs is not None else rows


def finish_layer(context: LayerContext, prepared: PreparedLayer, block_packed: PackedWeight | None,
                 rounding: RoundingOptions) -> nn.Module:
    """Rounding (unless block reconstruction already chose the codes), then the quantized module."""
    spec, module, factors, low_rank = context.spec, context.module, prepared.factors, prepared.low_rank
    packed = block_packed if block_packed is not None else _rounded(context, prepared, rounding)
    quantized = compressed_module(module, spec, packed)
    quantized.act_split = context.act_split
    quantized.set_optional("smooth", factors)
    quantized.set_optional("rotation", prepared.rotation)
    if context.first_token is not None:
        quantized.set_optional("bos_out", _float_output(module, context.first_token))
    if low_rank is not None:
        quantized.set_optional("lora_down", low_rank[0].to(module.weight.dtype))
        quantized.set_optional("lora_up", low_rank[1].to(module.weight.dtype))
    if spec.act_mode is ActMode.STATIC:
        quantized.set_optional("act_scales", static_activation_scales(context, factors))
    return quantized


def _float_output(module: nn.Linear, token: torch.Tensor) -> torch.Tensor:
    """The float layer's output for one input token, in the layer's dtype."""
    with torch.no_grad():
        return module(token.to(module.weight.dtype)[None]).reshape(-1)


def _flat_weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().float().reshape(module.weight.shape[0], -1)


def _act_absmax(context: LayerContext) -> torch.Tensor:
    """Per input channel max |x| over the calibration run, on the layer's device."""
    return context.calibration.merged_over_buckets(context.fqn).channel_absmax.to(context.module.weight.device)


def _smoothing(context: LayerContext, signs: torch.Tensor | None = None) -> torch.Tensor:
    act_absmax, weight_absmax = _act_absmax(context), weight_channel_absmax(context.module)
    if context.spec.smoothing != "auto":
        return smoothing_factors(act_absmax, weight_absmax, float(context.spec.smoothing))
    best, best_error = None, float("inf")
    for alpha in DEFAULT_ALPHAS:
        factors = smoothing_factors(act_absmax, weight_absmax, alpha)
        error = _output_error(context, factors, signs)
        if error < best_error:
            best, best_error = factors, error
    return best


def _output_error(context: LayerContext, factors: torch.Tensor, signs: torch.Tensor | None = None) -> float:
    """Relative output error of the layer quantized with these smoothing factors (and the rotation; nearest
    rounding)."""
    spec, module, rows = context.spec, context.module, context.inputs.rows
    weight = _transformed_weight(module, factors, signs)
    packed = quantize_weight(weight, spec.weight_format, spec.granularity, spec.group_size,
                             layer_scale_method(spec, module))
    y = reference.quantized_linear(_transformed_rows(module, rows, factors, signs), packed, None, spec.act_format,
                                   None, None, act_group_size=spec.act_group_size)
    target = rows @ _flat_weight(module).T
    return float((y - target).square().sum() / target.square().sum().clamp_min(1e-20))


def _patch_size(module: nn.Module) -> int:
    """How many im2col row entries each input channel has (kh*kw for convs, 1 for linears)."""
    return module.kernel_size[0] * module.kernel_size[1] if isinstance(module, nn.Conv2d) else 1


def _row_factors(module: nn.Module, factors: torch.Tensor) -> torch.Tensor:
    """Channel factors laid out along im2col rows (each channel repeats kh*kw times for convs)."""
    return factors.repeat_interleave(_patch_size(module))


def _rounded(context: LayerContext, prepared: PreparedLayer, rounding: RoundingOptions) -> PackedWeight:
    """Nearest, GPTQ, or layer-wise learned rounding (also for `block` layers that lie in no block)."""
    spec, nearest, weight, factors = context.spec, prepared.nearest, prepared.weight, prepared.factors
    if spec.rounding is Rounding.NEAREST:
        return nearest
    rows = _transformed_rows(context.module, context.inputs.rows, factors, prepared.rotation)
    row_split = context.act_split * _patch_size(context.module) if context.act_split else None
    smoothed, quantized = reference.prepare_activation(rows, spec.act_format, None, None, act_split=row_split,
                                                       act_group_size=spec.act_group_size)
    if spec.rounding is Rounding.GPTQ:
        return gptq_rounding(weight, nearest.scales, nearest, quantized, spec.gptq_damping, spec.gptq_act_order)
    return learn_rounding(weight, nearest.scales, nearest, smoothed, quantized, options=rounding)


def static_activation_scales(context: LayerContext, factors: torch.Tensor | None) -> torch.Tensor:
    """One scale per timestep bucket: absmax of the (smoothed) input in that bucket / the grid max."""
    qmax = spec_of(context.spec.act_format).qmax
    per_bucket = context.calibration.layer_stats(context.fqn)
    overall = context.calibration.merged_over_buckets(context.fqn)
    divisor = factors.cpu() if factors is not None else torch.ones_like(overall.channel_absmax)
    parts = _channel_parts(len(divisor), context.act_split)
    absmax = lambda stats: [float((stats.channel_absmax / divisor)[part].max()) for part in parts]
    scales = [absmax(per_bucket.get(b, overall)) for b in range(context.calibration.buckets.num_buckets)]
    scales = torch.tensor(scales, dtype=torch.float32) / qmax
    return (scales if context.act_split else scales[:, 0]).clamp_min(1e-12)


def _channel_parts(channels: int, act_split: int | None) -> list[slice]:
    """The input-channel ranges that get their own activation scale."""
    return [slice(0, act_split), slice(act_split, channels)] if act_split else [slice(0, channels)]
