"""Quantization formats as data: the FormatSpec table and the element codecs.

A format fixes the grid of representable values (after dividing by a scale) and how codes are
stored. Granularity says which elements share a scale. Codes are kept unpacked here (one code per
int8/float8 element); packing two 4-bit codes per byte is the kernel layout's job
(`diffpress.kernels.layout`).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class QuantFormat(str, enum.Enum):
    INT8 = "int8"
    INT4 = "int4"
    UINT4 = "uint4"  # asymmetric INT4: codes 0..15 and an integer zero point per scale unit
    FP8_E4M3 = "fp8_e4m3"
    FP4_E2M1 = "fp4_e2m1"


class Granularity(str, enum.Enum):
    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"  # one scale per output channel (row of the (N, K) weight)
    PER_GROUP = "per_group"  # one scale per `group_size` consecutive elements along K
    PER_TOKEN = "per_token"  # activations: one scale per row of the (M, K) input, computed at run time


# e2m1 magnitudes: exponent bias 1, one mantissa bit, no inf/nan.
_FP4_E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


@dataclass(frozen=True)
class FormatSpec:
    """What a format is: `qmax` is the largest code magnitude, scales map absmax onto it."""

    format: QuantFormat
    kind: str  # "int" or "float"
    bits: int
    qmax: float
    storage_dtype: torch.dtype  # dtype of unpacked codes; 4-bit codes are packed two per uint8
    granularities: tuple[Granularity, ...]
    group_sizes: tuple[int, ...]
    zero_point: bool = False  # asymmetric: value = (code - zero point) x scale, codes 0..qmax

    @property
    def codes_per_byte(self) -> int:
        return 8 // self.bits


_WEIGHT_GRANULARITIES = (Granularity.PER_TENSOR, Granularity.PER_CHANNEL, Granularity.PER_GROUP)

FORMAT_SPECS: dict[QuantFormat, FormatSpec] = {
    QuantFormat.INT8: FormatSpec(QuantFormat.INT8, "int", 8, 127.0, torch.int8,
                                 _WEIGHT_GRANULARITIES + (Granularity.PER_TOKEN,), (32, 64, 128)),
    QuantFormat.INT4: FormatSpec(QuantFormat.INT4, "int", 4, 7.0, torch.int8,
                                 _WEIGHT_GRANULARITIES, (32, 64, 128)),
    QuantFormat.UINT4: FormatSpec(QuantFormat.UINT4, "int", 4, 15.0, torch.int8,
                                  (Granularity.PER_CHANNEL, Granularity.PER_GROUP), (32, 64, 128), zero_point=True),
    QuantFormat.FP8_E4M3: FormatSpec(QuantFormat.FP8_E4M3, "float", 8, 448.0, torch.float8_e4m3fn,
                                     _WEIGHT_GRANULARITIES + (Granularity.PER_TOKEN,), (32, 64, 128)),
    QuantFormat.FP4_E2M1: FormatSpec(QuantFormat.FP4_E2M1, "float", 4, 6.0, torch.int8,
                                     (Granularity.PER_GROUP,), (16, 32)),
}


def spec_of(fmt: QuantFormat | str) -> FormatSpec:
    """The FormatSpec of `fmt`; raises ValueError naming the allowed formats."""
    try:
        return FORMAT_SPECS[QuantFormat(fmt)]
    except ValueError:
        allowed = ", ".join(f.value for f in QuantFormat)
        raise ValueError(f"unknown quantization format {fmt!r}; allowed: {allowed}") from None


def check_granularity(fmt: QuantFormat, granularity: Granularity, group_size: int | None) -> None:
    """Raise ValueError unless `fmt` supports this granularity (and group size for per_group)."""
    spec = spec_of(fmt)
    if granularity not in spec.granularities:
        allowed = ", ".join(g.value for g in spec.granularities)
        raise ValueError(f"format {fmt.value} does not support granularity {granularity.value}; allowed: {allowed}")
    if granularity is Granularity.PER_GROUP and group_size not in spec.group_sizes:
        raise ValueError(f"format {fmt.value} does not support group size {group_size}; allowed: {spec.group_sizes}")


def encode(scaled: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """Round `scaled` (values already divided by their scale) to the format's nearest codes.

    int formats: signed integers in [-qmax, qmax] as int8 (uint4: [0, 15], the zero point already
    added to `scaled`). fp8: float8_e4m3fn values (torch's
    round-to-nearest-even cast, after clamping to +-448 so nothing saturates to NaN). fp4: the
    4-bit e2m1 code (sign in bit 3, magnitude index in bits 0-2) as int8 in [0, 15].
    """
    spec = spec_of(fmt)
    clamped = scaled.float().clamp(0 if spec.zero_point else -spec.qmax, spec.qmax)
    if fmt is QuantFormat.FP8_E4M3:
        return clamped.to(torch.float8_e4m3fn)
    if fmt is QuantFormat.FP4_E2M1:
        return _encode_fp4(clamped)
    return torch.round(clamped).to(torch.int8)


def decode(codes: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """Map codes from `encode` back to their float32 grid values (before the scale)."""
    fmt = QuantFormat(fmt)
    if fmt is QuantFormat.FP4_E2M1:
        return _decode_fp4(codes)
    return codes.float()


def grid_values(fmt: QuantFormat) -> torch.Tensor:
    """All representable values of the format (before scaling), sorted, float32."""
    fmt = QuantFormat(fmt)
    if fmt is QuantFormat.FP4_E2M1:
        mags = torch.tensor(_FP4_E2M1_MAGNITUDES)
        return torch.cat([-mags.flip(0)[:-1], mags])
    if fmt is QuantFormat.FP8_E4M3:
        all_bytes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
        return all_bytes[torch.isfinite(all_bytes)].unique()
    qmax = int(spec_of(fmt).qmax)
    return torch.arange(0 if spec_of(fmt).zero_point else -qmax, qmax + 1, dtype=torch.float32)


def _encode_fp4(clamped: torch.Tensor) -> torch.Tensor:
    magnitudes = torch.tensor(_FP4_E2M1_MAGNITUDES, device=clamped.device)
    midpoints = (magnitudes[1:] + magnitudes[:-1]) / 2
    index = torch.bucketize(clamped.abs(), midpoints)  # ties go to the smaller magnitude
    sign = (clamped < 0) & (index > 0)
    return (index | (sign.to(index.dtype) << 3)).to(torch.int8)


def _decode_fp4(codes: torch.Tensor) -> torch.Tensor:
    magnitudes = torch.tensor(_FP4_E2M1_MAGNITUDES, device=codes.device)
    as_int = codes.to(torch.int64) & 0xF
    value = magnitudes[as_int & 0x7]
    return torch.where(as_int >= 8, -value, value)
