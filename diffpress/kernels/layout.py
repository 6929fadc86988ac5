"""The packing contract between quantizers and kernels.

A quantized weight of logical shape (N, K) (Conv2d weights are flattened to
(out_channels, in_channels/groups * kh * kw)) is stored as:

- 8-bit formats (`Layout.ROWMAJOR_8BIT_V1`): `qdata` (N, K), int8 or float8_e4m3fn.
- 4-bit formats (`Layout.NIBBLES_K_V1`): `qdata` (N, ceil(K/2)) uint8; byte j of a row holds the code
  of k = 2j in its low nibble and of k = 2j+1 in its high nibble; an odd K is padded with a zero
  code. int4 codes are two's complement nibbles, fp4 codes sign-magnitude e2m1 (see formats).

`scales` (float32 for per-tensor/per-channel, bfloat16 for per-group) have shape (1,), (N,) or
(N, ceil(K/group_size)); the last group of a row may be partial. Asymmetric formats (uint4) add
`zero_points`, uint8 in [0, 15], shaped as the scales: value = (code - zero point) x scale; their nibbles
are unsigned. Layout names are versioned: a
layout that changes gets a new name, and old files keep loading through the old one.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

import torch

from ..formats import QuantFormat, Granularity, spec_of


class Layout(str, enum.Enum):
    ROWMAJOR_8BIT_V1 = "rowmajor_8bit_v1"
    NIBBLES_K_V1 = "nibbles_k_v1"


def layout_for(fmt: QuantFormat) -> Layout:
    return Layout.NIBBLES_K_V1 if spec_of(fmt).bits == 4 else Layout.ROWMAJOR_8BIT_V1


def scale_dtype_for(granularity: Granularity) -> torch.dtype:
    # Group scales are many (one per 16-128 weights), so they are stored in 16 bits; bfloat16
    # keeps float32's range, so tiny-magnitude groups never underflow as they can in float16.
    return torch.bfloat16 if granularity is Granularity.PER_GROUP else torch.float32


def scales_shape(granularity: Granularity, shape: tuple[int, int], group_size: int | None) -> tuple[int, ...]:
    n, k = shape
    if granularity is Granularity.PER_TENSOR:
        return (1,)
    if granularity is Granularity.PER_CHANNEL:
        return (n,)
    return (n, math.ceil(k / group_size))


@dataclass
class PackedWeight:
    """A quantized (N, K) weight in its kernel layout, plus what is needed to read it back."""

    qdata: torch.Tensor
    scales: torch.Tensor
    format: QuantFormat
    granularity: Granularity
    group_size: int | None
    shape: tuple[int, int]
    zero_points: torch.Tensor | None = None  # asymmetric formats only

    @property
    def layout(self) -> Layout:
        return layout_for(self.format)

    def to(self, device) -> "PackedWeight":
        zero_points = self.zero_points.to(device) if self.zero_points is not None else None
        return replace(self, qdata=self.qdata.to(device), scales=self.scales.to(device), zero_points=zero_points)

    @property
    def nbytes(self) -> int:
        extra = self.zero_points.numel() if self.zero_points is not None else 0
        return self.qdata.numel() * self.qdata.element_size() + self.scales.numel() * self.scales.element_size() + extra


ZERO_POINT_DTYPE = torch.uint8


def qdata_shape(fmt: QuantFormat, shape: tuple[int, int]) -> tuple[int, int]:
    n, k = shape
    return (n, math.ceil(k / 2)) if spec_of(fmt).bits == 4 else (n, k)


def qdata_dtype(fmt: QuantFormat) -> torch.dtype:
    return torch.uint8 if spec_of(fmt).bits == 4 else spec_of(fmt).storage_dtype


def pack(codes: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """Unpacked (N, K) codes from `formats.encode` -> qdata in the layout of `fmt`."""
    if spec_of(fmt).bits == 8:
        return codes.contiguous()
    return pack_nibbles(codes)


def unpack(qdata: torch.Tensor, fmt: QuantFormat, k: int) -> torch.Tensor:
    """Exact inverse of `pack`: qdata -> unpacked (N, K) codes."""
    if spec_of(fmt).bits == 8:
        return qdata
    return unpack_nibbles(qdata, k, signed=fmt is QuantFormat.INT4)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 codes in [-8, 15] -> (N, ceil(K/2)) uint8, even k in the low nibble."""
    n, k = codes.shape
    nibbles = codes.to(torch.int32) & 0xF
    if k % 2:
        nibbles = torch.nn.functional.pad(nibbles, (0, 1))
    pairs = nibbles.view(n, -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)


def unpack_nibbles(qdata: torch.Tensor, k: int, signed: bool) -> torch.Tensor:
    """(N, ceil(K/2)) uint8 -> (N, K) int8 codes; `signed` sign-extends two's complement nibbles."""
    as_int = qdata.to(torch.int32)
    nibbles = torch.stack([as_int & 0xF, as_int >> 4], dim=-1).reshape(qdata.shape[0], -1)[:, :k]
    if signed:
        nibbles = torch.where(nibbles >= 8, nibbles - 16, nibbles)
    return nibbles.to(torch.int8)
