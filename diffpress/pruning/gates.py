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

from ..prune_stage import GateKind
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

    def sample_at_budget(self, generator: torch.Generator, allowed: float, cost: str, temperature: float
                         ) -> list[torch.Tensor]:
        """Hard 0/1 gates at the budget, with a straight-through gradient: the units of highest
        key = logit + temperature * Gumbel noise are kept while their summed parameters (or MACs) fit `allowed`
        (the final cut's global selection on noisy logits, without its one-head / one-group floor per group
        and its per-layer scope); the gradient is that of
        sigmoid((key - threshold) / temperature), the threshold halfway between the last kept and the first
        dropped key."""
        attribute = "params_per_unit" if cost == "params" else "macs_per_unit"
        logits = torch.cat(list(self.logits))
        costs = torch.cat([torch.full((g.count,), float(getattr(g, attribute))) for g in self.groups])
        uniform = torch.rand(logits.shape, generator=generator).clamp(1e-9, 1 - 1e-9).to(logits)
        keys = logits + temperature * -torch.log(-torch.log(uniform))
        order = keys.detach().argsort(descending=True)
        fits = costs[order].cumsum(0) <= allowed * (1 + 1e-9)
        hard = torch.zeros_like(keys)
        hard[order[fits]] = 1.0
        kept_count = int(fits.sum())
        if 0 < kept_count < len(order):
            threshold = (keys[order[kept_count - 1]] + keys[order[kept_count]]).detach() / 2
        else:
            threshold = keys.detach().min() - 1.0 if kept_count else keys.detach().max() + 1.0
        soft = torch.sigmoid((keys - threshold) / temperature)
        values = hard + (soft - soft.detach())  # exactly 0 or 1 forward
        return list(values.split([g.count for g in self.groups]))

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
