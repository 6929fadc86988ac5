"""A quantized layer as tensors plus a JSON entry, and back: the layer plan that config.json stores per
layer, the empty module a loader fills, and the per-layer records of resumable quantization."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, IntegrityError
from ..recipe import QuantSpec
from .modules import OPTIONAL_BUFFERS
from .surgery import kind_of, replacement_by_kind


def layer_entry(module: nn.Module) -> dict:
    """The JSON plan of one quantized layer: {"module": linear|conv2d, "layout", **QuantSpec, act_split}."""
    entry = {"module": kind_of(module), "layout": module.packed.layout.value, **module.spec.to_dict()}
    if module.act_split:
        entry["act_split"] = module.act_split
    return entry


def shell_for(float_module: nn.Module, fqn: str, entry: dict, optional: dict[str, tuple[tuple, torch.dtype]],
              directory: Path) -> nn.Module:
    """An empty compressed module for `float_module` from its layer-plan entry, with meta placeholders for
    the `optional` buffers (name -> (shape, dtype))."""
    entry = dict(entry)
    kind = entry.pop("module", None)
    entry.pop("layout", None)
    act_split = entry.pop("act_split", None)
    try:
        spec = QuantSpec.from_dict(entry)
    except (InputError, TypeError) as error:
        raise IntegrityError(f"{directory}: quantization_config layer {fqn!r}: {error}") from None
    shell = replacement_by_kind(kind).compressed_class.empty_like(float_module, spec)
    shell.fqn, shell.act_split = fqn, act_split
    for name, (shape, dtype) in optional.items():
        shell.set_optional(name, torch.empty(shape, dtype=dtype, device="meta"))
    return shell


def layer_record(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """One quantized layer as (tensors, JSON): what `restore_layer` rebuilds it from (resume checkpoints)."""
    return dict(module.state_dict()), layer_entry(module)


def restore_layer(float_module: nn.Module, fqn: str, tensors: dict[str, torch.Tensor], entry: dict,
                  directory: Path) -> nn.Module:
    """The quantized layer `layer_record` described, bit-identical, on `float_module`'s device."""
    optional = {name: (tuple(tensors[name].shape), tensors[name].dtype) for name in OPTIONAL_BUFFERS
                if name in tensors}
    shell = shell_for(float_module, fqn, entry, optional, directory)
    expected = shell.state_dict()
    if set(expected) != set(tensors) or any(tuple(expected[k].shape) != tuple(t.shape) for k, t in tensors.items()):
        raise IntegrityError(f"{directory}: the checkpoint of layer {fqn!r} does not match the layer; "
                             "rerun without --resume")
    device = next(float_module.parameters()).device
    shell.load_state_dict({k: t.to(device) for k, t in tensors.items()}, strict=True, assign=True)
    return shell
