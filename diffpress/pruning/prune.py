"""Run a prune stage (`diffpress.prune_stage.PruneStage`) on a denoiser: find the units, score them
(learned mask or a one-shot baseline), keep the best under the budget, slice the model, and say
what was removed (`PruneResult`). A stage of unit blocks removes whole blocks instead (`depth.py`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ..calibration import CalibrationSet
from ..errors import InputError
from ..prune_stage import NEEDS_CALIBRATION, Cost, Method, PruneStage, Unit
from .blocks import Block, find_blocks, remove_blocks
from .depth import (Additivity, additivity, block_seconds, check_removable, choose_oneshot, choose_random,
                    removal_losses)
from .importance import activation_scores, magnitude_scores, normalized, random_scores, taylor_scores
from .learn import LearnedMask, learn_mask
from .macs import attach_macs, count_macs, record_positions
from .select import PruneBudget, check_reachable, select
from .depth_learn import LearnedDepth, learn_depth
from .recover import Recovery, distill, record_teacher
from .slicing import materialize, with_removed_blocks
from .trajectory import Trajectory, final_latents
from .units import PruneGroup, find_groups


@dataclass
class PruneResult:
    stage: PruneStage
    groups: list[PruneGroup]
    kept: list[torch.Tensor]
    structure: dict
    params_before: int
    params_after: int
    macs_before: float
    macs_after: float
    seconds: float
    learned: LearnedMask | None = None
    blocks: list[Block] = field(default_factory=list)  # removable blocks (unit blocks)
    removed: list[str] = field(default_factory=list)  # names of the removed blocks
    losses: list[float] | None = None  # single-removal loss of each block (oneshot)
    additivity: Additivity | None = None
    recovery: Recovery | None = None
    learned_depth: LearnedDepth | None = None

    def rows(self) -> list[tuple[str, str, int, int]]:
        """(group or block, kind, kept, count) of every group that lost units and every removed block."""
        removed = set(self.removed)
        return [(g.name, g.kind.value, int(k.numel()), g.count) for g, k in zip(self.groups, self.kept)
                if k.numel() != g.count] + [(b.name, b.kind, 0, 1) for b in self.blocks if b.name in removed]


def denoiser_params(denoiser: nn.Module) -> int:
    return sum(p.numel() for p in denoiser.parameters())


def one_call(pipe, items: Sequence | None, calibration: CalibrationSet | None) -> Callable[[nn.Module], object]:
    """A single representative denoiser call (for counting MACs): one calibration entry, or one 1-step sample."""
    if calibration is not None and calibration.entries(1):
        entry = calibration.entries(1)[0]
        return lambda denoiser: denoiser(**entry.call_kwargs())
    if pipe is None or not items:
        raise InputError("counting MACs needs one denoiser call: give a pipeline and prompts or labels, or a "
                         "calibration set with a reservoir", "calibration")
    return lambda denoiser: final_latents(pipe, list(items[:1]), 0, Trajectory(steps=1))


def _scores(stage: PruneStage, pipe, denoiser, groups, items, calibration, total, trajectory, progress):
    method = stage.method
    if method in NEEDS_CALIBRATION and calibration is None:
        raise InputError(f"method {method.value} needs a calibration set (statistics and replayable calls)",
                         "calibration")
    if method is Method.LEARNED:
        learned = learn_mask(pipe, denoiser, groups, items, trajectory, PruneBudget(stage.target, stage.cost), total,
                             stage.learn, progress, calibration, stage.scope)
        return learned.scores(), learned
    if method is Method.RANDOM:
        return random_scores(groups, stage.seed), None
    if method is Method.MAGNITUDE:
        return normalized(magnitude_scores(denoiser, groups)), None
    if method is Method.ACTIVATION:
        return normalized(activation_scores(denoiser, groups, calibration)), None
    return taylor_scores(denoiser, groups, calibration, seed=stage.seed), None  # output change: comparable as is


def prune_denoiser(denoiser: nn.Module, stage: PruneStage, *, pipe=None, items: Sequence | None = None,
                   calibration: CalibrationSet | None = None, default_steps: int = 25,
                   progress: bool = False) -> PruneResult:
    """Prune `denoiser` in place (it is the pipeline's denoiser when `pipe` is given)."""
    started = time.perf_counter()
    if getattr(denoiser, "diffpress_structure", None):
        raise InputError("this model is already pruned; prune the original model to a smaller target instead",
                         "model")
    if stage.unit is Unit.BLOCKS:
        trajectory = Trajectory(stage.steps or default_steps, stage.guidance_scale)
        return _prune_blocks(denoiser, stage, one_call(pipe, items, calibration), calibration, started, progress,
                             pipe=pipe, items=items, trajectory=trajectory)
    groups = find_groups(denoiser)
    params_before = denoiser_params(denoiser)
    positions = record_positions(denoiser, one_call(pipe, items, calibration))
    attach_macs(denoiser, groups, positions)
    macs_before = count_macs(denoiser, positions)
    total = params_before if stage.cost is Cost.PARAMS else macs_before
    check_reachable(groups, total, PruneBudget(stage.target, stage.cost))
    trajectory = Trajectory(stage.steps or default_steps, stage.guidance_scale)
    scores, learned = _scores(stage, pipe, denoiser, groups, items, calibration, total, trajectory, progress)
    kept = select(groups, scores, total, PruneBudget(stage.target, stage.cost), stage.scope)
    call = one_call(pipe, items, calibration)
    features = [b.name for b in find_blocks(denoiser, call)] if stage.recover_steps else []
    teacher = _teacher(denoiser, stage, calibration, features)
    structure = materialize(denoiser, groups, kept)
    recovery = _recover(denoiser, stage, teacher, progress)
    positions_after = record_positions(denoiser, call)
    result = PruneResult(stage, groups, kept, structure, params_before, denoiser_params(denoiser), macs_before,
                         count_macs(denoiser, positions_after), time.perf_counter() - started, learned)
    result.recovery = recovery
    return result


def _teacher(denoiser, stage: PruneStage, calibration: CalibrationSet | None, feature_blocks: list[str]):
    if not stage.recover_steps:
        return None
    if calibration is None:
        raise InputError("recovery distills on replayed calibration calls: give calibration", "calibration")
    return record_teacher(denoiser, calibration, feature_blocks)


def _recover(denoiser, stage: PruneStage, teacher, progress: bool) -> Recovery | None:
    if teacher is None:
        return None
    return distill(denoiser, teacher, stage.recover_steps, stage.recover_learning_rate, seed=stage.seed,
                   progress=progress)


def _prune_blocks(denoiser: nn.Module, stage: PruneStage, call, calibration: CalibrationSet | None,
                  started: float, progress: bool, *, pipe=None, items: Sequence | None = None,
                  trajectory: Trajectory | None = None) -> PruneResult:
    """Remove whole blocks: oneshot (least summed single-removal loss, 0/1 program), learned (a removal set
    fitted end to end, depth_learn.py) or random."""
    blocks = find_blocks(denoiser, call)
    params_before = denoiser_params(denoiser)
    positions = record_positions(denoiser, call)
    for block in blocks:
        block.macs = count_macs(denoiser, positions, under=block.name)
    macs_before = count_macs(denoiser, positions)
    total = {Cost.PARAMS: params_before, Cost.MACS: macs_before}.get(stage.cost)
    if stage.cost is Cost.LATENCY:
        total = block_seconds(denoiser, blocks, calibration)
    check_removable(blocks, total, stage.cost, stage.target, stage.remove_blocks)
    losses = checked = learned = None
    if stage.method is Method.LEARNED:
        learned = learn_depth(denoiser, blocks, stage.remove_blocks, calibration, stage.learn, pipe=pipe,
                              items=items, trajectory=trajectory, progress=progress)
        chosen = learned.removed
    elif stage.method is Method.ONESHOT:
        losses = removal_losses(denoiser, blocks, calibration, progress=progress)
        checked = additivity(denoiser, blocks, losses, calibration, seed=stage.seed) if len(blocks) > 2 else None
        chosen = choose_oneshot(blocks, losses, total, stage.cost, stage.target, stage.remove_blocks)
    else:
        chosen = choose_random(blocks, total, stage.cost, stage.target, stage.remove_blocks, stage.seed)
    removed_names = {b.name for b in chosen}
    teacher = _teacher(denoiser, stage, calibration, [b.name for b in blocks if b.name not in removed_names])
    removed = remove_blocks(denoiser, chosen)
    structure = with_removed_blocks({"version": 1, "groups": {}}, removed)
    denoiser.diffpress_structure = structure
    recovery = _recover(denoiser, stage, teacher, progress)
    positions_after = record_positions(denoiser, call)
    return PruneResult(stage, [], [], structure, params_before, denoiser_params(denoiser), macs_before,
                       count_macs(denoiser, positions_after), time.perf_counter() - started, None, blocks,
                       [b.name for b in chosen], losses, checked, recovery, learned)
