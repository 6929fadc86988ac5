"""Fused activation quantization: (M, K) float -> 8-bit codes (M, K) + float32 scales (M, 1).

One program per token row reads the row twice (absmax, then quantize) and writes int8 or fp8
e4m3 codes. Dynamic mode computes scale = absmax / qmax (1 where the row is all zero), static
mode reads one calibrated scale. The math is bit-identical to `reference.quantize_per_token` and
to `formats.encode` of `x / scale`: IEEE division (`div_rn`), round half to even, clamp to qmax.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import QuantFormat, spec_of
from ._triton_common import encode_activation

_BLOCK_K = 256


@triton.jit
def quantize_rows_kernel(x_ptr, codes_ptr, scales_ptr, static_scale_ptr, K, stride_x, stride_codes,
                         QMAX: tl.constexpr, IS_FP8: tl.constexpr, STATIC: tl.constexpr, BLOCK_K: tl.constexpr):
    """x (M, K) any float dtype, row stride `stride_x`, unit column stride -> codes (M, K), scales (M,) fp32."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    if STATIC:
        scale = tl.load(static_scale_ptr).to(tl.float32)
    else:
        absmax = tl.zeros((BLOCK_K,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
            absmax = tl.maximum(absmax, tl.abs(x))
        row_max = tl.max(absmax, axis=0)
        scale = tl.where(row_max > 0, tl.div_rn(row_max, QMAX), 1.0)
    tl.store(scales_ptr + row, scale)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        codes = encode_activation(tl.div_rn(x, scale), IS_FP8)
        tl.store(codes_ptr + row * stride_codes + offs, codes, mask=offs < K)


def quantize_activation(x: torch.Tensor, fmt: QuantFormat, static_scale: torch.Tensor | None = None,
                        codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the rows of a 2-D `x` (unit column stride): codes (M, K) and float32 scales (M, 1).

    `codes` may be a preallocated (possibly column-sliced) output; with `static_scale` every row
    uses that one scale (its first element).
    """
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be 2-D with unit column stride, got shape {tuple(x.shape)} strides {x.stride()}")
    m, k = x.shape
    spec = spec_of(fmt)
    if codes is None:
        codes = torch.empty((m, k), dtype=spec.storage_dtype, device=x.device)
    scales = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    static = static_scale is not None
    scale_arg = static_scale.reshape(-1)[:1].float().contiguous() if static else scales
    if m:
        quantize_rows_kernel[(m,)](x, codes, scales, scale_arg, k, x.stride(0), codes.stride(0),
                                   QMAX=spec.qmax, IS_FP8=fmt is QuantFormat.FP8_E4M3, STATIC=static,
                                   BLOCK_K=min(_BLOCK_K, triton.next_power_of_2(max(k, 16))))
    return codes, scales
