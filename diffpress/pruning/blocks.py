"""Removable blocks of a diffusers denoiser (depth pruning), found from structure, not names.

A block is an entry of an `nn.ModuleList` whose entries are all of one class, that holds
parameters and, on a real denoiser call, returns a tensor of the same shape as one of its inputs:
transformer blocks (FLUX double- and single-stream, SD3 joint, PixArt/DiT), UNet ResNets that keep
their channels and resolution, UNet spatial transformers and attention blocks. Blocks nested in
another block count only as part of it.

A removed block becomes a `PassThrough`: it returns, in the block's own container, the inputs the
block's outputs are residual updates of. Which input each output passes is found by probing one
call: each output is matched to the same-shape input it is most similar to (cosine), so

- FLUX double/single-stream and SD3 joint blocks (return `(encoder_hidden_states, hidden_states)`)
  pass both streams through; an SD3 last block (`context_pre_only`, returns `(None, hidden)`) keeps
  its `None`;
- PixArt/DiT `BasicTransformerBlock`, UNet ResNets and UNet attention blocks return `hidden_states`
  (a ResNet: `input_tensor`);
- UNet spatial transformers (`Transformer2DModel`, called with `return_dict=False`) return
  `(hidden_states,)`.

The record `{"parameters": [...], "returns": [...], "container": ...}` is saved in the
checkpoint's structure, so loading rebuilds the pass-through without a probe.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..compression.surgery import replace_module
from ..errors import IntegrityError

TENSOR, TUPLE = "tensor", "tuple"


class PassThrough(nn.Module):
    """What a removed block leaves: its residual inputs, returned the way the block returned its outputs."""

    def __init__(self, parameters: list[str], returns: list[str | None], container: str) -> None:
        super().__init__()
        self.parameters_in_order, self.returns, self.container = list(parameters), list(returns), container

    def forward(self, *args, **kwargs):
        bound = dict(zip(self.parameters_in_order, args))
        bound.update(kwargs)
        outputs = [bound.get(name) if name is not None else None for name in self.returns]
        if self.container == TENSOR:
            return outputs[0]
        if self.container == TUPLE:
            return tuple(outputs)
        return _output_class(self.container)(*outputs)

    def record(self) -> dict:
        return {"parameters": self.parameters_in_order, "returns": self.returns, "container": self.container}

    def extra_repr(self) -> str:
        return f"returns={self.returns}, container={self.container}"


def _output_class(path: str):
    module, _, name = path.partition(":")
    found = None
    if module.startswith("diffusers.") and name.isidentifier():
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            found = None
    if not (isinstance(found, type) and dataclasses.is_dataclass(found)):
        raise IntegrityError(f"a removed block's output class {path!r} is not a diffusers output")
    return found


@dataclass
class Block:
    name: str  # fqn
    kind: str  # the block's class name
    params: int
    parameters: list[str]  # the forward's parameter names, in order
    returns: list[str | None]  # the input each output passes through when the block is removed
    container: str
    macs: float = 0.0  # per denoiser call and sample, once measured
    seconds: float = 0.0  # measured CPU time of one call, once measured

    def pass_through(self) -> PassThrough:
        return PassThrough(self.parameters, self.returns, self.container)


def _parameter_names(module: nn.Module) -> list[str]:
    names = []
    for name, parameter in inspect.signature(module.forward).parameters.items():
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            names.append(name)
    return names


def _candidates(model: nn.Module) -> list[str]:
    found = []
    for fqn, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not len(module):
            continue
        kinds = {type(entry) for entry in module}
        if len(kinds) != 1 or not any(True for _ in module[0].parameters()):
            continue
        found.extend(f"{fqn}.{index}" if fqn else str(index) for index in range(len(module)))
    outermost = []
    for fqn in sorted(found, key=lambda name: name.count(".")):
        if not any(fqn.startswith(parent + ".") for parent in outermost):
            outermost.append(fqn)
    order = {fqn: index for index, (fqn, _) in enumerate(model.named_modules())}
    return sorted(outermost, key=order.__getitem__)


def _outputs(output) -> tuple[list, str] | None:
    """The output's top-level entries and container kind, or None when it is not a flat tensor structure."""
    if isinstance(output, torch.Tensor):
        return [output], TENSOR
    if isinstance(output, tuple) and all(o is None or isinstance(o, torch.Tensor) for o in output):
        return list(output), TUPLE
    if dataclasses.is_dataclass(output) and type(output).__module__.startswith("diffusers."):
        values = [getattr(output, f.name) for f in dataclasses.fields(output)]
        if all(v is None or isinstance(v, torch.Tensor) for v in values):
            return values, f"{type(output).__module__}:{type(output).__name__}"
    return None


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().reshape(-1), b.detach().float().reshape(-1)
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-30))


