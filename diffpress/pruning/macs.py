"""Multiply-accumulates per denoiser call, counted from one real call.

Every Linear and Conv2d records how many output positions it computed per sample (tokens, or
output pixels); an attention module's core (QK^T and AV) costs 2 * query tokens * key tokens *
head_dim per head. From those, `attach_macs` gives each prunable unit its MACs and
`count_macs` the model's total, so a budget can be set in MACs as well as in parameters.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from .units import PruneGroup, _is_attention


def _positions(layer: nn.Module, inputs: tuple, output: torch.Tensor, batch: int) -> float:
    """Output positions per sample (tokens or pixels); from the input for a layer left with no outputs (a fully
    pruned feed-forward's first projection)."""
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if channels:
        return output.numel() / channels / max(batch, 1)
    width = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    return inputs[0].numel() / max(width, 1) / max(batch, 1) if inputs and width else 0.0


def _batch_size(args: tuple, kwargs: dict) -> int:
    """The call's batch: the leading size of its sample (the first positional tensor, else hidden_states or
    sample, else the first tensor keyword)."""
    candidates = [a for a in args if isinstance(a, torch.Tensor)]
    candidates += [kwargs[k] for k in ("hidden_states", "sample") if isinstance(kwargs.get(k), torch.Tensor)]
    candidates += [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
    sample = next((c for c in candidates if c.ndim), None)
    return int(sample.shape[0]) if sample is not None else 1


@contextlib.contextmanager
def _recording(model: nn.Module, positions: dict[str, float]):
    batch = {"size": 1}
    handles = []

    def top(module, args, kwargs):
        batch["size"] = _batch_size(args, kwargs)

    def layer_hook(fqn):
        def hook(module, args, output):
            if fqn not in positions:
                positions[fqn] = _positions(module, args, output, batch["size"])

        return hook

    handles.append(model.register_forward_pre_hook(top, with_kwargs=True))
    for fqn, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            handles.append(module.register_forward_hook(layer_hook(fqn)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def record_positions(model: nn.Module, one_call: Callable[[nn.Module], object]) -> dict[str, float]:
    """fqn -> output positions per sample of every Linear/Conv2d, from `one_call(model)` (its first call of each)."""
    positions: dict[str, float] = {}
    with _recording(model, positions), torch.no_grad():
        one_call(model)
    return positions


def _tokens(attention_fqn: str, names: tuple[str, ...], positions: dict[str, float]) -> float:
    return sum(positions.get(f"{attention_fqn}.{name}", 0.0) for name in names)


def attention_core_macs_per_channel(fqn: str, positions: dict[str, float]) -> float:
    """MACs of QK^T and AV per channel of head_dim (x inner channels gives the whole core)."""
    queries = _tokens(fqn, ("to_q", "add_q_proj"), positions)
    keys = _tokens(fqn, ("to_k", "add_k_proj"), positions)
    return 2.0 * queries * keys


def count_macs(model: nn.Module, positions: dict[str, float], under: str = "") -> float:
    """MACs per call and sample of `model` (or of its submodule `under`)."""
    total = 0.0
    for fqn, module in model.named_modules():
        if under and not fqn.startswith(under + "."):
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)) and fqn in positions:
            total += module.weight.numel() * positions[fqn]
        elif _is_attention(module):
            total += attention_core_macs_per_channel(fqn, positions) * module.to_q.out_features
    return total


def attach_macs(model: nn.Module, groups: list[PruneGroup], positions: dict[str, float]) -> None:
    """Set each group's macs_per_unit from the recorded positions."""
    for group in groups:
        macs = 0.0
        for segment in group.producers:
            layer = model.get_submodule(segment.module)
            macs += group.width * layer.weight[0].numel() * positions.get(segment.module, 0.0)
        for segment in group.consumers:
            layer = model.get_submodule(segment.module)
            columns = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
            macs += group.width * layer.weight.numel() / columns * positions.get(segment.module, 0.0)
        if group.attention is not None:
            macs += group.width * attention_core_macs_per_channel(group.attention, positions)
        group.macs_per_unit = macs
