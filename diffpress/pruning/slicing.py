"""Materialization: remove pruned units physically, leaving smaller standard modules.

Producer layers lose the units' output rows (weight and bias), consumer layers their input columns,
a ResNet's norm2 whole groups; attention modules get their new head count. The result computes
exactly what the model computed with those units' gates at 0 (up to float summation order).

The same code reshapes an empty skeleton on the meta device at load time (`apply_structure`), from
the structure record saved in the checkpoint: group name -> units kept.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..compression.surgery import replace_module
from ..errors import IntegrityError
from .units import PruneGroup, find_groups

STRUCTURE_VERSION = 1  # groups only
BLOCKS_VERSION = 2  # groups and removed blocks


def _unit_indices(units: torch.Tensor, width: int, offset: int) -> torch.Tensor:
    return (offset + units[:, None] * width + torch.arange(width, device="cpu")[None, :]).reshape(-1)


def _dropped(groups: list[PruneGroup], kept: list[torch.Tensor]) -> tuple[dict, dict]:
    """module fqn -> dropped output rows; module fqn -> dropped input columns."""
    rows: dict[str, list[torch.Tensor]] = {}
    columns: dict[str, list[torch.Tensor]] = {}
    for group, keep in zip(groups, kept):
        mask = torch.ones(group.count, dtype=torch.bool, device="cpu")
        mask[keep.cpu()] = False
        dropped = mask.nonzero().reshape(-1)
        if not dropped.numel():
            continue
        for segment in group.producers:
            rows.setdefault(segment.module, []).append(_unit_indices(dropped, group.width, segment.offset))
        for segment in group.consumers:
            columns.setdefault(segment.module, []).append(_unit_indices(dropped, group.width, segment.offset))
        if group.norm is not None:
            rows.setdefault(group.norm, []).append(_unit_indices(dropped, group.width, 0))
    return rows, columns


def _keep(size: int, dropped: list[torch.Tensor] | None) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool, device="cpu")
    if dropped:
        mask[torch.cat(dropped)] = False
    return mask.nonzero().reshape(-1)


def _take(new: nn.Module, layer: nn.Module, rows: torch.Tensor, columns: torch.Tensor) -> nn.Module:
    """`new` (already of the right shape) gets `layer`'s weight rows x columns and bias rows."""
    new.weight = nn.Parameter(layer.weight.detach()[rows][:, columns].contiguous(),
                              requires_grad=layer.weight.requires_grad)
    if layer.bias is not None:
        new.bias = nn.Parameter(layer.bias.detach()[rows].contiguous(), requires_grad=layer.bias.requires_grad)
    return new


def _sliced_linear(layer: nn.Linear, rows: torch.Tensor, columns: torch.Tensor) -> nn.Linear:
    return _take(nn.Linear(columns.numel(), rows.numel(), bias=layer.bias is not None, device=layer.weight.device,
                           dtype=layer.weight.dtype), layer, rows, columns)


def _sliced_conv(layer: nn.Conv2d, rows: torch.Tensor, columns: torch.Tensor) -> nn.Conv2d:
    return _take(nn.Conv2d(columns.numel(), rows.numel(), layer.kernel_size, layer.stride, layer.padding,
                           layer.dilation, bias=layer.bias is not None, padding_mode=layer.padding_mode,
                           device=layer.weight.device, dtype=layer.weight.dtype), layer, rows, columns)


def _sliced_group_norm(norm: nn.GroupNorm, channels: torch.Tensor) -> nn.GroupNorm:
    width = norm.num_channels // norm.num_groups
    new = nn.GroupNorm(channels.numel() // width, channels.numel(), norm.eps, norm.affine,
                       device=norm.weight.device if norm.affine else None,
                       dtype=norm.weight.dtype if norm.affine else None)
    if norm.affine:
        new.weight = nn.Parameter(norm.weight.detach()[channels].contiguous(), requires_grad=norm.weight.requires_grad)
        new.bias = nn.Parameter(norm.bias.detach()[channels].contiguous(), requires_grad=norm.bias.requires_grad)
    return new


