"""W8A8 fused GEMM: 8-bit activations x 8-bit weights (INT8 or FP8 e4m3), scale epilogue.

    y[m, n] = (sum_k a[m, k] * w[n, k]) * a_scale[m] * w_scale[n] (+ bias[n]), cast to the output dtype

Operands: activation codes (M, K) int8 / float8_e4m3fn with float32 per-token scales (M,), or the
float input itself when activation quantization runs in the GEMM prologue (`act_quant="prologue"`:
each program computes its rows' absmax over K, or reads a static scale, and quantizes tiles in
registers). Weight `qdata` (N, K) in `Layout.ROWMAJOR_8BIT_V1`; scales float32 (1,) or (N,) applied
in the epilogue, or (N, G) group scales applied per K tile (BLOCK_K divides the group size).
INT8 accumulates exactly in int32; FP8 accumulates in fp32, and on Hopper the tensor-core
accumulator (about 22 bits) is promoted to fp32 every `MAX_IMPRECISE_ACC` products along K.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import QuantFormat, spec_of
from . import kernel_configs
from ._triton_common import (check_linear_operands, dot_8bit, encode_activation, group_scaled_dot, interpreting,
                             scale_strides, store_output, tile_ids, triton_dtype)
from .quantize_act import quantize_activation

CODES, DYNAMIC_PROLOGUE, STATIC_PROLOGUE = 0, 1, 2


@triton.jit
def _prologue_scales(x_ptr, static_scale_ptr, offs_m, M, K, stride_am, A_MODE: tl.constexpr, QMAX: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-row activation scales (BLOCK_M,) fp32: absmax / qmax over all of K, or the static scale."""
    if A_MODE == 2:
        return tl.zeros((BLOCK_M,), tl.float32) + tl.load(static_scale_ptr).to(tl.float32)
    absmax = tl.zeros((BLOCK_M, BLOCK_K), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_am + offs_k[None, :], mask=mask, other=0.0)
        absmax = tl.maximum(absmax, tl.abs(x.to(tl.float32)))
    row_max = tl.max(absmax, axis=1)
    return tl.where(row_max > 0, tl.div_rn(row_max, QMAX), 1.0)


