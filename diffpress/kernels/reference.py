"""Torch reference of every kernel op: the test oracle and the CPU execution path.

All arithmetic is float32; results are cast to the activation dtype at the end, as the fused
kernels do in their epilogue.
"""
from __future__ import annotations

import torch

from ..formats import Granularity, QuantFormat, decode, encode, spec_of
from .layout import PackedWeight, unpack


def expand_scales(scales: torch.Tensor, granularity: Granularity, group_size: int | None,
                  shape: tuple[int, int]) -> torch.Tensor:
    """Broadcast stored scales to a float32 tensor that multiplies the (N, K) codes elementwise."""
    n, k = shape
    scales = scales.float()
    if granularity is Granularity.PER_TENSOR:
        return scales.reshape(1, 1)
    if granularity is Granularity.PER_CHANNEL:
        return scales.reshape(n, 1)
    return scales.repeat_interleave(group_size, dim=1)[:, :k]


def dequantize_weight(packed: PackedWeight) -> torch.Tensor:
    """PackedWeight -> float32 (N, K) weight."""
    codes = unpack(packed.qdata, packed.format, packed.shape[1])
    values = decode(codes, packed.format)
    return values * expand_scales(packed.scales, packed.granularity, packed.group_size, packed.shape)


def quantize_per_token(x: torch.Tensor, fmt: QuantFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token activation quantization: (M, K) -> (codes (M, K), float32 scales (M, 1))."""
    absmax = x.float().abs().amax(dim=-1, keepdim=True)
    scales = torch.where(absmax > 0, absmax / spec_of(fmt).qmax, torch.ones_like(absmax))
    return encode(x.float() / scales, fmt), scales


def fake_quantize_per_token(x: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """Quantize and dequantize activations per token; returns float32 of x's shape."""
    flat = x.reshape(-1, x.shape[-1])
    codes, scales = quantize_per_token(flat, fmt)
    return (decode(codes, fmt) * scales).reshape(x.shape)


def quantized_linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None,
                     act_format: QuantFormat | None) -> torch.Tensor:
    """y = act_q(x) @ dequant(W).T + bias, float32 math, cast to x.dtype."""
    x32 = fake_quantize_per_token(x, act_format) if act_format else x.float()
    bias32 = bias.float() if bias is not None else None
    return torch.nn.functional.linear(x32, dequantize_weight(packed), bias32).to(x.dtype)
