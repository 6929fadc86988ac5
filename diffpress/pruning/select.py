"""Binarization: which units stay, from per-unit scores, under a parameter or MAC budget.

The budget is a fraction of the whole denoiser (parameters, or MACs per call) to keep. Global scope
removes the lowest-scoring units model-wide (scores compared as given, so learned logits directly
and baseline scores after per-group normalization) until the budget is met; per-layer scope removes
the same fraction of every group. Every group keeps at least `min_kept` units (an attention one
head, a ResNet one GroupNorm group; a feed-forward may lose every neuron).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..prune_stage import Cost, Scope, check_target
from .units import PruneGroup


@dataclass(frozen=True)
class PruneBudget:
    """Keep `target` of the denoiser's `cost` (0 < target <= 1)."""

    target: float
    cost: Cost = Cost.PARAMS

    def __post_init__(self) -> None:
        object.__setattr__(self, "cost", Cost(self.cost))
        check_target(self.target, self.cost)


def unit_cost(group: PruneGroup, cost: Cost) -> float:
    return float(group.params_per_unit if cost is Cost.PARAMS else group.macs_per_unit)


def smallest_reachable(groups: list[PruneGroup], total: float, cost: Cost) -> float:
    """The smallest fraction of `total` reachable by removing every removable unit."""
    removable = sum((g.count - g.min_kept) * unit_cost(g, cost) for g in groups)
    return (total - removable) / total


def check_reachable(groups: list[PruneGroup], total: float, budget: PruneBudget) -> None:
    if not groups:
        raise InputError("the model has no prunable unit (no attention heads, feed-forward neurons or ResNet "
                         "channel groups of a known layout)", "model")
    floor = smallest_reachable(groups, total, budget.cost)
    if budget.target < floor:
        option = "target_params" if budget.cost is Cost.PARAMS else "target_macs"
        raise InputError(f"target {budget.target:g} of the {budget.cost.value} cannot be reached: the smallest "
                         f"reachable is {floor:.3f} (every removable unit removed: attentions keep one head, ResNets one "
                         f"channel group)", option)


def select(groups: list[PruneGroup], scores: list[torch.Tensor], total: float, budget: PruneBudget,
           scope: Scope = Scope.GLOBAL) -> list[torch.Tensor]:
    """Sorted indices of the kept units of each group."""
    check_reachable(groups, total, budget)
    to_remove = (1.0 - budget.target) * total
    if Scope(scope) is Scope.PER_LAYER:
        return _per_layer(groups, scores, to_remove, budget.cost)
    return _global(groups, scores, to_remove, budget.cost)


def _global(groups, scores, to_remove: float, cost: Cost) -> list[torch.Tensor]:
    order = sorted(((float(s), g, u) for g, group_scores in enumerate(scores) for u, s in enumerate(group_scores)),
                   key=lambda item: item[0])
    kept = [torch.ones(g.count, dtype=torch.bool) for g in groups]
    left = [g.count for g in groups]
    removed = 0.0
    for _, g, u in order:
        if removed >= to_remove:
            break
        if left[g] <= groups[g].min_kept:
            continue
        kept[g][u] = False
        left[g] -= 1
        removed += unit_cost(groups[g], cost)
    return [k.nonzero().reshape(-1) for k in kept]


def _per_layer(groups, scores, to_remove: float, cost: Cost) -> list[torch.Tensor]:
    prunable = sum(g.count * unit_cost(g, cost) for g in groups)
    fraction = min(1.0, to_remove / prunable) if prunable else 0.0
    kept = []
    for group, group_scores in zip(groups, scores):
        keep = max(group.min_kept, group.count - round(fraction * group.count))
        kept.append(group_scores.argsort(descending=True)[:keep].sort().values)
    return kept