@triton.jit
def w8a8_kernel(a_ptr, b_ptr, a_scale_ptr, static_scale_ptr, w_scale_ptr, bias_ptr, c_ptr,
                M, N, K, stride_am, stride_bn, stride_cm, stride_sn, stride_sg,
                A_MODE: tl.constexpr, IS_FP8: tl.constexpr, QMAX: tl.constexpr, GROUP: tl.constexpr,
                HAS_BIAS: tl.constexpr, RAW: tl.constexpr, OUT_DTYPE: tl.constexpr, INTERPRET: tl.constexpr,
                MAX_IMPRECISE_ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """a (M, K) codes or float input (A_MODE), b (N, K) 8-bit, c (M, N); GROUP > 0: per-group weight scales."""
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    if A_MODE != 0:
        a_scale = _prologue_scales(a_ptr, static_scale_ptr, offs_m, M, K, stride_am, A_MODE, QMAX, BLOCK_M, BLOCK_K)
    else:
        a_scale = tl.load(a_scale_ptr + offs_m, mask=offs_m < M, other=1.0)
    ACC_DTYPE: tl.constexpr = tl.float32 if (IS_FP8 or GROUP > 0) else tl.int32
    acc = tl.zeros((BLOCK_M, BLOCK_N), ACC_DTYPE)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a_mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :], mask=a_mask, other=0.0)
        if A_MODE != 0:
            a = encode_activation(tl.div_rn(a.to(tl.float32), a_scale[:, None]), IS_FP8)
        b_mask = (offs_k[:, None] < K) & (offs_n[None, :] < N)
        b = tl.load(b_ptr + offs_n[None, :] * stride_bn + offs_k[:, None], mask=b_mask, other=0.0)
        if GROUP > 0:
            w_scale = tl.load(w_scale_ptr + offs_n * stride_sn + (k0 // GROUP) * stride_sg, mask=offs_n < N,
                              other=0.0).to(tl.float32)
            acc += group_scaled_dot(a, b, w_scale, IS_FP8, MAX_IMPRECISE_ACC)
        else:
            acc = dot_8bit(a, b, acc, IS_FP8, MAX_IMPRECISE_ACC)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
    c_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if RAW:
        tl.store(c_ptrs, acc, mask=c_mask)
    else:
        y = acc.to(tl.float32) * a_scale[:, None]
        if GROUP == 0:
            y = y * tl.load(w_scale_ptr + offs_n * stride_sn, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        store_output(c_ptrs, y, c_mask, OUT_DTYPE, INTERPRET)


def w8a8_linear(x: torch.Tensor, qdata: torch.Tensor, w_scales: torch.Tensor, bias: torch.Tensor | None,
                act_format: QuantFormat, act_scale: torch.Tensor | None = None, group_size: int | None = None,
                out_dtype: torch.dtype | None = None, act_quant: str = "separate",
                out: torch.Tensor | None = None) -> torch.Tensor:
    """y = Q(x) @ dequant(W).T + bias for 2-D x; `act_quant` "separate" (quantize kernel, then GEMM) or "prologue"."""
    n, k = qdata.shape
    check_linear_operands(x, n, k, bias)
    _check_formats(qdata, act_format)
    x = x.contiguous()
    if act_quant == "separate":
        a, a_scales = quantize_activation(x, act_format, act_scale)
        mode, static = CODES, a_scales
    elif act_quant == "prologue":
        a, a_scales = x, x
        mode = STATIC_PROLOGUE if act_scale is not None else DYNAMIC_PROLOGUE
        static = act_scale.reshape(-1)[:1].float().contiguous() if act_scale is not None else x
    else:
        raise ValueError(f"act_quant must be 'separate' or 'prologue', got {act_quant!r}")
    if out is None:
        out = torch.empty((x.shape[0], n), dtype=out_dtype or x.dtype, device=x.device)
    _launch(a, a_scales, static, qdata, w_scales, bias, out, mode, act_format, group_size or 0, raw=False)
    return out


def int8_mm_raw(a_codes: torch.Tensor, qdata: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The bare integer GEMM: int8 (M, K) x int8 (N, K) -> int32 (M, N) accumulator, no scales."""
    if out is None:
        out = torch.empty((a_codes.shape[0], qdata.shape[0]), dtype=torch.int32, device=a_codes.device)
    ones = torch.ones(1, dtype=torch.float32, device=a_codes.device)
    _launch(a_codes.contiguous(), ones, ones, qdata, ones, None, out, CODES, QuantFormat.INT8, 0, raw=True)
    return out


def _check_formats(qdata: torch.Tensor, act_format: QuantFormat) -> None:
    want = spec_of(act_format).storage_dtype
    if qdata.dtype != want:
        raise ValueError(f"W8A8 needs weight and activation codes of one type: weight {qdata.dtype}, "
                         f"activation {act_format.value} ({want})")


def _launch(a, a_scales, static, qdata, w_scales, bias, out, mode, act_format, group, raw) -> None:
    m, (n, k) = a.shape[0], qdata.shape
    if m == 0:
        return
    config = kernel_configs.config_for("w8a8", a.device, m, n, k, group=group)
    stride_sn, stride_sg = scale_strides(w_scales)
    grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
    w8a8_kernel[grid](a, qdata, a_scales, static, w_scales, bias if bias is not None else w_scales, out,
                      m, n, k, a.stride(0), qdata.stride(0), out.stride(0), stride_sn, stride_sg,
                      A_MODE=mode, IS_FP8=act_format is QuantFormat.FP8_E4M3, QMAX=spec_of(act_format).qmax,
                      GROUP=group, HAS_BIAS=bias is not None, RAW=raw, OUT_DTYPE=triton_dtype(out.dtype),
                      INTERPRET=interpreting(), MAX_IMPRECISE_ACC=min(kernel_configs.FP8_PROMOTION_INTERVAL, config["BLOCK_K"]),
                      **config)
