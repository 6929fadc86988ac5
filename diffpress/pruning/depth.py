"""Depth pruning: which whole blocks to remove (LAPTOP-Diff's one-shot criterion, solved as a 0/1 program).

The criterion of a block is its single-removal loss: the relative squared error of the denoiser's
output with only that block removed, against the full model, over replayed calibration calls of
every timestep bucket (`removal_losses`). LAPTOP-Diff observes that these losses add up almost
linearly, so the set to remove minimizes their sum under the budget; `additivity` checks that
claim on the model at hand (the loss of removing a set, predicted as the sum of its members'
losses, against the measured one). The set is chosen by the mixed-precision integer program
(`compression.allocate`, CBC via PuLP): each block is an item with two options, keep (spends its
parameters, MACs, measured seconds, or one block) and remove (costs its loss).
"""
from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..calibration import CalibrationSet
from ..compression.sensitivity.output_metric import output_tensor
from ..errors import InputError
from ..metrics import relative_error
from ..prune_stage import Cost
from .blocks import Block, without


def denoiser_outputs(denoiser: nn.Module, entries) -> list[torch.Tensor]:
    """The denoiser's output tensor (float32) for each replayed calibration call."""
    with torch.no_grad():
        return [output_tensor(denoiser(**entry.call_kwargs())).float() for entry in entries]


def calibration_entries(calibration: CalibrationSet, per_bucket: int):
    entries = calibration.entries(per_bucket)
    if not entries:
        raise InputError("the calibration set has no replayable calls (its reservoir is empty); calibrate again "
                         "with calls kept", "calibration")
    return entries


def removal_losses(denoiser: nn.Module, blocks: Sequence[Block], calibration: CalibrationSet,
                   per_bucket: int = 2, progress: bool = False) -> list[float]:
    """The single-removal loss of each block (mean over the replayed calls of relative output error)."""
    from tqdm.auto import tqdm

    entries = calibration_entries(calibration, per_bucket)
    references = denoiser_outputs(denoiser, entries)
    losses = []
    for block in tqdm(blocks, desc="single-removal loss", unit="block", disable=not progress):
        with without(denoiser, [block]):
            losses.append(output_error(denoiser, entries, references))
    return losses


def output_error(denoiser: nn.Module, entries, references: list[torch.Tensor]) -> float:
    """Mean relative output error of `denoiser` on the replayed calls against the `references` outputs."""
    outputs = denoiser_outputs(denoiser, entries)
    return sum(float(relative_error(r, o)) for o, r in zip(outputs, references)) / len(outputs)


@dataclass
class Additivity:
    """Predicted (sum of single-removal losses) against measured loss of removing random sets of blocks."""

    sizes: list[int]
    predicted: list[float]
    measured: list[float]

    @property
    def pearson(self) -> float:
        return _pearson(self.predicted, self.measured)

    @property
    def spearman(self) -> float:
        return _pearson(_ranks(self.predicted), _ranks(self.measured))

    def to_dict(self) -> dict:
        return {"pearson": round(self.pearson, 4), "spearman": round(self.spearman, 4),
                "points": [{"blocks": s, "predicted": p, "measured": m}
                           for s, p, m in zip(self.sizes, self.predicted, self.measured)]}


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    for rank, index in enumerate(order):
        ranks[index] = float(rank)
    return ranks


def _pearson(a: list[float], b: list[float]) -> float:
    """Pearson correlation; NaN where it is undefined (fewer than two points, or a constant side)."""
    try:
        return statistics.correlation(a, b)
    except statistics.StatisticsError:
        return float("nan")


