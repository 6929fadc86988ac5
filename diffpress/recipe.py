"""What to do to which layer: QuantSpec (one layer's quantization plan) and Recipe (a default plan +
ordered rules, first match wins). A recipe is the quantization part of a Plan (`diffpress.plan`),
which is what a recipe file holds; the named presets are in `diffpress.presets`.

The quantization part of a recipe file:

    default:                       # plan for every Linear/Conv2d no rule matches
      weight_format: int4
      granularity: per_group
      group_size: 128
      act_format: int8
      scale_method: mse
    keep_default_skips: true       # embedders, input embedding, final projection stay high precision
    rules:                         # first match wins; a pattern is an exact name, a glob, or re:REGEX
      - match: "mid_block.*"
        plan: {weight_format: int8, granularity: per_channel}
      - match: "re:.*attn2\\.to_(k|v)$"
        plan: skip                 # keep in high precision

A rule's plan is `skip` or a mapping of QuantSpec fields that override the default.
"""
from __future__ import annotations

import enum
import fnmatch
import re
from dataclasses import asdict, dataclass

from .errors import InputError
from .formats import Granularity, QuantFormat, check_granularity, spec_of


class ScaleMethod(str, enum.Enum):
    ABSMAX = "absmax"  # each unit's largest magnitude onto the grid's largest code
    MSE = "mse"  # clipping ratio per unit searched for the smallest squared error
    MSE_LINEAR = "mse_linear"  # MSE on Linear layers, absmax on convolutions (bench/results: FP4 clipping)


def layer_scale_method(spec: "QuantSpec", module) -> str:
    """The scale method a layer's weight is quantized with: `mse_linear` is MSE for an nn.Linear (or its
    quantized replacement) and absmax for a convolution."""
    if spec.scale_method is not ScaleMethod.MSE_LINEAR:
        return spec.scale_method.value
    is_conv = "conv" in type(module).__name__.lower()
    return ScaleMethod.ABSMAX.value if is_conv else ScaleMethod.MSE.value


class ActMode(str, enum.Enum):
    DYNAMIC = "dynamic"
    STATIC = "static"


ACT_GROUP_SIZES = {QuantFormat.INT4: (32, 64, 128), QuantFormat.FP4_E2M1: (16, 32)}  # 4-bit activations


class Rounding(str, enum.Enum):
    NEAREST = "nearest"
    LEARNED = "learned"  # layer-wise (AdaRound)
    BLOCK = "block"  # block-wise (BRECQ); layers outside every block fall back to layer-wise
    GPTQ = "gptq"  # column by column with inverse-Hessian error compensation (GPTQ)


class Rotation(str, enum.Enum):
    NONE = "none"
    HADAMARD = "hadamard"  # randomized block Hadamard on the input channels (compression.rotation)
    AUTO = "auto"  # per layer: rotated where that lowers the layer's output error on calibration inputs


def _parse_enum(enum_type, value, field_name: str):
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)
        raise InputError(f"{field_name} {value!r} is not one of: {allowed}", field_name) from None


