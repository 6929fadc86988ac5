"""The triton backend of the custom ops: pick the kernel family for a layer and apply the optional
methods around it (smoothing divides x before the kernel, the low-rank branch is two float32
matmuls added to the fp32 kernel output, as in the reference).

Linear: activation-quantized 8-bit weights -> `w8a8`, activation-quantized 4-bit -> `w4a8`,
weight-only -> `w4a16` (4- and 8-bit weights). Conv2d: the weight is dequantized by the
`dequantize` kernel and the convolution runs in torch (cuDNN on a GPU) in x's dtype; activations
are quantized per pixel by the `quantize_act` kernel and dequantized back to x's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..formats import QuantFormat, decode
from .dequantize import dequantize
from .dispatch import KernelFamily, kernel_gap, linear_kernel
from .layout import PackedWeight
from .quantize_act import quantize_activation
from .w4a8 import w4a8_linear
from .w4a16 import weight_only_linear
from .w8a8 import w8a8_linear


def _smoothed(x: torch.Tensor, smooth: torch.Tensor | None, channel_dim: int) -> torch.Tensor:
    if smooth is None:
        return x
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    return x.float() / smooth.float().reshape(shape)


def linear_2d(x2: torch.Tensor, packed: PackedWeight, bias, act_format, act_scale, out_dtype) -> torch.Tensor:
    """The fused kernel for 2-D x; returns (M, N) of `out_dtype`."""
    k = packed.shape[1]
    family = linear_kernel(packed.format, act_format)
    if family is KernelFamily.WEIGHT_ONLY:
        return weight_only_linear(x2, packed.qdata, packed.scales, bias, packed.format, k, packed.group_size,
                                  out_dtype=out_dtype, zero_points=packed.zero_points)
    if family is KernelFamily.W4A8:
        return w4a8_linear(x2, packed.qdata, packed.scales, bias, packed.format, act_format, k, act_scale,
                           packed.group_size, out_dtype=out_dtype)
    if family is KernelFamily.W8A8:
        return w8a8_linear(x2, packed.qdata, packed.scales, bias, act_format, act_scale, packed.group_size,
                           out_dtype=out_dtype)
    raise ValueError(kernel_gap(packed.format, act_format))


def quantized_linear(x, packed, bias, act_format, act_scale, smooth, low_rank) -> torch.Tensor:
    x_smooth = _smoothed(x, smooth, -1)
    x2 = x_smooth.reshape(-1, x.shape[-1])
    out_dtype = torch.float32 if low_rank is not None else x.dtype
    y = linear_2d(x2, packed, bias, act_format, act_scale, out_dtype)
    if low_rank is not None:
        down, up = low_rank
        y = (y + F.linear(F.linear(x2.float(), down.float()), up.float())).to(x.dtype)
    return y.reshape(*x.shape[:-1], packed.shape[0])


def fake_quantize_pixels(x: torch.Tensor, act_format: QuantFormat, act_scale, act_split: int | None) -> torch.Tensor:
    """Quantize-dequantize (B, C, H, W) per pixel over channels with the quantize kernel; float32 result."""
    tokens = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).contiguous()
    bounds = [(0, act_split), (act_split, x.shape[1])] if act_split else [(0, x.shape[1])]
    scales = act_scale.reshape(-1) if act_scale is not None else None
    parts = []
    for index, (start, stop) in enumerate(bounds):
        static = scales[index:index + 1] if scales is not None else None
        codes, token_scales = quantize_activation(tokens[:, start:stop], act_format, static)
        parts.append(decode(codes, act_format) * token_scales)
    flat = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return flat.reshape(x.shape[0], x.shape[2], x.shape[3], x.shape[1]).permute(0, 3, 1, 2)


def quantized_conv2d(x, packed, kernel_shape, bias, conv, act_format, act_scale, smooth, low_rank,
                     act_split) -> torch.Tensor:
    x_smooth = _smoothed(x, smooth, 1)
    x_in = fake_quantize_pixels(x_smooth, act_format, act_scale, act_split) if act_format else x_smooth
    weight = dequantize(packed.qdata, packed.scales, packed.format, packed.shape[1], packed.group_size, x.dtype,
                        zero_points=packed.zero_points)
    y = F.conv2d(x_in.to(x.dtype), weight.reshape(kernel_shape), bias.to(x.dtype) if bias is not None else None,
                 **conv)
    if low_rank is not None:
        down, up = low_rank
        hidden = F.conv2d(x_smooth.float(), down.float().reshape(-1, *kernel_shape[1:]), None, **conv)
        y = (y.float() + F.conv2d(hidden, up.float()[:, :, None, None])).to(x.dtype)
    return y
