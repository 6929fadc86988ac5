"""A prune stage as data: what `diffpress prune` and a recipe's `prune:` list ask for (no torch here).

    prune:
      - {target_params: 0.8, method: learned, steps: 20, learn: {iterations: 100}}

    prune:
      - {remove_blocks: 3, method: oneshot}          # depth: whole blocks

target_params / target_macs (/ target_latency, blocks only): the fraction of the denoiser's
parameters, multiply-accumulates per call (or measured seconds per call) to keep. unit: width
(attention heads, feed-forward neurons, ResNet channel groups) or blocks (whole transformer blocks,
ResNets, attention blocks); remove_blocks N or method oneshot mean blocks. method: how units are
ranked: for width a mask learned on the sampling trajectory or a one-shot baseline (taylor,
activation, magnitude, random); for blocks the single-removal loss (oneshot), N:M group gates
learned on replayed calls (learned, with remove_blocks), or random. scope:
global (rank units model-wide) or per_layer (the same fraction of every group; width only).
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields

from .errors import InputError, require_int


class Method(str, enum.Enum):
    LEARNED = "learned"
    TAYLOR = "taylor"
    MAGNITUDE = "magnitude"
    ACTIVATION = "activation"
    RANDOM = "random"
    ONESHOT = "oneshot"


NEEDS_CALIBRATION = frozenset({Method.TAYLOR, Method.ACTIVATION, Method.ONESHOT})


class Unit(str, enum.Enum):
    WIDTH = "width"  # attention heads, feed-forward neurons, ResNet channel groups
    BLOCKS = "blocks"  # whole blocks (depth)


METHODS = {Unit.WIDTH: (Method.LEARNED, Method.TAYLOR, Method.MAGNITUDE, Method.ACTIVATION, Method.RANDOM),
           Unit.BLOCKS: (Method.ONESHOT, Method.LEARNED, Method.RANDOM)}


class Cost(str, enum.Enum):
    PARAMS = "params"
    MACS = "macs"
    LATENCY = "latency"  # measured CPU seconds per call (blocks only)


class Scope(str, enum.Enum):
    GLOBAL = "global"
    PER_LAYER = "per_layer"


class GateKind(str, enum.Enum):
    HARD_CONCRETE = "hard_concrete"
    SIGMOID = "sigmoid"


class LearnObjective(str, enum.Enum):
    """What a learned mask is fitted on: the final latent of whole sampling trajectories against the float
    model's (trajectory), or the denoiser's output on replayed calibration calls (replay)."""

    TRAJECTORY = "trajectory"
    REPLAY = "replay"

    @classmethod
    def default(cls, has_pipeline: bool) -> "LearnObjective":
        """What a stage that names none fits: the trajectory where the model has a pipeline to sample."""
        return cls.TRAJECTORY if has_pipeline else cls.REPLAY


class DepthPattern(str, enum.Enum):
    """Which sets of blocks the learned depth mask draws: any `remove_blocks` of them (free), or TinyFusion's
    local N:M groups per block class (nm)."""

    FREE = "free"
    NM = "nm"


class DepthInit(str, enum.Enum):
    """Where the free depth logits start: the blocks' single-removal losses (oneshot) or all equal (uniform)."""

    ONESHOT = "oneshot"
    UNIFORM = "uniform"


class WarmStart(str, enum.Enum):
    """What the width mask does with one-shot rankings of the units on the learning trajectories' own calls:
    nothing (none); start the logits spread by the first-order (taylor) output change and measure that
    ranking's cut first (taylor); or learn from equal logits and measure the cuts of the taylor, activation
    and weight-magnitude rankings first as held-out candidates (candidate: the result is never worse on the
    held-out data than those cuts, and the descent is not tied to a one-shot ranking, which holds for small
    removals and misleads for large ones)."""

    NONE = "none"
    TAYLOR = "taylor"
    CANDIDATE = "candidate"


class BudgetControl(str, enum.Enum):
    """How mask learning holds the budget: `projected` shifts every logit by one constant after each step so
    the expected kept fraction equals the budget of the moment, which falls from 1 to the target over the
    first `warmup` of the iterations (cubic, as gradual pruning schedules do) and then stays: no weight to
    tune, and the mask is fitted at the target it will be cut to; `penalty` adds
    penalty * relu(expected kept fraction - target), its weight ramped in over `warmup`; `topk` draws every
    mask hard at the budget of the moment (the same schedule as projected): the units of highest noisy logit
    that fit, with a straight-through gradient, so training sees exactly the kind of mask the final cut
    makes."""

    PROJECTED = "projected"
    PENALTY = "penalty"
    TOPK = "topk"