@dataclass(frozen=True)
class QuantSpec:
    """One layer's quantization plan.

    weight_format/granularity/group_size: how the weight is stored. act_format: None keeps
    activations in the model dtype (weight-only), else the activation format: 8-bit (int8, fp8_e4m3,
    one scale per token) or 4-bit (int4, fp4_e2m1, one scale per `act_group_size` channels of a
    token; reference backend); act_mode:
    `dynamic` (per token, computed at run time) or `static` (one scale per timestep bucket, from
    calibration). scale_method: absmax or MSE clipping search. The calibration-driven methods:
    smoothing (None off, "auto" searches the migration strength per layer, or a fixed alpha),
    low_rank (rank of the high-precision branch, 0 off), rounding ("nearest", "learned" layer-wise,
    "block" reconstruction, or "gptq" with `gptq_damping` (fraction of the mean Hessian diagonal added
    to it) and `gptq_act_order` (columns in order of decreasing input energy)),
    split_shortcuts (separate activation scales for the two halves of a concatenated input,
    Q-Diffusion), bos_aware (layers reading the text encoder's output keep the prompt-independent
    first token's output in high precision, MixDQ). rotation: "hadamard" rotates the input channels
    (randomized block Hadamard, folded into the weight, applied to the activation at run time after
    smoothing; `compression.rotation`), "auto" rotates each layer where that lowers its output error on
    captured calibration inputs (calibrates), "none" by default.
    """

    weight_format: QuantFormat
    granularity: Granularity
    group_size: int | None = None
    act_format: QuantFormat | None = None
    scale_method: ScaleMethod = ScaleMethod.ABSMAX
    act_mode: ActMode = ActMode.DYNAMIC
    smoothing: float | str | None = None
    low_rank: int = 0
    rounding: Rounding = Rounding.NEAREST
    split_shortcuts: bool = False
    bos_aware: bool = False
    gptq_damping: float = 0.01
    gptq_act_order: bool = True
    act_group_size: int | None = None
    rotation: Rotation = Rotation.NONE

    def __post_init__(self) -> None:
        for name, enum_type in (("weight_format", QuantFormat), ("granularity", Granularity),
                                ("scale_method", ScaleMethod), ("act_format", QuantFormat),
                                ("act_mode", ActMode), ("rounding", Rounding),
                                ("rotation", Rotation)):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _parse_enum(enum_type, getattr(self, name), name))
        if self.act_format is not None:
            self._check_act_format()
        elif self.act_group_size is not None:
            raise InputError("act_group_size groups activation scales: it needs act_format", "act_group_size")
        if self.granularity is not Granularity.PER_GROUP:
            object.__setattr__(self, "group_size", None)
        try:
            check_granularity(self.weight_format, self.granularity, self.group_size)
        except ValueError as error:
            raise InputError(str(error), "granularity") from None
        self._check_methods()

    def _check_act_format(self) -> None:
        """8-bit activations: one scale per token; 4-bit (int4, fp4_e2m1): one per group of act_group_size
        channels of a token (int4: 32/64/128, fp4: 16/32), dynamic only."""
        fmt, group = self.act_format, self.act_group_size
        allowed = ACT_GROUP_SIZES.get(fmt)
        if fmt not in (QuantFormat.INT8, QuantFormat.FP8_E4M3) and allowed is None:
            raise InputError(f"act_format must be int8, fp8_e4m3, int4 or fp4_e2m1, got {fmt.value}", "act_format")
        if allowed is None and group is not None:
            raise InputError(f"act_group_size is for 4-bit activations; {fmt.value} activations have one scale per "
                             "token", "act_group_size")
        if allowed is not None and group not in allowed:
            raise InputError(f"{fmt.value} activations need act_group_size in {list(allowed)}, got {group!r}",
                             "act_group_size")
        if allowed is not None and self.act_mode is ActMode.STATIC:
            raise InputError(f"act_mode static needs 8-bit activations; {fmt.value} activations are dynamic per "
                             "group", "act_mode")

    def _check_methods(self) -> None:
        if self.smoothing is not None and self.smoothing != "auto" and not (
                isinstance(self.smoothing, (int, float)) and 0 <= self.smoothing <= 1):
            raise InputError(f"smoothing must be null, 'auto' or an alpha in [0, 1], got {self.smoothing!r}", "smoothing")
        if self.smoothing is not None and self.act_format is None:
            raise InputError("smoothing moves activation outliers into weights: it needs act_format", "smoothing")
        if not isinstance(self.low_rank, int) or self.low_rank < 0:
            raise InputError(f"low_rank must be a rank >= 0, got {self.low_rank!r}", "low_rank")
        if self.act_mode is ActMode.STATIC and self.act_format is None:
            raise InputError("act_mode static needs act_format", "act_mode")
        for name in ("split_shortcuts", "bos_aware"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}", name)
        if self.split_shortcuts and self.act_format is None:
            raise InputError("split_shortcuts splits activation quantization: it needs act_format", "split_shortcuts")
        damping = self.gptq_damping
        if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not 0 < damping <= 1:
            raise InputError(f"gptq_damping must be a number in (0, 1], got {damping!r}", "gptq_damping")
        if not isinstance(self.gptq_act_order, bool):
            raise InputError(f"gptq_act_order must be true or false, got {self.gptq_act_order!r}", "gptq_act_order")
        if self.rotation is not Rotation.NONE and self.act_mode is ActMode.STATIC:
            raise InputError("rotation needs dynamic activation scales (calibrated per-channel maxima do not survive "
                             "a rotation); use act_mode dynamic", "rotation")

    @property
    def needs_calibration(self) -> bool:
        return (self.smoothing is not None or self.rounding is not Rounding.NEAREST
                or self.act_mode is ActMode.STATIC or self.split_shortcuts or self.bos_aware
                or self.rotation is Rotation.AUTO)

    def to_dict(self) -> dict:
        """The fields as JSON; the GPTQ options only when the rounding is GPTQ, act_group_size and rotation
        only when set (so plans written before they existed read back the same)."""
        return {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(self).items()
                if (self.rounding is Rounding.GPTQ or not k.startswith("gptq_"))
                and (k != "act_group_size" or v is not None) and (k != "rotation" or v is not Rotation.NONE)}

    def describe(self) -> str:
        group = f"/g{self.group_size}" if self.group_size else ""
        act_group = f"/g{self.act_group_size}" if self.act_group_size else ""
        act = f"{self.act_format.value}{act_group}/{self.act_mode.value}" if self.act_format else "a16"
        methods = [self.scale_method.value]
        methods += [f"smooth={self.smoothing}"] if self.smoothing is not None else []
        methods += [{Rotation.HADAMARD: "rotation", Rotation.AUTO: "rotation=auto"}[self.rotation]] \
            if self.rotation is not Rotation.NONE else []
        methods += [f"lowrank={self.low_rank}"] if self.low_rank else []
        methods += ["learned-rounding"] if self.rounding is Rounding.LEARNED else []
        methods += ["block-reconstruction"] if self.rounding is Rounding.BLOCK else []
        methods += [f"gptq(damp={self.gptq_damping:g}{',act-order' if self.gptq_act_order else ''})"] \
            if self.rounding is Rounding.GPTQ else []
        methods += ["split-shortcuts"] if self.split_shortcuts else []
        methods += ["bos-aware"] if self.bos_aware else []
        return f"w:{self.weight_format.value}{group} {self.granularity.value} act:{act} {'+'.join(methods)}"

    @classmethod
    def from_dict(cls, data: dict) -> "QuantSpec":
        return cls(**data)



