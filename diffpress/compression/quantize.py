"""Reference weight quantization in pure torch: scale choice, quantize, dequantize, fake-quantize.

Symmetric formats have one scale per unit: `absmax` maps each unit's largest magnitude onto the grid's
largest code; `mse` searches clipping ratios per unit (channel or group) and keeps the ratio with
the smallest squared reconstruction error, which pays off at 4 bits where one outlier otherwise
stretches the grid for the whole group. The asymmetric format (uint4) adds an integer zero point per
unit: the 16 codes span [min, max] of the unit (widened to include 0, so zero stays exact) instead of
[-absmax, absmax], which wastes no levels on a skewed unit; `mse` shrinks that range by the same ratios.
"""
from __future__ import annotations

import enum

import torch

from ..formats import Granularity, QuantFormat, check_granularity, decode, encode, spec_of
from ..kernels.layout import ZERO_POINT_DTYPE, PackedWeight, pack, scale_dtype_for
from ..kernels.reference import dequantize_weight, expand_scales


class ScaleMethod(str, enum.Enum):
    ABSMAX = "absmax"
    MSE = "mse"


DEFAULT_CLIP_RATIOS = tuple(1.0 - 0.025 * i for i in range(21))  # 1.0 down to 0.5


def _as_units(weight: torch.Tensor, granularity: Granularity, group_size: int | None) -> torch.Tensor:
    """(N, K) -> (units, elements per unit); a partial last group is zero-padded (0 is exact)."""
    n, k = weight.shape
    if granularity is Granularity.PER_TENSOR:
        return weight.reshape(1, -1)
    if granularity is Granularity.PER_CHANNEL:
        return weight
    padded = torch.nn.functional.pad(weight, (0, (-k) % group_size))
    return padded.reshape(-1, group_size)


def _roundtrip(units: torch.Tensor, scales: torch.Tensor, fmt: QuantFormat,
               zeros: torch.Tensor | float = 0.0) -> torch.Tensor:
    return (decode(encode(units / scales + zeros, fmt), fmt) - zeros) * scales


