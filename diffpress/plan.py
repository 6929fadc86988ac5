"""The one plan type: what `compress` does to a denoiser.

A Plan is a list of prune stages (structured pruning, run first) followed by quantization,
given either by a Recipe (a default QuantSpec plus rules) or by a MixedPrecision budget (one format
per layer, chosen by an integer program from measured sensitivity). Everything a user can hand to
`compress` becomes a Plan through `as_plan`: a preset name, a recipe file, a Recipe, a
MixedPrecision or a bare Budget.

A recipe file is a plan in YAML:

    prune:                         # optional: prune first (see diffpress.prune_stage), then quantize
      - {target_params: 0.8, method: learned}
    default: {weight_format: int4, granularity: per_group, group_size: 128, act_format: int8}
    keep_default_skips: true
    rules:
      - {match: "mid_block.*", plan: {weight_format: int8, granularity: per_channel}}

or, instead of default/rules, a mixed-precision budget:

    mixed: {avg_bits: 5, candidates: [w4a8-int, w8a8-int8-learned], methods: full}
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import InputError, require_int
from .presets import DEFAULT_MIXED_CANDIDATES, PRESETS, SensitivityMethods, candidate, preset_recipe
from .prune_stage import PruneStage
from .recipe import RECIPE_KEYS, Recipe

MIXED = "mixed"  # the preset name that stands for a MixedPrecision plan on the command line


@dataclass(frozen=True)
class Budget:
    """Size budget (exactly one of avg_bits / max_bytes), an optional latency budget and an optional
    activation budget.

    avg_bits: parameter-weighted average weight bits of the allocated layers, scales not counted.
    max_bytes: total bytes of the allocated layers' stored weights (codes + scales).
    max_latency: total of the cost table's per-layer latency (same units as the table).
    avg_act_bits: parameter-weighted average activation bits of the allocated layers (a weight-only or
    high-precision layer counts 16): what makes 4-bit-activation candidates (w4a4-int, w4a4-fp4) worth
    choosing where they cost more error than their 8-bit-activation counterparts.
    avg_bits counts the weight codes' bits only; max_bytes counts what is stored (codes, scales, zero
    points and a preset's high-precision low-rank branch, `Candidate.packed_bytes`).
    """

    avg_bits: float | None = None
    max_bytes: int | None = None
    max_latency: float | None = None
    avg_act_bits: float | None = None

    def __post_init__(self) -> None:
        if (self.avg_bits is None) == (self.max_bytes is None):
            raise InputError("give exactly one size budget: avg_bits or max_bytes", "avg_bits")
        for name in ("avg_bits", "max_bytes", "max_latency", "avg_act_bits"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value > 0 or not math.isfinite(value)):
                raise InputError(f"budget {name} must be a positive number, got {value!r}", name)


@dataclass(frozen=True)
class MixedPrecision:
    """Mixed precision: sensitivity of every layer to each candidate, then a 0/1 integer program.

    candidates: formats to choose from (bf16 keeps a layer in high precision). methods: which plan
    of each candidate is measured and saved (full: the presets' methods, so the measured modules
    are the saved ones; rtn: their round-to-nearest baselines, fast and worse). calls_per_bucket:
    calibration calls replayed per timestep bucket for the output metric. image_layers: layers
    costed by the final-image metric (None: all; 0: output metric only, no sampler needed).
    image_samples / image_steps: the image metric's samples and sampler steps (steps default: the
    calibration's). latency_table: JSON file candidate -> cost per weight element, or a kernel
    benchmark result; with budget.max_latency it bounds the summed cost. validation_samples: held-out
    samples (other seeds than the image metric's) on which the allocations of three cost tables are
    measured whole and the best kept (`compression.selection`); 0: take the image-metric allocation
    unmeasured. Needs a sampler, as the image metric does.
    """

    budget: Budget
    candidates: tuple[str, ...] = DEFAULT_MIXED_CANDIDATES
    methods: SensitivityMethods = SensitivityMethods.FULL
    calls_per_bucket: int = 2
    image_layers: int | None = None
    image_samples: int = 16
    image_steps: int | None = None
    latency_table: str | None = None
    validation_samples: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.budget, Budget):
            raise InputError(f"budget must be a Budget, got {type(self.budget).__name__}", "budget")
        object.__setattr__(self, "candidates", tuple(self.candidates))
        if not self.candidates:
            raise InputError("candidates is empty; give at least one format", "candidates")
        for name in self.candidates:
            candidate(name)
        object.__setattr__(self, "methods", parse_methods(self.methods))
        require_int(self.calls_per_bucket, "calls_per_bucket", 1)
        require_int(self.image_samples, "image_samples", 1)
        require_int(self.validation_samples, "validation_samples", 0)
        if self.image_layers is not None:
            require_int(self.image_layers, "image_layers", 0)
        if self.image_steps is not None:
            require_int(self.image_steps, "image_steps", 1)
        self._check_feasible_bits()

    def _check_feasible_bits(self) -> None:
        """An average below every candidate's bit width is infeasible whatever the model: say so before any work."""
        for budget, bits_of in (("avg_bits", lambda c: c.weight_bits), ("avg_act_bits", lambda c: c.act_bits)):
            smallest = min(bits_of(candidate(name)) for name in self.candidates)
            value = getattr(self.budget, budget)
            if value is not None and value < smallest:
                raise InputError(f"{budget} {value:g} is infeasible: the smallest feasible average is {smallest} bits "
                                 f"(every layer at the cheapest candidate, of {', '.join(self.candidates)})", budget)

    def to_dict(self) -> dict:
        budget = {k: v for k, v in vars(self.budget).items() if v is not None}
        rest = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "budget"}
        return {**budget, **rest, "candidates": list(self.candidates), "methods": self.methods.value}

    @classmethod
    def from_dict(cls, data, where: str = "mixed") -> "MixedPrecision":
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a mapping (avg_bits or max_bytes, candidates, ...), got {data!r}")
        budget_keys = {f.name for f in fields(Budget)}
        other_keys = {f.name for f in fields(cls)} - {"budget"}
        unknown = sorted(set(data) - budget_keys - other_keys, key=str)
        if unknown:
            raise InputError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(budget_keys | other_keys))}")
        try:
            budget = Budget(**{k: v for k, v in data.items() if k in budget_keys})
            return cls(budget, **{k: v for k, v in data.items() if k in other_keys})
        except InputError as error:
            raise InputError(f"{where}: {error}", error.option) from None


