"""Module surgery: which float modules have a compressed replacement, and how modules are swapped.

The one place that knows the float class -> compressed class table (`REPLACEMENTS`, as
optimum-quanto's module table does), replaces a submodule by name (`replace_module`) and swaps
modules for the length of a block (`swapped`). Quantization puts QuantLinear/QuantConv2d in place
of nn.Linear/nn.Conv2d through it; the loader puts empty shells in by the kind recorded on disk;
sensitivity and block reconstruction swap and restore through `swapped`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

from torch import nn

from ..errors import IntegrityError
from .modules import QuantConv2d, QuantLinear


@dataclass(frozen=True)
class Replacement:
    """One row of the table: float modules of `float_class` become `compressed_class` modules.

    kind: the name the on-disk layer plan records. unsupported(module): why this particular module
    cannot be replaced (None: it can); such modules stay float and say why.
    """

    kind: str
    float_class: type[nn.Module]
    compressed_class: type[nn.Module]
    unsupported: Callable[[nn.Module], str | None] = lambda module: None


def _conv_unsupported(conv: nn.Conv2d) -> str | None:
    return None if conv.padding_mode == "zeros" else f"padding_mode {conv.padding_mode!r} (only 'zeros' is supported)"


REPLACEMENTS: tuple[Replacement, ...] = (
    Replacement("linear", nn.Linear, QuantLinear),
    Replacement("conv2d", nn.Conv2d, QuantConv2d, _conv_unsupported),
)
COMPRESSED_CLASSES = tuple(r.compressed_class for r in REPLACEMENTS)


def replacement_for(module: nn.Module) -> Replacement | None:
    """The table row for a float module (subclasses included), None if it has none or is compressed."""
    if isinstance(module, COMPRESSED_CLASSES):
        return None
    return next((r for r in REPLACEMENTS if isinstance(module, r.float_class)), None)


def replacement_by_kind(kind: str) -> Replacement:
    for row in REPLACEMENTS:
        if row.kind == kind:
            return row
    raise IntegrityError(f"unknown module kind {kind!r} in a layer plan; known: "
                         f"{', '.join(r.kind for r in REPLACEMENTS)}")


def kind_of(compressed: nn.Module) -> str:
    """The on-disk kind of a compressed module."""
    return next(r.kind for r in REPLACEMENTS if isinstance(compressed, r.compressed_class))


def compressible_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(fqn, module) of every float module that has a replacement, in module order (zero-width layers of a fully
    pruned feed-forward hold no weights and are not listed)."""
    for name, module in model.named_modules():
        if replacement_for(module) is not None and module.weight.numel():
            yield name, module


def compressed_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(fqn, module) of every compressed module, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, COMPRESSED_CLASSES):
            yield name, module


def unsupported_reason(module: nn.Module) -> str | None:
    row = replacement_for(module)
    return row.unsupported(module) if row is not None else None


def replace_module(model: nn.Module, fqn: str, new: nn.Module) -> nn.Module:
    """Put `new` at `fqn` (a dotted path below `model`); return the module that was there."""
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


@contextlib.contextmanager
def swapped(model: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[nn.Module]:
    """Inside the block, each `fqn` of `replacements` holds its new module; the old ones are put back
    on exit, also when the block raises."""
    originals: dict[str, nn.Module] = {}
    try:
        for fqn, new in replacements.items():
            originals[fqn] = replace_module(model, fqn, new)
        yield model
    finally:
        for fqn, old in reversed(list(originals.items())):
            replace_module(model, fqn, old)


def compressed_module(module: nn.Module, spec, packed=None) -> nn.Module:
    """`module`'s compressed replacement under plan `spec`: holding `packed` (quantized elsewhere), or the
    weight quantized with nearest rounding when `packed` is None."""
    row = replacement_for(module)
    if row is None:
        raise TypeError(f"{type(module).__name__} has no compressed replacement")
    cls = row.compressed_class
    return cls.from_float(module, spec) if packed is None else cls.from_packed(module, spec, packed)
