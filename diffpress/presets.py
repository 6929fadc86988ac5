"""Named plans: the presets, their round-to-nearest baselines, and the candidate formats of mixed precision.

A preset is a QuantSpec applied to every layer (the default skip list kept). Each preset NAME has
a baseline NAME-rtn: the same formats with absmax scales and no method, so what the methods buy
can be measured. A candidate (what `sensitivity` measures and `mixed` chooses between) is a preset
or `bf16` (the layer kept in high precision); which of its two plans is used is a
`SensitivityMethods` value.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from .errors import InputError
from .formats import Granularity, QuantFormat, spec_of
from .recipe import ActMode, QuantSpec, Recipe, Rounding, ScaleMethod


@dataclass(frozen=True)
class Preset:
    """A named plan. `baseline_of`: for a NAME-rtn preset, the preset it is the baseline of."""

    name: str
    spec: QuantSpec
    description: str
    baseline_of: str | None = None


def _round_to_nearest(spec: QuantSpec) -> QuantSpec:
    return replace(spec, scale_method=ScaleMethod.ABSMAX, smoothing=None, low_rank=0, rounding=Rounding.NEAREST,
                   act_mode=ActMode.DYNAMIC, split_shortcuts=False, bos_aware=False)


_NAMED: tuple[Preset, ...] = (
    Preset("w8a16-int8", QuantSpec(QuantFormat.INT8, Granularity.PER_CHANNEL),
           "INT8 weights, one scale per output channel; activations stay in the model dtype"),
    Preset("w8a16-fp8", QuantSpec(QuantFormat.FP8_E4M3, Granularity.PER_CHANNEL),
           "FP8 e4m3 weights, one scale per output channel; activations stay in the model dtype"),
    Preset("w4a16-int4", QuantSpec(QuantFormat.INT4, Granularity.PER_GROUP, 128, scale_method=ScaleMethod.MSE),
           "INT4 weights, groups of 128 along K, MSE-searched clipping; activations unquantized"),
    Preset("w4a16-uint4", QuantSpec(QuantFormat.UINT4, Granularity.PER_GROUP, 128, scale_method=ScaleMethod.MSE),
           "asymmetric INT4 weights (a zero point per group of 128: the codes span each group's [min, max]), "
           "MSE-searched range; activations unquantized"),
    # FP4 with nearest rounding clips Linear layers only: MSE clipping lowers every layer's weight and output
    # error, but on builtin:digits it costs 1.4-1.9 dB end to end (paired, two seeds), all of it in the
    # full-resolution convs that write into the residual stream next to the output, and is neutral on its Linear
    # layers; on builtin:digits-flux (all Linear) it gains 1.9 dB (bench/results/clipping-digits.json).
    Preset("w4a16-fp4", QuantSpec(QuantFormat.FP4_E2M1, Granularity.PER_GROUP, 16,
                                  scale_method=ScaleMethod.MSE_LINEAR),
           "FP4 e2m1 weights with block-16 scales, MSE-searched clipping on Linear layers (absmax on convolutions); "
           "activations unquantized"),
    Preset("w8a8-int8", QuantSpec(QuantFormat.INT8, Granularity.PER_CHANNEL, act_format=QuantFormat.INT8),
           "INT8 weights per channel, INT8 activations per token (dynamic)"),
    Preset("w8a8-fp8", QuantSpec(QuantFormat.FP8_E4M3, Granularity.PER_CHANNEL, act_format=QuantFormat.FP8_E4M3),
           "FP8 e4m3 weights per channel, FP8 e4m3 activations per token (dynamic)"),
    # The 8-bit candidate of mixed precision: with MSE clipping and learned rounding, uniform W8A8
    # measured 39.50 dB against 39.11 for w8a8-int8 (bench/results/mixed-precision-digits.json).
    Preset("w8a8-int8-learned", QuantSpec(QuantFormat.INT8, Granularity.PER_CHANNEL, act_format=QuantFormat.INT8,
                                          scale_method=ScaleMethod.MSE, rounding=Rounding.LEARNED),
           "INT8 weights per channel (MSE clipping, learned rounding), INT8 activations per token (dynamic); "
           "calibrates"),
    # The W4A8 presets: clipping + searched smoothing (bench/results/ptq-ablation-digits.json) + GPTQ, which
    # beats learned rounding by 2.6-2.7 dB on both built-in models at a sixth of the time
    # (bench/results/gptq-*.json).
    Preset("w4a8-int", QuantSpec(QuantFormat.INT4, Granularity.PER_GROUP, 128, act_format=QuantFormat.INT8,
                                 scale_method=ScaleMethod.MSE, smoothing="auto", rounding=Rounding.GPTQ),
           "INT4 weights (g128, MSE clipping, GPTQ), INT8 activations per token, searched smoothing; "
           "calibrates"),
    # W4A4: 4-bit activations (reference backend), SVDQuant's recipe: smoothing, a high-precision low-rank
    # branch and GPTQ on top of MSE clipping (bench/results/w4a4-*.json has the ablation).
    Preset("w4a4-int", QuantSpec(QuantFormat.INT4, Granularity.PER_GROUP, 64, act_format=QuantFormat.INT4,
                                 act_group_size=64, scale_method=ScaleMethod.MSE, smoothing="auto", low_rank=8,
                                 rounding=Rounding.GPTQ),
           "INT4 weights (g64, MSE clipping, GPTQ) and INT4 activations per token in groups of 64, searched "
           "smoothing, a rank-8 high-precision branch; calibrates; reference backend"),
    Preset("w4a4-fp4", QuantSpec(QuantFormat.FP4_E2M1, Granularity.PER_GROUP, 16, act_format=QuantFormat.FP4_E2M1,
                                 act_group_size=16, scale_method=ScaleMethod.MSE, smoothing="auto", low_rank=8,
                                 rounding=Rounding.GPTQ),
           "FP4 e2m1 weights and activations with block-16 scales (NVFP4-style), MSE clipping, GPTQ, searched "
           "smoothing, a rank-8 high-precision branch; calibrates; reference backend"),
    Preset("w4a8-fp4", QuantSpec(QuantFormat.FP4_E2M1, Granularity.PER_GROUP, 16, act_format=QuantFormat.FP8_E4M3,
                                 scale_method=ScaleMethod.MSE, smoothing="auto", rounding=Rounding.GPTQ),
           "FP4 e2m1 weights (block 16, MSE clipping, GPTQ), FP8 activations per token, searched "
           "smoothing; calibrates"),
)
RTN_SUFFIX = "-rtn"

PRESETS: dict[str, Preset] = {preset.name: preset for preset in _NAMED}
PRESETS.update({p.name + RTN_SUFFIX: Preset(p.name + RTN_SUFFIX, _round_to_nearest(p.spec),
                                            "round-to-nearest baseline of " + p.name, baseline_of=p.name)
                for p in _NAMED})


def preset(name: str) -> QuantSpec:
    """The QuantSpec of a named preset; InputError lists the presets."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}", "preset")
    return PRESETS[name].spec


