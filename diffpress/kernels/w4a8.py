"""W4A8 fused GEMM: 8-bit activation codes x 4-bit weights unpacked in the main loop.

    y[m, n] = a_scale[m] * sum_g w_scale[n, g] * (sum_{k in g} a[m, k] * w[n, k]) (+ bias[n])

Operands: activation codes (M, K) int8 or float8_e4m3fn with float32 per-token (or static) scales
from `quantize_act`; weight `qdata` (N, ceil(K/2)) uint8 in `Layout.NIBBLES_K_V1` (INT4 two's
complement or FP4 e2m1 sign-magnitude). Each K tile of bytes is loaded once, split into nibbles
and converted to the activation's 8-bit operand type: INT4 -> int8 or fp8 (exact), FP4 -> fp8
(exact) or, with INT8 activations, 2 * value as int8 (exact; the 1/2 joins the scale). Group
scales (bf16 (N, G)) multiply each group's partial product; groups smaller than BLOCK_K (FP4
block 16) run one masked dot per group, because 8-bit tensor-core dots need K >= 32. Per-channel
and per-tensor scales are applied in the epilogue. INT8 products accumulate exactly in int32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import QuantFormat
from . import kernel_configs
from ._triton_common import (check_linear_operands, dot_8bit, fp4_value_doubled, group_scaled_dot, int4_value,
                             interpreting, scale_strides, store_output, tile_ids, triton_dtype, unpack_nibble_tile)
from .quantize_act import quantize_activation


@triton.jit
def _weight_operand(nibbles, keep, WEIGHT_FP4: tl.constexpr, IS_FP8: tl.constexpr):
    """Nibbles (K, N) -> the 8-bit dot operand; elements where `keep` is False become 0."""
    if WEIGHT_FP4:
        value = fp4_value_doubled(nibbles)
    else:
        value = int4_value(nibbles)
    value = tl.where(keep, value, 0)
    if IS_FP8:
        if WEIGHT_FP4:
            return (value.to(tl.float32) * 0.5).to(tl.float8e4nv)
        return value.to(tl.float32).to(tl.float8e4nv)
    return value.to(tl.int8)


@triton.jit
def w4a8_kernel(a_ptr, b_ptr, a_scale_ptr, w_scale_ptr, bias_ptr, c_ptr,
                M, N, K, stride_am, stride_bn, stride_cm, stride_sn, stride_sg,
                WEIGHT_FP4: tl.constexpr, IS_FP8: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr,
                OUT_DTYPE: tl.constexpr, INTERPRET: tl.constexpr, MAX_IMPRECISE_ACC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """a (M, K) 8-bit codes, b (N, ceil(K/2)) packed nibbles, c (M, N); GROUP 0: per-channel/tensor scales."""
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    # int8 x fp4 operands carry 2 * value: halve once at the end (exact, a power of two)
    UNDO: tl.constexpr = 0.5 if (WEIGHT_FP4 and not IS_FP8) else 1.0
    SUB: tl.constexpr = BLOCK_K // GROUP if (GROUP > 0 and GROUP < BLOCK_K) else 1
    ACC_DTYPE: tl.constexpr = tl.float32 if (IS_FP8 or GROUP > 0) else tl.int32
    acc = tl.zeros((BLOCK_M, BLOCK_N), ACC_DTYPE)
    half_k = (K + 1) // 2
    in_tile = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + in_tile
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        offs_byte = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        packed = tl.load(b_ptr + offs_n[None, :] * stride_bn + offs_byte[:, None],
                         mask=(offs_byte[:, None] < half_k) & (offs_n[None, :] < N), other=0)
        nibbles = unpack_nibble_tile(packed)
        if GROUP == 0:
            b = _weight_operand(nibbles, nibbles >= 0, WEIGHT_FP4, IS_FP8)
            acc = dot_8bit(a, b, acc, IS_FP8, MAX_IMPRECISE_ACC)
        else:
            for sub in tl.static_range(SUB):
                keep = ((in_tile // GROUP) == sub)[:, None] if SUB > 1 else nibbles >= 0
                b = _weight_operand(nibbles, keep, WEIGHT_FP4, IS_FP8)
                group_index = (k0 + sub * GROUP) // GROUP
                w_scale = tl.load(w_scale_ptr + offs_n * stride_sn + group_index * stride_sg, mask=offs_n < N,
                                  other=0.0).to(tl.float32)
                acc += group_scaled_dot(a, b, w_scale, IS_FP8, MAX_IMPRECISE_ACC)
    a_scale = tl.load(a_scale_ptr + offs_m, mask=offs_m < M, other=1.0)
    y = acc.to(tl.float32) * (a_scale[:, None] * UNDO)
    if GROUP == 0:
        y = y * tl.load(w_scale_ptr + offs_n * stride_sn, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    c_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    store_output(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :], y, c_mask, OUT_DTYPE, INTERPRET)


def w4a8_linear(x: torch.Tensor, qdata: torch.Tensor, w_scales: torch.Tensor, bias: torch.Tensor | None,
                weight_format: QuantFormat, act_format: QuantFormat, k: int, act_scale: torch.Tensor | None = None,
                group_size: int | None = None, out_dtype: torch.dtype | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """y = Q(x) @ dequant(W).T + bias for 2-D x (M, k) and packed 4-bit W (N, ceil(k/2))."""
    n = qdata.shape[0]
    check_linear_operands(x, n, k, bias)
    if qdata.shape[1] != (k + 1) // 2 or qdata.dtype != torch.uint8:
        raise ValueError(f"qdata must be uint8 (N, {(k + 1) // 2}), got {qdata.dtype} {tuple(qdata.shape)}")
    codes, a_scales = quantize_activation(x.contiguous(), act_format, act_scale)
    if out is None:
        out = torch.empty((x.shape[0], n), dtype=out_dtype or x.dtype, device=x.device)
    if x.shape[0]:
        _launch(codes, a_scales, qdata, w_scales, bias, out, weight_format, act_format, k, group_size or 0)
    return out


def _launch(codes, a_scales, qdata, w_scales, bias, out, weight_format, act_format, k, group) -> None:
    m, n = out.shape
    config = kernel_configs.config_for("w4a8", codes.device, m, n, k)
    stride_sn, stride_sg = scale_strides(w_scales)
    grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
    w4a8_kernel[grid](codes, qdata, a_scales, w_scales, bias if bias is not None else w_scales, out,
                      m, n, k, codes.stride(0), qdata.stride(0), out.stride(0), stride_sn, stride_sg,
                      WEIGHT_FP4=weight_format is QuantFormat.FP4_E2M1, IS_FP8=act_format is QuantFormat.FP8_E4M3,
                      GROUP=group, HAS_BIAS=bias is not None, OUT_DTYPE=triton_dtype(out.dtype),
                      INTERPRET=interpreting(),
                      MAX_IMPRECISE_ACC=min(kernel_configs.FP8_PROMOTION_INTERVAL, config["BLOCK_K"]), **config)