def additivity(denoiser: nn.Module, blocks: Sequence[Block], losses: Sequence[float], calibration: CalibrationSet,
               sets: int = 20, per_bucket: int = 2, seed: int = 0) -> Additivity:
    """Remove `sets` random sets of 2 .. len(blocks)//2 blocks and compare each measured loss with the sum of
    its members' single-removal losses."""
    entries = calibration_entries(calibration, per_bucket)
    references = denoiser_outputs(denoiser, entries)
    rng = random.Random(seed)
    largest = max(2, len(blocks) // 2)
    sizes, predicted, measured = [], [], []
    for _ in range(sets):
        size = rng.randint(2, largest) if len(blocks) >= 2 else len(blocks)
        chosen = rng.sample(range(len(blocks)), size)
        with without(denoiser, [blocks[i] for i in chosen]):
            measured.append(output_error(denoiser, entries, references))
        sizes.append(size)
        predicted.append(sum(losses[i] for i in chosen))
    return Additivity(sizes, predicted, measured)


def block_seconds(denoiser: nn.Module, blocks: Sequence[Block], calibration: CalibrationSet,
                  per_bucket: int = 1, repeats: int = 3) -> float:
    """Measure each block's CPU seconds per denoiser call (set on the blocks); return the whole call's."""
    entries = calibration_entries(calibration, per_bucket)
    spent = {block.name: 0.0 for block in blocks}
    started: dict[str, float] = {}
    handles = []
    for block in blocks:
        module = denoiser.get_submodule(block.name)
        handles.append(module.register_forward_pre_hook(lambda m, a, name=block.name: started.__setitem__(
            name, time.perf_counter())))
        handles.append(module.register_forward_hook(lambda m, a, o, name=block.name: spent.__setitem__(
            name, spent[name] + time.perf_counter() - started[name])))
    try:
        denoiser_outputs(denoiser, entries)  # warm-up
        for key in spent:
            spent[key] = 0.0
        begin = time.perf_counter()
        for _ in range(repeats):
            denoiser_outputs(denoiser, entries)
        whole = (time.perf_counter() - begin) / (repeats * len(entries))
    finally:
        for handle in handles:
            handle.remove()
    for block in blocks:
        block.seconds = spent[block.name] / (repeats * len(entries))
    return whole


def block_spend(block: Block, cost: Cost) -> float:
    return {Cost.PARAMS: block.params, Cost.MACS: block.macs, Cost.LATENCY: block.seconds}[Cost(cost)]


def check_removable(blocks: Sequence[Block], total: float, cost: Cost, target: float | None,
                    remove_blocks: int | None) -> None:
    if not blocks:
        raise InputError("the model has no removable block (no list of same-class blocks that return an input's "
                         "shape)", "model")
    if remove_blocks is not None and not 0 < remove_blocks < len(blocks):
        raise InputError(f"remove_blocks {remove_blocks} must be between 1 and {len(blocks) - 1} (the model has "
                         f"{len(blocks)} removable blocks; at least one stays)", "remove_blocks")
    if target is not None:
        floor = (total - sum(block_spend(b, cost) for b in blocks) + min(block_spend(b, cost) for b in blocks)) / total
        if target < floor:
            raise InputError(f"target {target:g} of the {Cost(cost).value} cannot be reached by removing blocks: the "
                             f"smallest reachable is {floor:.3f} (every removable block but the smallest removed)",
                             f"target_{Cost(cost).value}")


def choose_oneshot(blocks: Sequence[Block], losses: Sequence[float], total: float, cost: Cost,
                   target: float | None = None, remove_blocks: int | None = None) -> list[Block]:
    """The set of blocks with the least summed single-removal loss that meets the budget (0/1 program)."""
    from ..compression.allocate import LayerChoices, LayerOption, allocate
    from ..plan import Budget

    check_removable(blocks, total, cost, target, remove_blocks)
    scale = 1.0
    if remove_blocks is not None:
        spends, allowed = [1] * len(blocks), len(blocks) - remove_blocks
    else:
        raw = [block_spend(b, cost) for b in blocks]
        scale = 1e6 / max(max(raw), 1e-30)  # integer spends for the program, fine enough
        spends = [max(1, round(s * scale)) for s in raw]
        fixed = total - sum(raw)
        allowed = math.floor((target * total - fixed) * scale)
    if allowed >= sum(spends):
        return []
    layers = [LayerChoices(b.name, b.params, (LayerOption("keep", 0.0, 0.0, spend, 0.0),
                                                LayerOption("remove", max(loss, 0.0), 1.0, 0, 0.0)))
              for b, loss, spend in zip(blocks, losses, spends)]
    allocation = allocate(layers, Budget(max_bytes=max(1, allowed)))
    return [b for b in blocks if allocation.choice[b.name] == "remove"]


def choose_random(blocks: Sequence[Block], total: float, cost: Cost, target: float | None = None,
                  remove_blocks: int | None = None, seed: int = 0) -> list[Block]:
    """Random blocks removed in a seeded order until the budget is met."""
    check_removable(blocks, total, cost, target, remove_blocks)
    order = list(blocks)
    random.Random(seed).shuffle(order)
    if remove_blocks is not None:
        chosen = order[:remove_blocks]
    else:
        chosen, kept = [], total
        for block in order:
            if kept <= target * total or len(chosen) == len(blocks) - 1:
                break
            chosen.append(block)
            kept -= block_spend(block, cost)
    names = {b.name for b in chosen}
    return [b for b in blocks if b.name in names]
