"""Triton helpers shared by the kernel families: exact rounding, 4-bit decoding, scale loads.

Every helper is written so that it gives the same bits under `TRITON_INTERPRET=1` as on a GPU:
the interpreter's fp32 -> int8 cast truncates and wraps, its fp32 -> fp8 cast drops the rounding
carry and its fp32 -> bf16 cast truncates, so values are rounded onto the target grid in fp32
first and the final cast only ever sees representable values.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import interpreting  # noqa: F401  (re-exported to the kernel families)

FP8_E4M3_MAX = 448.0


def triton_dtype(dtype: torch.dtype):
    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16,
            torch.int32: tl.int32}[dtype]


@triton.jit
def round_half_even(y):
    """Round fp32 to the nearest integer, ties to even (torch.round); exact for |y| < 2**22."""
    r = tl.floor(y + 0.5)
    tie = (r - y) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def round_to_e4m3_grid(y):
    """Round fp32 (already clamped to +-448) to the nearest float8_e4m3fn value, ties to even, in fp32."""
    bits = y.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) - 127
    exponent = tl.maximum(exponent, -6)  # below 2**-6 the grid is the subnormal step 2**-9
    ulp = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)
    return round_half_even(y / ulp) * ulp


@triton.jit
def round_to_bf16(y):
    """Round fp32 to the nearest bfloat16 value (ties to even), kept in fp32 (finite inputs)."""
    bits = y.to(tl.int32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def encode_activation(scaled, IS_FP8: tl.constexpr):
    """Values already divided by their scale -> 8-bit codes (int8, or fp8 e4m3 on the grid)."""
    if IS_FP8:
        clamped = tl.minimum(tl.maximum(scaled, -448.0), 448.0)
        return round_to_e4m3_grid(clamped).to(tl.float8e4nv)
    else:
        clamped = tl.minimum(tl.maximum(scaled, -127.0), 127.0)
        return round_half_even(clamped).to(tl.int8)


@triton.jit
def dot_8bit(a, b, acc, IS_FP8: tl.constexpr, MAX_IMPRECISE_ACC: tl.constexpr):
    """acc + a @ b for 8-bit operands; FP8 promotes the accumulator to fp32 every MAX_IMPRECISE_ACC
    products (Hopper's FP8 MMA accumulates in reduced precision otherwise)."""
    if IS_FP8:
        acc = tl.dot(a, b, acc, max_num_imprecise_acc=MAX_IMPRECISE_ACC)
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def group_scaled_dot(a, b, w_scale, IS_FP8: tl.constexpr, MAX_IMPRECISE_ACC: tl.constexpr):
    """One K group's a @ b in fp32, times that group's per-column weight scales (BLOCK_N,)."""
    if IS_FP8:
        part = tl.dot(a, b, max_num_imprecise_acc=MAX_IMPRECISE_ACC)
    else:
        part = tl.dot(a, b).to(tl.float32)
    return part * w_scale[None, :]


@triton.jit
def unpack_nibble_tile(packed):
    """(BLOCK_K // 2, BLOCK_N) uint8 bytes -> (BLOCK_K, BLOCK_N) int32 nibbles; even k in the low nibble."""
    as_int = packed.to(tl.int32)
    both = tl.join(as_int & 0xF, (as_int >> 4) & 0xF)  # (K/2, N, 2)
    both = tl.permute(both, (0, 2, 1))  # (K/2, 2, N): k = 2 * byte + nibble
    return tl.reshape(both, (2 * packed.shape[0], packed.shape[1]))


@triton.jit
def int4_value(nibble):
    """Two's complement nibble -> int32 in [-8, 7]."""
    return tl.where(nibble >= 8, nibble - 16, nibble)


@triton.jit
def fp4_value_doubled(nibble):
    """Sign-magnitude e2m1 nibble -> 2 * its value as int32 in [-12, 12] (exact: the grid is in halves)."""
    index = nibble & 7
    exponent = index >> 1
    mantissa = index & 1
    # e2m1: index 0/1 -> 0, 0.5 (subnormal); otherwise (1 + m/2) * 2**(e-1)
    doubled = tl.where(exponent == 0, mantissa, (2 + mantissa) << tl.maximum(exponent - 1, 0))
    return tl.where(nibble >= 8, -doubled, doubled)


@triton.jit
def store_output(ptrs, value, mask, OUT_DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """Cast the fp32 epilogue value to the output dtype (round-to-nearest-even) and store it."""
    if INTERPRET and OUT_DTYPE == tl.bfloat16:
        value = round_to_bf16(value)
    tl.store(ptrs, value.to(OUT_DTYPE), mask=mask)


@triton.jit
def tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped ordering of output tiles (GROUP_M tile rows at a time) so weight tiles stay in L2."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % per_group) % rows)
    pid_n = (pid % per_group) // rows
    return pid_m, pid_n


def scale_strides(scales: torch.Tensor) -> tuple[int, int]:
    """(stride along N, stride along the K groups) of stored weight scales: (1,), (N,) or (N, G)."""
    if scales.dim() == 2:
        return scales.stride(0), scales.stride(1)
    return (0, 0) if scales.numel() == 1 else (scales.stride(0), 0)


def check_linear_operands(x: torch.Tensor, n: int, k: int, bias: torch.Tensor | None) -> None:
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be (M, {k}), got {tuple(x.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be ({n},), got {tuple(bias.shape)}")