def preset_recipe(name: str) -> Recipe:
    """A preset as a recipe: its plan for every layer, the default skip list kept."""
    return Recipe(preset(name))


# ------------------------------------------------------------------------------ candidates


class SensitivityMethods(str, enum.Enum):
    """Which plan of each candidate sensitivity measures (and mixed precision then uses)."""

    RTN = "rtn"  # the round-to-nearest baseline: no data, seconds per layer
    FULL = "full"  # the full preset (learned rounding, clipping, smoothing): the module that is saved


HIGH_PRECISION = "bf16"


@dataclass(frozen=True)
class Candidate:
    """One format a layer can be given: a preset, or `bf16` (kept in high precision: no plans)."""

    name: str
    weight_bits: int
    act_bits: int
    full: QuantSpec | None  # the preset's plan; None: high precision
    round_to_nearest: QuantSpec | None  # its NAME-rtn baseline

    @property
    def high_precision(self) -> bool:
        return self.full is None

    def spec_for(self, methods: SensitivityMethods) -> QuantSpec | None:
        return self.full if SensitivityMethods(methods) is SensitivityMethods.FULL else self.round_to_nearest

    def packed_bytes(self, shape: tuple[int, int]) -> int:
        """Bytes of the stored weight of an (N, K) layer: codes plus scales in the kernel layout, plus the
        high-precision low-rank branch (rank x (N + K), 2 bytes each) of presets that carry one (bf16: 2 per
        weight). The average-bits budget counts the codes' bits only; this counts what is stored."""
        from .kernels.layout import qdata_dtype, qdata_shape, scale_dtype_for, scales_shape

        if self.full is None:
            return 2 * shape[0] * shape[1]
        spec = self.full
        codes = math.prod(qdata_shape(spec.weight_format, shape)) * qdata_dtype(spec.weight_format).itemsize
        scales = math.prod(scales_shape(spec.granularity, shape, spec.group_size))
        zero_points = scales if spec_of(spec.weight_format).zero_point else 0  # one uint8 per scale
        low_rank = 2 * spec.low_rank * (shape[0] + shape[1])
        return codes + scales * scale_dtype_for(spec.granularity).itemsize + zero_points + low_rank


DEFAULT_SENSITIVITY_CANDIDATES = (HIGH_PRECISION, "w8a8-int8", "w8a8-fp8", "w4a8-int", "w4a16-int4", "w4a8-fp4")
DEFAULT_MIXED_CANDIDATES = ("w4a8-int", "w8a8-int8-learned")  # measured best pair on builtin:digits (bench/results)


def candidate(name: str) -> Candidate:
    """A candidate by name: `bf16` or any preset that is not a NAME-rtn baseline."""
    if name == HIGH_PRECISION:
        return Candidate(name, 16, 16, None, None)
    found = PRESETS.get(name)
    if found is None:
        raise InputError(f"unknown candidate format {name!r}; allowed: {HIGH_PRECISION} or a preset name "
                         f"({', '.join(p.name for p in _NAMED)})", "candidates")
    if found.baseline_of is not None:
        raise InputError(f"candidate {name!r}: name the preset ({found.baseline_of}); its round-to-nearest "
                         "baseline is what methods=rtn measures anyway", "candidates")
    spec = found.spec
    act_bits = spec_of(spec.act_format).bits if spec.act_format is not None else 16
    return Candidate(name, spec_of(spec.weight_format).bits, act_bits, spec, PRESETS[name + RTN_SUFFIX].spec)
