"""Post-training quantization with calibration: apply a recipe's methods layer by layer.

Per layer, in order: smoothing (strength searched on captured inputs, or fixed), the low-rank
branch on the smoothed weight, scale choice (absmax or MSE clipping), rounding (nearest or
learned on captured inputs), then static activation scales per timestep bucket from the
calibration statistics when the plan asks for them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import CalibrationSet
from ..formats import spec_of
from ..kernels import reference
from ..kernels.layout import PackedWeight
from ..recipe import ActMode, QuantSpec, Recipe, Rounding
from .layer_inputs import LayerInputs, capture_layer_inputs
from .low_rank import split_low_rank
from .modules import QuantConv2d, QuantLinear
from .quantize import choose_scales, quantize_weight
from .rounding import learn_rounding
from .smoothing import DEFAULT_ALPHAS, smoothed_weight, smoothing_factors, supports_smoothing, weight_channel_absmax
from .swap import DEFAULT_SKIP, QuantizationReport, plan_of, quantizable_layers, set_submodule
from .timesteps import attach_tracker


@dataclass
class LayerContext:
    """What one layer's methods may use: its float module, calibration statistics and captured inputs."""

    fqn: str
    module: nn.Module
    spec: QuantSpec
    calibration: CalibrationSet | None
    inputs: LayerInputs | None


def quantize_model(denoiser: nn.Module, recipe: Recipe, calibration: CalibrationSet | None = None,
                   progress: bool = False, rounding_iterations: int = 300) -> QuantizationReport:
    """Quantize `denoiser` in place with `recipe`; methods that need data use `calibration`."""
    skip = DEFAULT_SKIP if recipe.keep_default_skips else ()
    report, plans = QuantizationReport(), {}
    for fqn, module in quantizable_layers(denoiser):
        plan, reason = plan_of(recipe, fqn, skip)
        if plan is None:
            report.skipped[fqn] = reason
        else:
            plans[fqn] = (module, _usable_plan(plan, module))
    needing = {fqn for fqn, (_, plan) in plans.items() if plan.needs_calibration}
    if needing and calibration is None:
        raise ValueError(f"{len(needing)} layers use calibration-driven methods (e.g. {sorted(needing)[0]}); "
                         "pass a CalibrationSet")
    wanted = _needs_inputs(plans)
    inputs = capture_layer_inputs(denoiser, calibration, wanted, progress=progress) if wanted else {}
    tracker = attach_tracker(denoiser, calibration.buckets) if _any_static(plans) else None
    for fqn, (module, plan) in tqdm(plans.items(), desc="quantize", unit="layer", disable=not progress):
        quantized = quantize_layer(LayerContext(fqn, module, plan, calibration, inputs.get(fqn)), rounding_iterations)
        quantized.fqn, quantized.timestep_tracker = fqn, tracker
        set_submodule(denoiser, fqn, quantized)
        report.quantized.append(fqn)
    return report


def _usable_plan(plan: QuantSpec, module: nn.Module) -> QuantSpec:
    """Drop methods a layer's shape cannot take (grouped convs: no smoothing or low-rank branch)."""
    if supports_smoothing(module):
        return plan
    return replace(plan, smoothing=None, low_rank=0)


def _needs_inputs(plans) -> set[str]:
    return {fqn for fqn, (_, plan) in plans.items()
            if plan.smoothing == "auto" or plan.rounding is Rounding.LEARNED}


def _any_static(plans) -> bool:
    return any(plan.act_mode is ActMode.STATIC for _, plan in plans.values())