@dataclass(frozen=True)
class LearnOptions:
    """Mask learning: `iterations` optimizer steps, each one trajectory batch of `batch_size` items, over
    `samples` distinct (item, seed) targets; Adam at `learning_rate` on the gate logits; the budget held by
    `control` (a penalty of weight `penalty` ramped in over the first `warmup` fraction of the iterations,
    or projected / topk with the budget falling to the target over `warmup`); `warm_start` spreads the
    starting logits by first-order importance, or (candidate) measures the taylor, activation and magnitude cuts first;
    `mask_checks` binary cuts are measured on held-out data and the best kept; `step_loss` weighs a per-step term (the gated denoiser's output on the float trajectory's
    calls against the float output) beside the final-latent loss (0: final latent only); `objective`: the
    sampling trajectory or replayed calibration calls. Learned depth (unit blocks) also reads
    `depth_pattern`, `depth_init` and `lora_rank` / `lora_learning_rate` (see pruning/depth_learn.py)."""

    iterations: int = 100
    batch_size: int = 4
    samples: int = 32
    learning_rate: float = 0.1
    control: BudgetControl = BudgetControl.PENALTY
    penalty: float = 5.0
    warmup: float | None = None  # default: 0.1 penalty, 0.5 projected and topk
    step_loss: float = 0.0
    warm_start: WarmStart = WarmStart.CANDIDATE
    mask_checks: int = 10  # binarized-mask checks during learning; the best cut's logits are kept (0: the last)
    objective: LearnObjective | None = None  # default: trajectory where there is a pipeline, else replay
    depth_pattern: DepthPattern = DepthPattern.FREE  # blocks only
    depth_init: DepthInit = DepthInit.ONESHOT  # blocks only, free pattern
    lora_rank: int = 0  # blocks only: LoRA adapters co-trained with the depth mask (0: none)
    lora_learning_rate: float = 1e-3
    gate: GateKind = GateKind.HARD_CONCRETE
    init_logit: float = 3.0
    checkpoint_steps: bool = True
    seed: int = 0

    @property
    def warmup_fraction(self) -> float:
        """`warmup`, or its default for the control: 0.1 of the iterations for penalty, 0.5 for the others."""
        if self.warmup is not None:
            return float(self.warmup)
        return 0.1 if self.control is BudgetControl.PENALTY else 0.5

    def __post_init__(self) -> None:
        require_int(self.iterations, "iterations", 1)
        require_int(self.batch_size, "batch_size", 1)
        require_int(self.samples, "samples", 1)
        require_int(self.lora_rank, "lora_rank", 0)
        require_int(self.mask_checks, "mask_checks", 0)
        for name, kind in (("gate", GateKind), ("control", BudgetControl), ("objective", LearnObjective),
                           ("depth_pattern", DepthPattern), ("depth_init", DepthInit),
                           ("warm_start", WarmStart)):
            if getattr(self, name) is None:
                continue
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                raise InputError(f"{name} {getattr(self, name)!r} is not one of: {', '.join(k.value for k in kind)}",
                                 name) from None
        for name in ("learning_rate", "penalty", "lora_learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InputError(f"{name} must be a positive number, got {value!r}", name)
        warmup = self.warmup
        if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, (int, float))
                                   or not 0 <= warmup <= 1):
            raise InputError(f"warmup must be a fraction in [0, 1], got {warmup!r}", "warmup")
        value = self.step_loss
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise InputError(f"step_loss must be a number >= 0, got {value!r}", "step_loss")


def check_target(target, cost: Cost) -> None:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise InputError(f"target {target!r} must be a fraction in (0, 1] of the denoiser's {cost.value} to keep",
                         f"target_{cost.value}")


