"""One-shot importance baselines: a score per unit, higher = keep.

- random: uniform scores from a seeded generator.
- magnitude: root-mean-square of the unit's weights (producer rows and consumer columns).
- activation (Wanda-style, from the calibration statistics): sum over the unit's consumer columns of
  the column's input RMS times the column's weight norm.
- taylor (first order, over timesteps, as Diff-Pruning accumulates it): the unit's gate gradient of
  the denoiser output, E_v |d<v, f(x_t)>/dg|^2 with random v, summed over the calibration
  reservoir's calls of every timestep bucket. It estimates how much the output moves when the
  unit is removed; a float model's own denoising loss has no gradient to rank by.

Weight-based scores (magnitude, activation) are compared across groups after dividing by the
group's mean (`normalized`); taylor scores measure the same quantity (output change) everywhere and
are compared as they are.
"""
from __future__ import annotations

import torch
from torch import nn

from ..calibration import ActStats, CalibrationSet
from ..compression.sensitivity.output_metric import output_tensor
from ..errors import InputError
from .gates import GateSite
from .training import frozen_weights
from .units import PruneGroup


def _unit_rows(weight: torch.Tensor, group: PruneGroup, offset: int) -> torch.Tensor:
    """(count, width * rest) weights of the group's units in a producer (rows from offset)."""
    rows = weight.detach()[offset:offset + group.count * group.width].float()
    return rows.reshape(group.count, -1)


def _unit_columns(weight: torch.Tensor, group: PruneGroup, offset: int) -> torch.Tensor:
    columns = weight.detach()[:, offset:offset + group.count * group.width].float()
    return columns.transpose(0, 1).reshape(group.count, -1)


def magnitude_scores(model: nn.Module, groups: list[PruneGroup]) -> list[torch.Tensor]:
    scores = []
    for group in groups:
        squares = torch.zeros(group.count)
        for segment in group.producers:
            squares += _unit_rows(model.get_submodule(segment.module).weight, group, segment.offset).square().sum(1)
        for segment in group.consumers:
            squares += _unit_columns(model.get_submodule(segment.module).weight, group, segment.offset).square().sum(1)
        scores.append((squares / group.params_per_unit).sqrt())
    return scores


def activation_scores(model: nn.Module, groups: list[PruneGroup], calibration: CalibrationSet) -> list[torch.Tensor]:
    return _activation_scores(model, groups, lambda fqn: calibration.merged_over_buckets(fqn).channel_rms)


@torch.no_grad()
def activation_scores_on(model: nn.Module, groups: list[PruneGroup], calls) -> list[torch.Tensor]:
    """The activation scores with each consumer's input RMS measured over `calls` (zero-argument callables that
    each run one denoiser call of `model`) instead of read from calibration statistics."""
    stats: dict[str, ActStats] = {}

    def recorder(fqn: str):
        def hook(module, args):
            seen = ActStats.from_input(args[0], 1 if isinstance(module, nn.Conv2d) else -1).cpu()
            stats[fqn] = stats[fqn].merge(seen) if fqn in stats else seen

        return hook

    consumers = sorted({s.module for g in groups for s in g.consumers})
    handles = [model.get_submodule(fqn).register_forward_pre_hook(recorder(fqn)) for fqn in consumers]
    try:
        for call in calls:
            call()
    finally:
        for handle in handles:
            handle.remove()
    missing = [fqn for fqn in consumers if fqn not in stats]
    if missing:
        raise InputError(f"activation scores: {missing[0]} saw no input in {len(calls)} denoiser calls", "calls")
    return _activation_scores(model, groups, lambda fqn: stats[fqn].channel_rms)


def _activation_scores(model: nn.Module, groups: list[PruneGroup], input_rms) -> list[torch.Tensor]:
    """Per unit: the sum over its consumer columns of input RMS (`input_rms(fqn)`: one value per input column)
    times the column's weight norm."""
    scores = []
    for group in groups:
        total = torch.zeros(group.count)
        for segment in group.consumers:
            weight = model.get_submodule(segment.module).weight.detach().float()
            rms = input_rms(segment.module).float()
            columns = slice(segment.offset, segment.offset + group.count * group.width)
            per_column = rms[columns] * weight[:, columns].transpose(0, 1).reshape(group.count * group.width, -1).norm(dim=1)
            total += per_column.reshape(group.count, group.width).sum(1)
        scores.append(total)
    return scores


def taylor_scores(model: nn.Module, groups: list[PruneGroup], calibration: CalibrationSet, per_bucket: int = 2,
                  probes: int = 2, seed: int = 0) -> list[torch.Tensor]:
    calls = [lambda entry=entry: model(**entry.call_kwargs()) for entry in calibration.entries(per_bucket)]
    return taylor_scores_on(model, groups, calls, probes, seed)


def taylor_scores_on(model: nn.Module, groups: list[PruneGroup], calls, probes: int = 2,
                     seed: int = 0) -> list[torch.Tensor]:
    """The taylor scores over `calls`: zero-argument callables that each run one denoiser call of `model`."""
    generator = torch.Generator().manual_seed(seed)
    gates = [torch.ones(g.count, requires_grad=True) for g in groups]
    scores = [torch.zeros(g.count) for g in groups]
    with frozen_weights(model), GateSite(model, groups) as site:
        for call in calls:
            site.set(gates)
            with torch.enable_grad():
                output = output_tensor(call()).float()
                for _ in range(probes):
                    direction = torch.randn(output.shape, generator=generator).to(output)
                    grads = torch.autograd.grad((output * direction).sum(), gates, retain_graph=True)
                    for score, grad in zip(scores, grads):
                        score += grad.detach().float().square()
    return scores


def random_scores(groups: list[PruneGroup], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(g.count, generator=generator) for g in groups]


def normalized(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each group's scores over the group's mean, so groups of different scale compare."""
    return [s / s.mean().clamp_min(1e-30) for s in scores]