def _slice_module(model: nn.Module, fqn: str, rows: list | None, columns: list | None) -> None:
    layer = model.get_submodule(fqn)
    if isinstance(layer, nn.GroupNorm):
        replace_module(model, fqn, _sliced_group_norm(layer, _keep(layer.num_channels, rows)))
    elif isinstance(layer, nn.Linear):
        replace_module(model, fqn, _sliced_linear(layer, _keep(layer.out_features, rows),
                                                  _keep(layer.in_features, columns)))
    elif isinstance(layer, nn.Conv2d):
        replace_module(model, fqn, _sliced_conv(layer, _keep(layer.out_channels, rows),
                                                _keep(layer.in_channels, columns)))
    else:
        raise TypeError(f"{fqn}: cannot slice a {type(layer).__name__}")


def _update_attributes(model: nn.Module, group: PruneGroup, kept: int) -> None:
    if group.attention is not None:
        attention = model.get_submodule(group.attention)
        inner = kept * group.width
        for name in ("inner_dim", "inner_kv_dim"):
            if getattr(attention, name, None) == group.count * group.width:
                setattr(attention, name, inner)
        attention.heads = kept
    if group.name.endswith("proj_mlp"):  # a single-stream block's MLP
        block = model.get_submodule(group.name.rpartition(".")[0]) if "." in group.name else model
        if hasattr(block, "mlp_hidden_dim"):
            block.mlp_hidden_dim = kept
    for segment in group.consumers:  # tensor-parallel column blocks of a concatenated input
        consumer = model.get_submodule(segment.module)
        if hasattr(consumer, "_tp_packed_row_blocks"):
            del consumer._tp_packed_row_blocks


def materialize(model: nn.Module, groups: list[PruneGroup], kept: list[torch.Tensor]) -> dict:
    """Slice `model` in place so that group i keeps the units `kept[i]`; return the structure record."""
    rows, columns = _dropped(groups, kept)
    with warnings.catch_warnings():  # a fully pruned feed-forward has zero-size layers; their init is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        for fqn in sorted(set(rows) | set(columns)):
            _slice_module(model, fqn, rows.get(fqn), columns.get(fqn))
    for group, keep in zip(groups, kept):
        _update_attributes(model, group, int(keep.numel()))
    structure = {"version": STRUCTURE_VERSION,
                 "groups": {g.name: {"kind": g.kind.value, "count": g.count, "kept": int(k.numel())}
                            for g, k in zip(groups, kept) if k.numel() != g.count}}
    model.diffpress_structure = structure
    return structure


def with_removed_blocks(structure: dict, removed: dict) -> dict:
    """The structure record with whole blocks removed as well (`blocks.remove_blocks`' record)."""
    return {**structure, "version": BLOCKS_VERSION, "removed": removed} if removed else structure


def apply_structure(model: nn.Module, structure: dict | None, where: str = "checkpoint") -> None:
    """Reshape a freshly built model (usually on the meta device) to a saved structure record: removed blocks
    become pass-throughs, then groups are sliced."""
    from .blocks import apply_removed

    if not structure:
        return
    if not isinstance(structure, dict) or not isinstance(structure.get("groups", {}), dict) \
            or not isinstance(structure.get("removed", {}), dict):
        raise IntegrityError(f"{where}: the pruning structure is not a mapping of groups and removed blocks")
    if structure.get("version") not in (STRUCTURE_VERSION, BLOCKS_VERSION):
        raise IntegrityError(f"{where}: pruning structure version {structure.get('version')!r} is not "
                             f"{STRUCTURE_VERSION} or {BLOCKS_VERSION}; upgrade diffpress")
    apply_removed(model, structure.get("removed", {}), where)
    record = structure.get("groups", {})
    groups = {g.name: g for g in find_groups(model)}
    unknown = sorted(set(record) - set(groups))
    if unknown:
        raise IntegrityError(f"{where}: the pruning structure names {unknown[0]!r}, which this model has no "
                             "prunable group for")
    chosen, kept = [], []
    for name, entry in record.items():
        group = groups[name]
        if not isinstance(entry, dict) or entry.get("count") != group.count or type(entry.get("kept")) is not int \
                or not 0 <= entry["kept"] <= group.count or (entry["kept"] < group.min_kept):
            raise IntegrityError(f"{where}: pruning structure of {name!r} ({entry}) does not fit the model "
                                 f"({group.count} {group.kind.value}s)")
        chosen.append(group)
        kept.append(torch.arange(int(entry["kept"]), device="cpu"))
    materialize(model, chosen, kept)
    model.diffpress_structure = structure
