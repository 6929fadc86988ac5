"""What to do to which layer: QuantSpec (one layer's plan) and the named presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .compress.quantize import ScaleMethod
from .formats import Granularity, QuantFormat, check_granularity, spec_of
from .errors import InputError


@dataclass(frozen=True)
class QuantSpec:
    """One layer's quantization plan.

    weight_format/granularity/group_size: how the weight is stored. act_format: None keeps
    activations in the model dtype (weight-only); otherwise activations are quantized dynamically
    per token to this 8-bit format before the matmul. scale_method: absmax or MSE clipping search.
    """

    weight_format: QuantFormat
    granularity: Granularity
    group_size: int | None = None
    act_format: QuantFormat | None = None
    scale_method: ScaleMethod = ScaleMethod.ABSMAX

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_format", QuantFormat(self.weight_format))
        object.__setattr__(self, "granularity", Granularity(self.granularity))
        object.__setattr__(self, "scale_method", ScaleMethod(self.scale_method))
        if self.act_format is not None:
            object.__setattr__(self, "act_format", QuantFormat(self.act_format))
            if spec_of(self.act_format).bits != 8:
                raise ValueError(f"act_format must be an 8-bit format (int8, fp8_e4m3), got {self.act_format.value}")
        if self.granularity is not Granularity.PER_GROUP:
            object.__setattr__(self, "group_size", None)
        check_granularity(self.weight_format, self.granularity, self.group_size)

    def to_dict(self) -> dict:
        return {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "QuantSpec":
        return cls(**data)


PRESETS: dict[str, tuple[QuantSpec, str]] = {
    "w8a16-int8": (QuantSpec(QuantFormat.INT8, Granularity.PER_CHANNEL),
                   "INT8 weights, one scale per output channel; activations stay in the model dtype"),
    "w8a16-fp8": (QuantSpec(QuantFormat.FP8_E4M3, Granularity.PER_CHANNEL),
                  "FP8 e4m3 weights, one scale per output channel; activations stay in the model dtype"),
    "w4a16-int4": (QuantSpec(QuantFormat.INT4, Granularity.PER_GROUP, 128, scale_method=ScaleMethod.MSE),
                   "INT4 weights, groups of 128 along K, MSE-searched clipping; activations unquantized"),
    "w4a16-fp4": (QuantSpec(QuantFormat.FP4_E2M1, Granularity.PER_GROUP, 16, scale_method=ScaleMethod.MSE),
                  "FP4 e2m1 weights with block-16 scales, MSE-searched clipping; activations unquantized"),
    "w8a8-int8": (QuantSpec(QuantFormat.INT8, Granularity.PER_CHANNEL, act_format=QuantFormat.INT8),
                  "INT8 weights per channel, INT8 activations per token (dynamic)"),
    "w8a8-fp8": (QuantSpec(QuantFormat.FP8_E4M3, Granularity.PER_CHANNEL, act_format=QuantFormat.FP8_E4M3),
                 "FP8 e4m3 weights per channel, FP8 e4m3 activations per token (dynamic)"),
}


def preset(name: str) -> QuantSpec:
    """The QuantSpec of a named preset; InputError lists the presets."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name][0]