def _named(value, allowed: set[str], where: str) -> None:
    unknown = sorted(set(value) - allowed, key=str)
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


SPEC_KEYS = {"weight_format", "granularity", "group_size", "act_format", "scale_method", "act_mode", "smoothing",
             "low_rank", "rounding", "split_shortcuts", "bos_aware", "gptq_damping", "gptq_act_order",
             "act_group_size", "rotation"}
SKIP = "skip"


def spec_from_mapping(mapping: dict, base: QuantSpec | None, where: str) -> QuantSpec:
    """A QuantSpec from a recipe mapping (over `base` when given); errors name the key and value."""
    if not isinstance(mapping, dict):
        raise InputError(f"{where}: expected a mapping of {', '.join(sorted(SPEC_KEYS))} or 'skip', got {mapping!r}")
    _named(mapping, SPEC_KEYS, where)
    fields_ = {**(base.to_dict() if base else {}), **mapping}
    if "weight_format" not in fields_ or "granularity" not in fields_:
        raise InputError(f"{where}: weight_format and granularity are required")
    try:
        return QuantSpec.from_dict(fields_)
    except InputError as error:
        raise InputError(f"{where}: {error}", error.option) from None


@dataclass(frozen=True)
class Rule:
    """`match`: exact fqn, glob (contains * ? [), or 're:' + regex (full match); `plan`: QuantSpec or None (skip)."""

    match: str
    plan: QuantSpec | None

    def matches(self, fqn: str) -> bool:
        if self.match.startswith("re:"):
            return re.fullmatch(self.match[3:], fqn) is not None
        if any(c in self.match for c in "*?["):
            return fnmatch.fnmatchcase(fqn, self.match)
        return fqn == self.match


@dataclass(frozen=True)
class Recipe:
    """A default plan plus ordered rules; `plan_for(fqn)` is the first matching rule's plan."""

    default: QuantSpec | None
    rules: tuple[Rule, ...] = ()
    keep_default_skips: bool = True

    def rule_for(self, fqn: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.matches(fqn)), None)

    def plan_for(self, fqn: str) -> QuantSpec | None:
        rule = self.rule_for(fqn)
        return rule.plan if rule else self.default

    @property
    def needs_calibration(self) -> bool:
        """Whether any plan uses a method that needs calibration data."""
        return any(plan is not None and plan.needs_calibration for plan in (self.default, *(r.plan for r in self.rules)))

    @classmethod
    def from_dict(cls, data: dict, where: str = "recipe") -> "Recipe":
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a mapping with 'default' and 'rules', got {type(data).__name__}")
        _named(data, set(RECIPE_KEYS), where)
        default_value = data.get("default")
        default = None if default_value in (None, SKIP) else spec_from_mapping(default_value, None, f"{where}: default")
        rules = data.get("rules") or []
        if not isinstance(rules, list):
            raise InputError(f"{where}: rules must be a list of {{match, plan}} mappings, got {type(rules).__name__}")
        keep = data.get("keep_default_skips", True)
        if not isinstance(keep, bool):
            raise InputError(f"{where}: keep_default_skips must be true or false, got {keep!r}")
        return cls(default, tuple(_rule(entry, default, f"{where}: rules[{i}]") for i, entry in enumerate(rules)), keep)

    def to_dict(self) -> dict:
        default = self.default.to_dict() if self.default else SKIP
        rules = [{"match": r.match, "plan": _overrides(r.plan, self.default)} for r in self.rules]
        return {"default": default, "keep_default_skips": self.keep_default_skips, "rules": rules}


RECIPE_KEYS = ("default", "rules", "keep_default_skips")


def _rule(entry, default: QuantSpec | None, where: str) -> Rule:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected a mapping with 'match' and 'plan', got {entry!r}")
    _named(entry, {"match", "plan"}, where)
    if not isinstance(entry.get("match"), str) or not entry["match"]:
        raise InputError(f"{where}: 'match' must be a non-empty string")
    if entry["match"].startswith("re:"):
        try:
            re.compile(entry["match"][3:])
        except re.error as error:
            raise InputError(f"{where}: bad regex {entry['match'][3:]!r} ({error})") from None
    plan = entry.get("plan")
    return Rule(entry["match"], None if plan == SKIP else spec_from_mapping(plan, default, where))


def _overrides(plan: QuantSpec | None, default: QuantSpec | None):
    if plan is None:
        return SKIP
    if default is None:
        return plan.to_dict()
    base = default.to_dict()
    return {k: v for k, v in plan.to_dict().items() if base.get(k) != v} or plan.to_dict()
