"""Weight-only GEMM (W4A16 / FP4-A16, and W8A16): low-bit weights dequantized in the main loop.

    y[m, n] = sum_k x[m, k] * ((value(w[n, k]) - zero[n, k // group]) * w_scale[n, k // group]) (+ bias[n])

(the zero point only for the asymmetric uint4 format: unsigned nibbles and a uint8 zero point per group).

Operands: x (M, K) bf16 / fp16 (fp32 accepted: an IEEE fp32 dot); weight `qdata` (N, ceil(K/2))
uint8 nibbles (INT4 / FP4 e2m1) or (N, K) int8 / float8_e4m3fn; scales (1,), (N,) or (N, G) with
any group size (each element finds its own group, so the group may be smaller than BLOCK_K and
the last group may be partial). Each weight tile is decoded to fp32, multiplied by its scales and
rounded once to x's dtype for the tensor-core dot with fp32 accumulation.
For M <= 16 the launcher takes the split-K path: programs along a second grid axis each reduce one
slice of K into an fp32 workspace (SPLIT_K, M, N), summed in a fixed order afterwards (deterministic),
so a GEMV-sized problem still fills the GPU.
Under the interpreter bf16 dots are wrong, so tiles are rounded to x's dtype and the dot runs in fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import QuantFormat, spec_of
from . import kernel_configs
from ._triton_common import (check_linear_operands, fp4_value_doubled, int4_value, interpreting, round_to_bf16,
                             scale_strides, store_output, tile_ids, triton_dtype, unpack_nibble_tile)

INT8, FP8, INT4, FP4, UINT4 = 0, 1, 2, 3, 4
SMALL_M = 16
_WEIGHT_KIND = {QuantFormat.INT8: INT8, QuantFormat.FP8_E4M3: FP8, QuantFormat.INT4: INT4, QuantFormat.FP4_E2M1: FP4,
                QuantFormat.UINT4: UINT4}


@triton.jit
def _weight_tile(b_ptr, offs_k, offs_n, N, K, stride_bn, k0, WEIGHT_KIND: tl.constexpr, BLOCK_K: tl.constexpr):
    """The (BLOCK_K, BLOCK_N) tile of weight values (before scales) as fp32."""
    if WEIGHT_KIND >= 2:
        offs_byte = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        packed = tl.load(b_ptr + offs_n[None, :] * stride_bn + offs_byte[:, None],
                         mask=(offs_byte[:, None] < (K + 1) // 2) & (offs_n[None, :] < N), other=0)
        nibbles = unpack_nibble_tile(packed)
        if WEIGHT_KIND == 2:
            return int4_value(nibbles).to(tl.float32)
        if WEIGHT_KIND == 4:
            return nibbles.to(tl.float32)
        return fp4_value_doubled(nibbles).to(tl.float32) * 0.5
    mask = (offs_k[:, None] < K) & (offs_n[None, :] < N)
    return tl.load(b_ptr + offs_n[None, :] * stride_bn + offs_k[:, None], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _scaled_tile(value, w_scale_ptr, zero_ptr, offs_k, offs_n, N, K, stride_sn, stride_sg, GROUP: tl.constexpr,
                 HAS_ZERO: tl.constexpr):
    """(value - zero point) x scale of a (BLOCK_K, BLOCK_N) weight tile, fp32."""
    offsets = offs_n[None, :] * stride_sn + (offs_k[:, None] // GROUP) * stride_sg
    mask = (offs_k[:, None] < K) & (offs_n[None, :] < N)
    scale = tl.load(w_scale_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZERO:
        value = value - tl.load(zero_ptr + offsets, mask=mask, other=0).to(tl.float32)
    return value * scale


@triton.jit
def _to_dot_operand(value, DOT_DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """Round to x's dtype; under the interpreter keep the rounded value in fp32 (its bf16 dot is wrong)."""
    if DOT_DTYPE == tl.float32:
        return value
    if INTERPRET:
        if DOT_DTYPE == tl.bfloat16:
            return round_to_bf16(value)
        return value.to(DOT_DTYPE).to(tl.float32)
    return value.to(DOT_DTYPE)


