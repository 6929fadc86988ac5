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
    """PackedWeight -> float32 (N, K) weight: code x scale, or (code - zero point) x scale."""
    codes = unpack(packed.qdata, packed.format, packed.shape[1])
    values = decode(codes, packed.format) - zero_point_offsets(packed)
    return values * expand_scales(packed.scales, packed.granularity, packed.group_size, packed.shape)


def zero_point_offsets(packed: PackedWeight) -> torch.Tensor | float:
    """The zero points broadcast like the scales (float32), or 0 for a symmetric format."""
    if packed.zero_points is None:
        return 0.0
    return expand_scales(packed.zero_points, packed.granularity, packed.group_size, packed.shape)


def quantize_per_token(x: torch.Tensor, fmt: QuantFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token activation quantization: (M, K) -> (codes (M, K), float32 scales (M, 1))."""
    absmax = x.float().abs().amax(dim=-1, keepdim=True)
    scales = torch.where(absmax > 0, absmax / spec_of(fmt).qmax, torch.ones_like(absmax))
    return encode(x.float() / scales, fmt), scales


def fake_quantize_per_token(x: torch.Tensor, fmt: QuantFormat, group_size: int | None = None) -> torch.Tensor:
    """Quantize and dequantize activations per token (with `group_size`, per group of that many channels of
    each token: the 4-bit activation formats); returns float32 of x's shape."""
    k = x.shape[-1]
    if group_size:
        padded = torch.nn.functional.pad(x.float().reshape(-1, k), (0, (-k) % group_size))
        flat = padded.reshape(-1, group_size)
    else:
        flat = x.reshape(-1, k)
    codes, scales = quantize_per_token(flat, fmt)
    restored = decode(codes, fmt) * scales
    if group_size:
        restored = restored.reshape(-1, padded.shape[-1])[:, :k]
    return restored.reshape(x.shape)


def fake_quantize_static(x: torch.Tensor, fmt: QuantFormat, scale: torch.Tensor) -> torch.Tensor:
    """Quantize and dequantize with one precomputed (calibrated) scale; float32."""
    scale = scale.float()
    return decode(encode(x.float() / scale, fmt), fmt) * scale


def prepare_activation(x: torch.Tensor, act_format: QuantFormat | None, act_scale: torch.Tensor | None = None,
                       smooth: torch.Tensor | None = None, channel_dim: int = -1,
                       act_split: int | None = None, act_group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 input after smoothing, the quantized-dequantized input the matmul sees).

    smooth: per-input-channel divisor (SmoothQuant); act_scale: a static scale, else dynamic per
    token (a token is a row of a linear input, a pixel of a conv input). act_split: shortcut
    splitting (Q-Diffusion) for an input that is a concatenation: channels [0, act_split) and
    [act_split, C) are quantized separately (two per-token scales, or act_scale[0] and act_scale[1]).
    act_group_size: 4-bit activations, one dynamic scale per group of that many channels of a token.
    """
    x32 = x.float()
    if smooth is not None:
        shape = [1] * x32.dim()
        shape[channel_dim] = -1
        x32 = x32 / smooth.float().reshape(shape)
    if act_format is None:
        return x32, x32
    if act_split:
        halves = x32.split([act_split, x32.shape[channel_dim] - act_split], dim=channel_dim)
        scales = act_scale.reshape(2) if act_scale is not None else (None, None)
        parts = [_fake_quantize(half, act_format, scale, channel_dim, act_group_size)
                 for half, scale in zip(halves, scales)]
        return x32, torch.cat(parts, dim=channel_dim)
    return x32, _fake_quantize(x32, act_format, act_scale, channel_dim, act_group_size)


def _fake_quantize(x32: torch.Tensor, act_format: QuantFormat, act_scale: torch.Tensor | None,
                   channel_dim: int, act_group_size: int | None = None) -> torch.Tensor:
    if act_scale is not None:
        return fake_quantize_static(x32, act_format, act_scale)
    moved = x32.movedim(channel_dim, -1)
    return fake_quantize_per_token(moved, act_format, act_group_size).movedim(-1, channel_dim)


def quantized_linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None,
                     act_format: QuantFormat | None, act_scale: torch.Tensor | None = None,
                     smooth: torch.Tensor | None = None,
                     low_rank: tuple[torch.Tensor, torch.Tensor] | None = None,
                     act_group_size: int | None = None) -> torch.Tensor:
    """y = Q(x / smooth) @ dequant(W).T + bias [+ ((x / smooth) @ down.T) @ up.T]; float32 math, cast to x.dtype."""
    x_smooth, x_quantized = prepare_activation(x, act_format, act_scale, smooth, act_group_size=act_group_size)
    return linear_with_weight(x_quantized, x_smooth, dequantize_weight(packed), bias, low_rank).to(x.dtype)


def linear_with_weight(x_quantized: torch.Tensor, x_smooth: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None, low_rank: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """The float32 linear of a quantized layer given its (N, K) weight as floats (dequantized, or soft-rounded
    during reconstruction): the main matmul on the quantized input plus the low-rank branch on the smoothed one."""
    bias32 = bias.float() if bias is not None else None
    y = torch.nn.functional.linear(x_quantized, weight, bias32)
    if low_rank is not None:
        down, up = low_rank
        y = y + torch.nn.functional.linear(torch.nn.functional.linear(x_smooth, down.float()), up.float())
    return y


def quantized_conv2d(x: torch.Tensor, packed: PackedWeight, kernel_shape: tuple[int, ...], bias: torch.Tensor | None,
                     conv: dict, act_format: QuantFormat | None, act_scale: torch.Tensor | None = None,
                     smooth: torch.Tensor | None = None,
                     low_rank: tuple[torch.Tensor, torch.Tensor] | None = None,
                     act_split: int | None = None, act_group_size: int | None = None) -> torch.Tensor:
    """Conv2d with a packed weight: dequantize, then float32 conv (compressed storage, float compute).

    `conv` holds stride/padding/dilation/groups. The low-rank branch is a (rank, C/groups, kh, kw)
    conv followed by a 1x1 conv to the output channels. act_split: see `prepare_activation`.
    """
    x_smooth, x_quantized = prepare_activation(x, act_format, act_scale, smooth, channel_dim=1, act_split=act_split,
                                               act_group_size=act_group_size)
    weight = dequantize_weight(packed)
    return conv2d_with_weight(x_quantized, x_smooth, weight, kernel_shape, bias, conv, low_rank).to(x.dtype)


def conv2d_with_weight(x_quantized: torch.Tensor, x_smooth: torch.Tensor, weight: torch.Tensor,
                       kernel_shape: tuple[int, ...], bias: torch.Tensor | None, conv: dict,
                       low_rank: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """`linear_with_weight` for a conv: `weight` is the flattened (N, C/groups*kh*kw) float weight."""
    bias32 = bias.float() if bias is not None else None
    y = torch.nn.functional.conv2d(x_quantized, weight.reshape(kernel_shape), bias32, **conv)
    if low_rank is not None:
        down, up = low_rank
        hidden = torch.nn.functional.conv2d(x_smooth, down.float().reshape(-1, *kernel_shape[1:]), None, **conv)
        y = y + torch.nn.functional.conv2d(hidden, up.float()[:, :, None, None])
    return y


def int_matmul_exact(a_codes: torch.Tensor, w_codes: torch.Tensor) -> torch.Tensor:
    """Exact integer GEMM of codes: (M, K) x (N, K) -> int32 (M, N) (int64 math, for bit-exact kernel tests)."""
    return (a_codes.to(torch.int64) @ w_codes.to(torch.int64).T).to(torch.int32)
