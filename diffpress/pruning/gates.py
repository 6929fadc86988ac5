"""Gates on prunable units: one logit per unit, a gate value in [0, 1] multiplying the unit's consumer columns.

A gate acts as a forward pre-hook on the consumer layer (to_out[0], to_add_out, the FFN output
Linear, a single-stream block's proj_out, a ResNet's conv2): it scales the input columns the unit
owns, so nothing is computed twice, and gate 0 is exactly the unit removed.

Parameterisations (`GateKind`):
- hard_concrete (Louizos et al. L0): s = sigmoid((log u - log(1 - u) + logit) / beta), stretched to
  (gamma, zeta) = (-0.1, 1.1) and clamped to [0, 1], with temperature beta = 0.83 (EcoDiff's).
  Deterministic (eval) value: clamp(sigmoid(logit) * (zeta - gamma) + gamma, 0, 1). The
  probability that a gate is non-zero, P(open), is what the budget penalty counts.
- sigmoid: s = sigmoid(logit); P(open) = s.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping

import torch
from torch import nn

from ..prune_stage import GateKind, Scope
from .select import PruneBudget, select
from .units import PruneGroup

GAMMA, ZETA = -0.1, 1.1


class Gates(nn.Module):
    """Logits for every group's units, and their sampled or deterministic gate values."""

    def __init__(self, groups: list[PruneGroup], kind: GateKind = GateKind.HARD_CONCRETE, init: float = 3.0,
                 temperature: float = 0.83) -> None:
        super().__init__()
        self.groups = groups
        self.kind = GateKind(kind)
        self.temperature = temperature
        self.logits = nn.ParameterList([nn.Parameter(torch.full((g.count,), float(init))) for g in groups])

    def sample(self, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Stochastic gate values (training)."""
        if self.kind is GateKind.SIGMOID:
            return [torch.sigmoid(logit) for logit in self.logits]
        values = []
        for logit in self.logits:
            u = torch.rand(logit.shape, generator=generator).clamp(1e-6, 1 - 1e-6).to(logit)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logit) / self.temperature)
            values.append((s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0))
        return values

    def deterministic(self) -> list[torch.Tensor]:
        if self.kind is GateKind.SIGMOID:
            return [torch.sigmoid(logit) for logit in self.logits]
        return [(torch.sigmoid(logit) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0) for logit in self.logits]

    def open_probability(self) -> list[torch.Tensor]:
        if self.kind is GateKind.SIGMOID:
            return [torch.sigmoid(logit) for logit in self.logits]
        shift = self.temperature * math.log(-GAMMA / ZETA)
        return [torch.sigmoid(logit - shift) for logit in self.logits]

    def expected_kept(self, cost: str = "params") -> torch.Tensor:
        """Expected parameters (or MACs) of the gated units that stay."""
        attribute = "params_per_unit" if cost == "params" else "macs_per_unit"
        return sum((p * getattr(g, attribute)).sum() for p, g in zip(self.open_probability(), self.groups))

    def sample_at_budget(self, generator: torch.Generator, budget: PruneBudget, total: float, temperature: float,
                         scope: Scope = Scope.GLOBAL) -> list[torch.Tensor]:
        """Hard 0/1 gates at `budget` (a fraction of `total`, the whole denoiser's parameters or MACs), with a
        straight-through gradient: the final cut (`select.select`, with its scope and each group's floor of
        kept units) applied to the keys logit + temperature * Gumbel noise; the gradient is that of
        sigmoid((key - threshold) / temperature), the threshold halfway between the highest dropped key and the
        lowest kept key above it, model-wide (global scope) or per group (per layer)."""
        keys = []
        for logit in self.logits:
            uniform = torch.rand(logit.shape, generator=generator).clamp(1e-9, 1 - 1e-9).to(logit)
            keys.append(logit + temperature * -torch.log(-torch.log(uniform)))
        kept = select(self.groups, [key.detach() for key in keys], total, budget, scope)
        hard = [torch.zeros_like(key) for key in keys]
        for values, indices in zip(hard, kept):
            values[indices] = 1.0
        if Scope(scope) is Scope.PER_LAYER:
            thresholds = [_boundary(key.detach(), values) for key, values in zip(keys, hard)]
        else:
            thresholds = [_boundary(torch.cat(keys).detach(), torch.cat(hard))] * len(keys)
        return [values + (soft - soft.detach())  # exactly 0 or 1 forward
                for values, soft in ((values, torch.sigmoid((key - threshold) / temperature))
                                     for values, key, threshold in zip(hard, keys, thresholds))]

    @torch.no_grad()
    def project(self, allowed: float, cost: str = "params") -> float:
        """Shift every logit by one constant so that the expected kept parameters (or MACs) of the gated units
        equal `allowed` (clamped to what is reachable); returns the shift. Bisection: the expectation is
        monotone in the shift."""
        low, high = -64.0, 64.0
        saved = [logit.detach().clone() for logit in self.logits]

        def kept(shift: float) -> float:
            for logit, original in zip(self.logits, saved):
                logit.copy_(original + shift)
            return float(self.expected_kept(cost))

        for _ in range(60):
            middle = (low + high) / 2
            if kept(middle) > allowed:
                high = middle
            else:
                low = middle
        kept(low)
        return low


def column_masks(model: nn.Module, groups: list[PruneGroup], values: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """consumer fqn -> the multiplier of each of its input columns (1 where no unit is gated)."""
    masks: dict[str, torch.Tensor] = {}
    for group, value in zip(groups, values):
        per_column = value.repeat_interleave(group.width)
        for segment in group.consumers:
            if segment.module not in masks:
                layer = model.get_submodule(segment.module)
                columns = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
                masks[segment.module] = torch.ones(columns, dtype=value.dtype, device=value.device)
            mask = masks[segment.module]
            end = segment.offset + per_column.numel()
            masks[segment.module] = torch.cat([mask[:segment.offset], per_column, mask[end:]])
    return masks


def _scale_columns(mask: torch.Tensor):
    def hook(module, args, kwargs):
        hidden = args[0]
        shape = (-1,) if isinstance(module, nn.Linear) else (1, -1, 1, 1)
        return (hidden * mask.to(device=hidden.device, dtype=hidden.dtype).reshape(shape), *args[1:]), kwargs

    return hook


@contextlib.contextmanager
def gated(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block, every consumer layer of `masks` scales its input columns by its mask."""
    handles = [model.get_submodule(fqn).register_forward_pre_hook(_scale_columns(mask), with_kwargs=True)
               for fqn, mask in masks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class GateSite:
    """Gates installed once; `set(values)` changes what the hooks multiply by (for mask learning, where new gate
    values are sampled for every trajectory)."""

    def __init__(self, model: nn.Module, groups: list[PruneGroup]) -> None:
        self.model, self.groups = model, groups
        self.masks: dict[str, torch.Tensor] = {}
        self._handles = []
        consumers = {s.module for g in groups for s in g.consumers}
        for fqn in sorted(consumers):
            self._handles.append(model.get_submodule(fqn).register_forward_pre_hook(self._hook(fqn),
                                                                                    with_kwargs=True))

    def _hook(self, fqn: str):
        def hook(module, args, kwargs):
            mask = self.masks.get(fqn)
            if mask is None:
                return None
            return _scale_columns(mask)(module, args, kwargs)

        return hook

    def set(self, values: list[torch.Tensor] | None) -> None:
        self.masks = {} if values is None else column_masks(self.model, self.groups, values)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.masks = {}

    def __enter__(self) -> "GateSite":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _boundary(keys: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """The straight-through threshold of one selection: halfway between the highest dropped key and the lowest
    kept key above it (units kept below it are a group's floor); below every key when nothing is dropped, above
    every key when nothing is kept above the dropped ones."""
    dropped = keys[hard == 0]
    if dropped.numel() == 0:
        return keys.min() - 1.0
    highest = dropped.max()
    above = keys[(hard == 1) & (keys > highest)]
    return (highest + above.min()) / 2 if above.numel() else keys.max() + 1.0