@triton.jit
def w4a16_kernel(x_ptr, b_ptr, w_scale_ptr, zero_ptr, bias_ptr, c_ptr, M, N, K, K_PER_SPLIT,
                 stride_xm, stride_bn, stride_cm, stride_sn, stride_sg,
                 WEIGHT_KIND: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
                 SPLIT: tl.constexpr,
                 DOT_DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr, INTERPRET: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """x (M, K) float, b packed weight, c (M, N) output or, with SPLIT, fp32 partials (SPLIT_K, M, N)."""
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    split = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    k_start = split * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_end), other=0.0)
        value = _weight_tile(b_ptr, offs_k, offs_n, N, K, stride_bn, k0, WEIGHT_KIND, BLOCK_K)
        scaled = _scaled_tile(value, w_scale_ptr, zero_ptr, offs_k, offs_n, N, K, stride_sn, stride_sg, GROUP,
                              HAS_ZERO)
        w = _to_dot_operand(scaled, DOT_DTYPE, INTERPRET)
        if INTERPRET:
            x = x.to(tl.float32)
        if DOT_DTYPE == tl.float32:
            acc = tl.dot(x.to(tl.float32), w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
    c_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT:
        tl.store(c_ptr + split * M * N + offs_m[:, None] * N + offs_n[None, :], acc, mask=c_mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        store_output(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :], acc, c_mask, OUT_DTYPE, INTERPRET)


def weight_only_linear(x: torch.Tensor, qdata: torch.Tensor, w_scales: torch.Tensor, bias: torch.Tensor | None,
                       weight_format: QuantFormat, k: int, group_size: int | None = None,
                       out_dtype: torch.dtype | None = None, split_k: int | None = None,
                       out: torch.Tensor | None = None, zero_points: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ dequant(W).T + bias for 2-D x (M, k); `split_k` overrides the split of the M <= 16 path;
    `zero_points` (uint8, shaped as the scales) for uint4."""
    n = qdata.shape[0]
    check_linear_operands(x, n, k, bias)
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
    x = x.contiguous()
    m = x.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    if m == 0:
        return out
    small = m <= SMALL_M
    config = kernel_configs.config_for("w4a16_small_m" if small else "w4a16", x.device, m, n, k)
    splits = _split_count(config, m, n, k, x.device, split_k) if small else 1
    k_per_split = triton.cdiv(triton.cdiv(k, splits), config["BLOCK_K"]) * config["BLOCK_K"]
    splits = triton.cdiv(k, k_per_split)
    # the workspace starts as NaN so that a slice no program wrote cannot pass unnoticed
    target = torch.full((splits, m, n), float("nan"), device=x.device) if splits > 1 else out
    _launch(x, qdata, w_scales, zero_points, bias, target, weight_format, k, group_size, config, splits, k_per_split)
    if splits == 1:
        return out
    y = target.sum(dim=0)
    if bias is not None:
        y += bias.float()
    return out.copy_(y)


def zero_point_operand(zero_points: torch.Tensor | None, w_scales: torch.Tensor) -> torch.Tensor | None:
    """The zero points as the kernels read them: the scales' shape and strides."""
    if zero_points is None:
        return None
    if zero_points.shape != w_scales.shape:
        raise ValueError(f"zero points {tuple(zero_points.shape)} must have the scales' shape {tuple(w_scales.shape)}")
    return zero_points.contiguous() if w_scales.is_contiguous() else zero_points.as_strided(w_scales.shape,
                                                                                              w_scales.stride())


def _split_count(config: dict, m: int, n: int, k: int, device: torch.device, split_k: int | None) -> int:
    k_tiles = triton.cdiv(k, config["BLOCK_K"])
    if split_k is not None:
        return max(1, min(split_k, k_tiles))
    if device.type != "cuda":
        return min(k_tiles, 3)  # interpreter: exercise the split path on small shapes
    programs = torch.cuda.get_device_properties(device).multi_processor_count * 2
    return max(1, min(k_tiles, programs // max(triton.cdiv(n, config["BLOCK_N"]), 1)))


def _launch(x, qdata, w_scales, zero_points, bias, target, weight_format, k, group_size, config, splits,
            k_per_split) -> None:
    m, n = x.shape[0], qdata.shape[0]
    stride_sn, stride_sg = scale_strides(w_scales)
    zero_points = zero_point_operand(zero_points, w_scales)
    grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]), splits)
    bits = spec_of(weight_format).bits
    if bits == 4 and config["BLOCK_K"] % 2:
        raise ValueError("BLOCK_K must be even for packed 4-bit weights")
    w4a16_kernel[grid](x, qdata, w_scales, zero_points if zero_points is not None else w_scales,
                       bias if bias is not None else w_scales, target, m, n, k, k_per_split,
                       x.stride(0), qdata.stride(0), target.stride(-2), stride_sn, stride_sg,
                       WEIGHT_KIND=_WEIGHT_KIND[weight_format], GROUP=group_size or 1,
                       HAS_ZERO=zero_points is not None, HAS_BIAS=bias is not None,
                       SPLIT=splits > 1, DOT_DTYPE=triton_dtype(x.dtype), OUT_DTYPE=triton_dtype(target.dtype),
                       INTERPRET=interpreting(), **config)