def _residual_inputs(names: list[str], args: tuple, kwargs: dict, outputs: list) -> list[str | None] | None:
    bound = dict(zip(names, args))
    bound.update(kwargs)
    tensors = {name: value for name, value in bound.items() if isinstance(value, torch.Tensor)}
    returns = []
    for output in outputs:
        if output is None:
            returns.append(None)
            continue
        same = [name for name, value in tensors.items() if value.shape == output.shape]
        if not same:
            return None
        returns.append(max(same, key=lambda name: _cosine(tensors[name], output)))
    return returns


@contextlib.contextmanager
def _probing(model: nn.Module, fqns: list[str], seen: dict):
    handles = []

    def hook(fqn):
        def record(module, args, kwargs, output):
            seen.setdefault(fqn, (args, kwargs, output))

        return record

    for fqn in fqns:
        handles.append(model.get_submodule(fqn).register_forward_hook(hook(fqn), with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def find_blocks(model: nn.Module, one_call: Callable[[nn.Module], object]) -> list[Block]:
    """The removable blocks of `model`, in module order, probed with `one_call(model)` (one denoiser call)."""
    fqns = _candidates(model)
    seen: dict = {}
    with _probing(model, fqns, seen), torch.no_grad():
        one_call(model)
    blocks = []
    for fqn in fqns:
        if fqn not in seen:
            continue  # not called: nothing to remove
        module = model.get_submodule(fqn)
        args, kwargs, output = seen[fqn]
        flat = _outputs(output)
        if flat is None:
            continue
        names = _parameter_names(module)
        returns = _residual_inputs(names, args, kwargs, flat[0])
        if returns is None or all(name is None for name in returns):
            continue
        blocks.append(Block(fqn, type(module).__name__, sum(p.numel() for p in module.parameters()), names,
                            returns, flat[1]))
    return blocks


def remove_blocks(model: nn.Module, blocks: list[Block]) -> dict:
    """Replace each of `blocks` by its pass-through, in place; return the structure's `removed` record."""
    removed = {}
    for block in blocks:
        passing = block.pass_through()
        replace_module(model, block.name, passing)
        removed[block.name] = {"kind": block.kind, **passing.record()}
    return removed


@contextlib.contextmanager
def without(model: nn.Module, blocks: list[Block]):
    """Inside the block, `blocks` are pass-throughs; the originals are put back on exit."""
    originals = {}
    try:
        for block in blocks:
            originals[block.name] = replace_module(model, block.name, block.pass_through())
        yield
    finally:
        for name, original in originals.items():
            replace_module(model, name, original)


def apply_removed(model: nn.Module, removed: dict, where: str = "checkpoint") -> None:
    """Replace the blocks named in a saved `removed` record by their pass-throughs (usually on a meta skeleton)."""
    for fqn, entry in removed.items():
        if not fqn:
            raise IntegrityError(f"{where}: the pruning structure removes the whole model")
        try:
            module = model.get_submodule(fqn)
        except (AttributeError, TypeError):
            raise IntegrityError(f"{where}: the pruning structure removes {fqn!r}, which this model does not have") \
                from None
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if kind != type(module).__name__:
            raise IntegrityError(f"{where}: the pruning structure removes {fqn!r} as a {kind!r} "
                                 f"but the model has a {type(module).__name__} there")
        parameters, returns, container = entry.get("parameters"), entry.get("returns"), entry.get("container")
        if not (isinstance(parameters, list) and all(isinstance(p, str) for p in parameters)
                and isinstance(returns, list) and returns and all(r is None or r in parameters for r in returns)
                and isinstance(container, str)):
            raise IntegrityError(f"{where}: the pruning structure's record of removed block {fqn!r} is malformed")
        if container not in (TENSOR, TUPLE):
            _output_class(container)
        replace_module(model, fqn, PassThrough(parameters, returns, container))