def parse_methods(value) -> SensitivityMethods:
    try:
        return SensitivityMethods(value)
    except ValueError:
        allowed = ", ".join(m.value for m in SensitivityMethods)
        raise InputError(f"methods {value!r} is not one of: {allowed}", "methods") from None


@dataclass(frozen=True)
class Plan:
    """Prune stages (run in order), then quantization: a Recipe or a MixedPrecision."""

    quantize: Recipe | MixedPrecision
    prune: tuple[PruneStage, ...] = field(default=())
    name: str | None = None  # the preset this plan came from, if any (shown in summaries)

    def __post_init__(self) -> None:
        if not isinstance(self.quantize, (Recipe, MixedPrecision)):
            raise InputError(f"a plan quantizes with a Recipe or a MixedPrecision, got {type(self.quantize).__name__}")
        object.__setattr__(self, "prune", tuple(self.prune))
        for stage in self.prune:
            if not isinstance(stage, PruneStage):
                raise InputError(f"prune stages are PruneStage objects, got {type(stage).__name__}", "prune")

    @property
    def mixed(self) -> MixedPrecision | None:
        return self.quantize if isinstance(self.quantize, MixedPrecision) else None

    @property
    def recipe(self) -> Recipe | None:
        return self.quantize if isinstance(self.quantize, Recipe) else None

    def describe(self) -> str:
        quantize = f"preset {self.name}" if self.name else "mixed precision" if self.mixed else "recipe"
        return f"{len(self.prune)} prune stage(s), then {quantize}" if self.prune else quantize

    # ---------------------------------------------------------- dict / YAML

    @classmethod
    def from_dict(cls, data, where: str = "recipe") -> "Plan":
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a mapping (default/rules, or mixed), got {type(data).__name__}")
        allowed = {"prune", MIXED, *RECIPE_KEYS}
        unknown = sorted(set(data) - allowed, key=str)
        if unknown:
            raise InputError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
        prune = _prune_stages(data.get("prune"), f"{where}: prune")
        if MIXED in data:
            clash = sorted(set(data) & set(RECIPE_KEYS))
            if clash:
                raise InputError(f"{where}: 'mixed' chooses every layer's plan; remove {clash[0]!r}")
            return cls(MixedPrecision.from_dict(data[MIXED], f"{where}: mixed"), prune)
        return cls(Recipe.from_dict({k: v for k, v in data.items() if k in RECIPE_KEYS}, where), prune)

    def to_dict(self) -> dict:
        quantize = {MIXED: self.mixed.to_dict()} if self.mixed else self.recipe.to_dict()
        return {**({"prune": [stage.to_dict() for stage in self.prune]} if self.prune else {}), **quantize}

    @classmethod
    def from_yaml(cls, text: str, where: str = "recipe") -> "Plan":
        return cls.from_dict(safe_yaml(text, where), where)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such recipe file", "recipe")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: not a readable text file ({error})", "recipe") from None
        try:
            return cls.from_yaml(text, str(path))
        except InputError as error:
            raise InputError(str(error), "recipe") from None

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def safe_yaml(text: str, where: str):
    """Parse YAML with the safe loader (no object-constructing tags); errors are one-line InputErrors."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InputError(f"{where}: not valid YAML ({str(error).splitlines()[0]})") from None


def _prune_stages(value, where: str) -> tuple[PruneStage, ...]:
    if value in (None, []):
        return ()
    if not isinstance(value, list):
        raise InputError(f"{where}: expected a list of prune stages (mappings), got {value!r}")
    return tuple(PruneStage.from_dict(stage, f"{where}[{i}]") for i, stage in enumerate(value))


def as_plan(value) -> Plan:
    """A Plan from a preset name, a recipe file path, a Recipe, a MixedPrecision, a Budget or a Plan."""
    if isinstance(value, Plan):
        return value
    if isinstance(value, (Recipe, MixedPrecision)):
        return Plan(value)
    if isinstance(value, Budget):
        return Plan(MixedPrecision(value))
    if isinstance(value, str) and value in PRESETS:
        return Plan(preset_recipe(value), name=value)
    if isinstance(value, str) and value == MIXED:
        raise InputError("plan 'mixed' needs a budget: pass MixedPrecision(Budget(avg_bits=...)) or a Budget "
                         "(on the command line: --avg-bits B or --max-bytes N)", "preset")
    if isinstance(value, (str, Path)):
        if Path(value).is_file():
            return Plan.load(value)
        raise InputError(f"plan {str(value)!r} is neither a preset ({', '.join(PRESETS)}) nor a recipe file", "plan")
    raise InputError(f"a plan is a preset name, a recipe file, a Recipe, a MixedPrecision or a Budget; got "
                     f"{type(value).__name__}", "plan")