def _store(scales: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Round scales to their storage dtype, never to zero, so quantization uses the stored values."""
    stored = scales.to(scale_dtype_for(granularity))
    tiny = torch.finfo(stored.dtype).tiny
    return stored.clamp_min(tiny)


def choose_scales(weight: torch.Tensor, fmt: QuantFormat, granularity: Granularity,
                  group_size: int | None = None, method: ScaleMethod = ScaleMethod.ABSMAX,
                  clip_ratios: tuple[float, ...] = DEFAULT_CLIP_RATIOS,
                  importance: torch.Tensor | None = None) -> torch.Tensor:
    """Per-unit scales for an (N, K) weight, in storage dtype, shaped as the layout wants them (symmetric
    formats; see `choose_asymmetric` for uint4). importance: (K,) weights of the squared error per input
    column in the clipping search (the input's mean square per channel: the error of the layer's output
    rather than of its weight); None weighs every element alike."""
    fmt, granularity = QuantFormat(fmt), Granularity(granularity)
    check_granularity(fmt, granularity, group_size)
    units = _as_units(weight.float(), granularity, group_size)
    absmax = units.abs().amax(dim=1, keepdim=True)
    absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    qmax = spec_of(fmt).qmax
    if ScaleMethod(method) is ScaleMethod.ABSMAX:
        best = _store(absmax / qmax, granularity).float()
    else:
        weights = None if importance is None else _as_units(
            importance.float().reshape(1, -1).expand(weight.shape[0], -1), granularity, group_size)
        best = _search_clipping(units, absmax / qmax, fmt, granularity, clip_ratios, weights)
    return _reshape_scales(best, granularity, weight.shape).to(scale_dtype_for(granularity))


def _search_clipping(units: torch.Tensor, base_scales: torch.Tensor, fmt: QuantFormat,
                     granularity: Granularity, clip_ratios: tuple[float, ...],
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    def error_of(scales):
        squared = (_roundtrip(units, scales, fmt) - units).square()
        return (squared if weights is None else squared * weights).sum(dim=1, keepdim=True)

    best_scales = _store(base_scales, granularity).float()
    best_error = error_of(best_scales)
    for ratio in clip_ratios:
        scales = _store(base_scales * ratio, granularity).float()
        error = error_of(scales)
        better = error < best_error
        best_scales = torch.where(better, scales, best_scales)
        best_error = torch.where(better, error, best_error)
    return best_scales


def choose_asymmetric(weight: torch.Tensor, fmt: QuantFormat, granularity: Granularity,
                      group_size: int | None = None, method: ScaleMethod = ScaleMethod.ABSMAX,
                      clip_ratios: tuple[float, ...] = DEFAULT_CLIP_RATIOS) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, zero points) per unit of an (N, K) weight for an asymmetric format, shaped as the layout
    wants them: the unit's [min, max] (with 0 inside) mapped onto codes 0..qmax, shrunk by the clipping
    ratio with the smallest squared error when `method` is mse."""
    fmt, granularity = QuantFormat(fmt), Granularity(granularity)
    check_granularity(fmt, granularity, group_size)
    units = _as_units(weight.float(), granularity, group_size)
    low, high = units.amin(dim=1, keepdim=True).clamp_max(0), units.amax(dim=1, keepdim=True).clamp_min(0)
    ratios = (1.0,) if ScaleMethod(method) is ScaleMethod.ABSMAX else (1.0, *clip_ratios)
    best_scales = best_zeros = best_error = None
    for ratio in ratios:
        scales, zeros = _asymmetric_grid(low * ratio, high * ratio, fmt, granularity)
        error = (_roundtrip(units, scales, fmt, zeros) - units).square().sum(dim=1, keepdim=True)
        if best_error is None:
            best_scales, best_zeros, best_error = scales, zeros, error
            continue
        better = error < best_error
        best_scales = torch.where(better, scales, best_scales)
        best_zeros = torch.where(better, zeros, best_zeros)
        best_error = torch.where(better, error, best_error)
    return (_reshape_scales(best_scales, granularity, weight.shape).to(scale_dtype_for(granularity)),
            _reshape_scales(best_zeros, granularity, weight.shape).to(ZERO_POINT_DTYPE))


def _asymmetric_grid(low: torch.Tensor, high: torch.Tensor, fmt: QuantFormat,
                     granularity: Granularity) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored scale, integer zero point) mapping [low, high] onto codes 0..qmax."""
    qmax = spec_of(fmt).qmax
    span = high - low
    scales = _store(torch.where(span > 0, span / qmax, torch.ones_like(span)), granularity).float()
    zeros = torch.round(-low / scales).clamp(0, qmax)
    return scales, zeros


def _reshape_scales(scales: torch.Tensor, granularity: Granularity, shape: torch.Size) -> torch.Tensor:
    if granularity is Granularity.PER_TENSOR:
        return scales.reshape(1)
    if granularity is Granularity.PER_CHANNEL:
        return scales.reshape(shape[0])
    return scales.reshape(shape[0], -1)


def quantize_weight(weight: torch.Tensor, fmt: QuantFormat, granularity: Granularity,
                    group_size: int | None = None, method: ScaleMethod = ScaleMethod.ABSMAX,
                    scales: torch.Tensor | None = None, zero_points: torch.Tensor | None = None) -> PackedWeight:
    """Quantize an (N, K) float weight into a PackedWeight (scales, and zero points for an asymmetric format,
    chosen unless given)."""
    if weight.dim() != 2:
        raise ValueError(f"quantize_weight expects an (N, K) weight, got shape {tuple(weight.shape)}")
    fmt, granularity = QuantFormat(fmt), Granularity(granularity)
    shape = tuple(weight.shape)
    if scales is None and spec_of(fmt).zero_point:
        scales, zero_points = choose_asymmetric(weight, fmt, granularity, group_size, method)
    elif scales is None:
        scales = choose_scales(weight, fmt, granularity, group_size, method)
    offsets = expand_scales(zero_points, granularity, group_size, shape) if zero_points is not None else 0.0
    codes = encode(weight.float() / expand_scales(scales, granularity, group_size, shape) + offsets, fmt)
    return PackedWeight(pack(codes, fmt), scales, fmt, granularity, group_size, shape, zero_points)


def dequantize(packed: PackedWeight) -> torch.Tensor:
    """PackedWeight -> float32 (N, K) weight (the kernels' reference dequantization)."""
    return dequantize_weight(packed)


def fake_quantize(weight: torch.Tensor, fmt: QuantFormat, granularity: Granularity,
                  group_size: int | None = None, method: ScaleMethod = ScaleMethod.ABSMAX) -> torch.Tensor:
    """Quantize then dequantize; same shape and dtype as `weight`."""
    packed = quantize_weight(weight, fmt, granularity, group_size, method)
    return dequantize_weight(packed).to(weight.dtype)