def quantize_layer(context: LayerContext, rounding_iterations: int = 300) -> nn.Module:
    """One layer through the method pipeline; returns its QuantLinear / QuantConv2d."""
    spec, module = context.spec, context.module
    factors = _smoothing(context) if spec.smoothing is not None else None
    weight = smoothed_weight(module, factors) if factors is not None else _flat_weight(module)
    low_rank = split_low_rank(weight, spec.low_rank) if spec.low_rank else None
    if low_rank is not None:
        weight = low_rank[2]
    packed = _pack(context, weight, factors, low_rank, rounding_iterations)
    quantized = (QuantLinear if isinstance(module, nn.Linear) else QuantConv2d).from_packed(module, spec, packed)
    quantized.set_optional("smooth", factors)
    if low_rank is not None:
        quantized.set_optional("lora_down", low_rank[0].to(module.weight.dtype))
        quantized.set_optional("lora_up", low_rank[1].to(module.weight.dtype))
    if spec.act_mode is ActMode.STATIC:
        quantized.set_optional("act_scales", static_activation_scales(context, factors))
    return quantized


def _flat_weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().float().reshape(module.weight.shape[0], -1)


def _act_absmax(context: LayerContext) -> torch.Tensor:
    return context.calibration.merged_over_buckets(context.fqn).channel_absmax


def _smoothing(context: LayerContext) -> torch.Tensor:
    act_absmax, weight_absmax = _act_absmax(context), weight_channel_absmax(context.module)
    if context.spec.smoothing != "auto":
        return smoothing_factors(act_absmax, weight_absmax, float(context.spec.smoothing))
    best, best_error = None, float("inf")
    for alpha in DEFAULT_ALPHAS:
        factors = smoothing_factors(act_absmax, weight_absmax, alpha)
        error = _output_error(context, factors)
        if error < best_error:
            best, best_error = factors, error
    return best


def _output_error(context: LayerContext, factors: torch.Tensor) -> float:
    """Relative output error of the layer quantized with these smoothing factors (nearest rounding)."""
    spec, module, rows = context.spec, context.module, context.inputs.rows
    weight = smoothed_weight(module, factors)
    packed = quantize_weight(weight, spec.weight_format, spec.granularity, spec.group_size, spec.scale_method)
    row_factors = _row_factors(module, factors)
    y = reference.quantized_linear(rows, packed, None, spec.act_format, None, row_factors)
    target = rows @ _flat_weight(module).T
    return float((y - target).square().sum() / target.square().sum().clamp_min(1e-20))


def _row_factors(module: nn.Module, factors: torch.Tensor) -> torch.Tensor:
    """Channel factors laid out along im2col rows (each channel repeats kh*kw times for convs)."""
    if isinstance(module, nn.Conv2d):
        return factors.repeat_interleave(module.kernel_size[0] * module.kernel_size[1])
    return factors


def _pack(context: LayerContext, weight, factors, low_rank, rounding_iterations: int) -> PackedWeight:
    spec = context.spec
    nearest = quantize_weight(weight, spec.weight_format, spec.granularity, spec.group_size, spec.scale_method)
    if spec.rounding is not Rounding.LEARNED:
        return nearest
    rows = context.inputs.rows
    row_factors = _row_factors(context.module, factors) if factors is not None else None
    smoothed, quantized = reference.prepare_activation(rows, spec.act_format, None, row_factors)
    return learn_rounding(weight, nearest.scales, nearest, smoothed, quantized, iterations=rounding_iterations)


def static_activation_scales(context: LayerContext, factors: torch.Tensor | None) -> torch.Tensor:
    """One scale per timestep bucket: absmax of the (smoothed) input in that bucket / the grid max."""
    qmax = spec_of(context.spec.act_format).qmax
    per_bucket = context.calibration.layer_stats(context.fqn)
    overall = context.calibration.merged_over_buckets(context.fqn)
    divisor = factors if factors is not None else torch.ones_like(overall.channel_absmax)
    absmax = lambda stats: float((stats.channel_absmax / divisor).max())
    scales = [absmax(per_bucket.get(b, overall)) / qmax for b in range(context.calibration.buckets.num_buckets)]
    return torch.tensor(scales, dtype=torch.float32).clamp_min(1e-12)
