"""Weight dequantization kernel: packed (N, K) weight -> dense (N, K) float in a chosen dtype.

Used by the QuantConv2d path on the triton backend: the stored weight stays compressed and is
expanded just before the convolution (cuDNN), which then runs in the activation's dtype. Values are
`value(code) * scale` (uint4: `(code - zero point) * scale`) in fp32, rounded once to the output dtype, as
in `reference.dequantize_weight`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import QuantFormat
from ._triton_common import interpreting, scale_strides, store_output, triton_dtype
from .w4a16 import _WEIGHT_KIND, _scaled_tile, _weight_tile, zero_point_operand

_BLOCK_N, _BLOCK_K = 32, 64


@triton.jit
def dequantize_kernel(b_ptr, w_scale_ptr, zero_ptr, out_ptr, N, K, stride_bn, stride_on, stride_sn, stride_sg,
                      WEIGHT_KIND: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, OUT_DTYPE: tl.constexpr,
                      INTERPRET: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """b: packed weight (8-bit (N, K) or nibbles (N, ceil(K/2))); out (N, K) = value * scale."""
    offs_n = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    k0 = tl.program_id(1) * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    value = _weight_tile(b_ptr, offs_k, offs_n, N, K, stride_bn, k0, WEIGHT_KIND, BLOCK_K)
    mask = (offs_k[:, None] < K) & (offs_n[None, :] < N)
    scaled = _scaled_tile(value, w_scale_ptr, zero_ptr, offs_k, offs_n, N, K, stride_sn, stride_sg, GROUP, HAS_ZERO)
    store_output(out_ptr + offs_n[None, :] * stride_on + offs_k[:, None], scaled, mask, OUT_DTYPE, INTERPRET)


def dequantize(qdata: torch.Tensor, w_scales: torch.Tensor, weight_format: QuantFormat, k: int,
               group_size: int | None, dtype: torch.dtype, out: torch.Tensor | None = None,
               zero_points: torch.Tensor | None = None) -> torch.Tensor:
    """Packed weight -> (N, k) tensor of `dtype` (float32, bfloat16 or float16)."""
    n = qdata.shape[0]
    if out is None:
        out = torch.empty((n, k), dtype=dtype, device=qdata.device)
    stride_sn, stride_sg = scale_strides(w_scales)
    grid = (triton.cdiv(n, _BLOCK_N), triton.cdiv(k, _BLOCK_K))
    if n and k:
        zero_points = zero_point_operand(zero_points, w_scales)
        dequantize_kernel[grid](qdata, w_scales, zero_points if zero_points is not None else w_scales, out, n, k,
                                qdata.stride(0), out.stride(0), stride_sn, stride_sg,
                                WEIGHT_KIND=_WEIGHT_KIND[weight_format], GROUP=group_size or 1,
                                HAS_ZERO=zero_points is not None,
                                OUT_DTYPE=triton_dtype(dtype), INTERPRET=interpreting(),
                                BLOCK_N=_BLOCK_N, BLOCK_K=_BLOCK_K)
    return out