@dataclass(frozen=True)
class PruneStage:
    """Keep `target` of the denoiser's parameters (cost params) or MACs per call (cost macs), choosing units
    by `method`. steps / guidance_scale: the sampling trajectory the learned mask is fitted on (default: the
    model's evaluation settings). learn: the mask-learning settings."""

    target: float | None
    cost: Cost = Cost.PARAMS
    method: Method | None = None  # default: learned for width, oneshot for blocks
    scope: Scope = Scope.GLOBAL
    steps: int | None = None
    guidance_scale: float | None = None
    learn: LearnOptions = field(default_factory=LearnOptions)
    seed: int = 0
    unit: Unit | None = None  # default: blocks when remove_blocks is given or the method is oneshot, else width
    remove_blocks: int | None = None
    recover_steps: int = 0  # distillation steps from the float model after pruning (0: none)
    recover_learning_rate: float = 1e-4

    def __post_init__(self) -> None:
        for name, kind in (("cost", Cost), ("method", Method), ("scope", Scope), ("unit", Unit)):
            value = getattr(self, name)
            if value is None and name in ("method", "unit"):
                continue
            try:
                object.__setattr__(self, name, kind(value))
            except ValueError:
                allowed = ", ".join(k.value for k in kind)
                raise InputError(f"prune {name} {value!r} is not one of: {allowed}", name) from None
        self._resolve_unit()
        require_int(self.recover_steps, "recover_steps", 0)
        rate = self.recover_learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise InputError(f"recover_learning_rate must be a positive number, got {rate!r}", "recover_learning_rate")
        if self.remove_blocks is None:
            check_target(self.target, self.cost)
        if self.steps is not None:
            require_int(self.steps, "steps", 1)
        if isinstance(self.learn, dict):
            object.__setattr__(self, "learn", _learn_options(self.learn))
        if not isinstance(self.learn, LearnOptions):
            raise InputError(f"learn must be LearnOptions or a mapping, got {type(self.learn).__name__}", "learn")

    def _resolve_unit(self) -> None:
        unit = self.unit
        if unit is None:
            blocks = self.remove_blocks is not None or self.method is Method.ONESHOT or self.cost is Cost.LATENCY
            unit = Unit.BLOCKS if blocks else Unit.WIDTH
        object.__setattr__(self, "unit", unit)
        if self.method is None:
            object.__setattr__(self, "method", METHODS[unit][0])
        if self.method not in METHODS[unit]:
            allowed = ", ".join(m.value for m in METHODS[unit])
            raise InputError(f"prune method {self.method.value!r} does not prune {unit.value}; for {unit.value}: "
                             f"{allowed}", "method")
        if unit is Unit.WIDTH and (self.remove_blocks is not None or self.cost is Cost.LATENCY):
            raise InputError("remove_blocks and target_latency prune whole blocks; they need unit blocks",
                             "remove_blocks" if self.remove_blocks is not None else "target_latency")
        if self.remove_blocks is not None:
            require_int(self.remove_blocks, "remove_blocks", 1)
            if self.target is not None:
                raise InputError("give remove_blocks or a target fraction, not both", "remove_blocks")
        if unit is Unit.BLOCKS and self.method is Method.LEARNED and self.remove_blocks is None:
            raise InputError("the learned depth mask removes a number of blocks: give remove_blocks", "method")

    def to_dict(self) -> dict:
        data = {"target_" + self.cost.value: self.target} if self.remove_blocks is None else \
            {"remove_blocks": self.remove_blocks}
        data.update({"unit": self.unit.value, "method": self.method.value, "scope": self.scope.value})
        if self.steps is not None:
            data["steps"] = self.steps
        if self.guidance_scale is not None:
            data["guidance_scale"] = self.guidance_scale
        if self.recover_steps:
            data.update(recover_steps=self.recover_steps, recover_learning_rate=self.recover_learning_rate)
        if self.method is Method.LEARNED:
            data["learn"] = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(self.learn).items()}
        return data

    @classmethod
    def from_dict(cls, data, where: str = "prune stage") -> "PruneStage":
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a mapping (target_params or target_macs, method, ...), got {data!r}")
        allowed = {"target_params", "target_macs", "target_latency", "remove_blocks", "unit", "method", "scope",
                   "steps", "guidance_scale", "learn", "seed", "recover_steps", "recover_learning_rate"}
        unknown = sorted(set(data) - allowed, key=str)
        if unknown:
            raise InputError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
        targets = [k for k in ("target_params", "target_macs", "target_latency", "remove_blocks") if k in data]
        if len(targets) != 1:
            raise InputError(f"{where}: give exactly one of target_params, target_macs, target_latency, remove_blocks")
        rest = {k: v for k, v in data.items() if k not in targets}
        try:
            if targets[0] == "remove_blocks":
                return cls(None, remove_blocks=data["remove_blocks"], **rest)
            return cls(data[targets[0]], Cost(targets[0].removeprefix("target_")), **rest)
        except InputError as error:
            raise InputError(f"{where}: {error}", error.option) from None


def _learn_options(data: dict) -> LearnOptions:
    known = {f.name for f in fields(LearnOptions)}
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise InputError(f"learn: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(known))}", "learn")
    return LearnOptions(**data)
