"""Real inputs of each layer, captured by replaying calibration-reservoir calls through the float denoiser.

Methods that fit something to a layer (smoothing strength, learned rounding) need samples of what
the layer sees across the trajectory. Replaying the reservoir (calls from every timestep bucket)
with forward pre-hooks gives them: linear inputs as rows (tokens, K), conv inputs as im2col rows
(positions, C*kh*kw) plus the raw NCHW tensors for per-channel work. Rows are subsampled with a
seeded generator to at most `max_rows` per layer.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import CalibrationSet
from ..errors import InputError, require_int


class InputsFrom(str, Enum):
    """Whose outputs a layer's captured inputs are: the float model's, or the model with every layer group
    before it already quantized (errors of earlier layers are then visible to the later layers' fits)."""

    FLOAT = "float"
    QUANTIZED = "quantized"


@dataclass(frozen=True)
class CaptureOptions:
    """How layer inputs are captured for the per-layer methods. Layers are taken block by block (the offload
    units of diffpress.placement) in groups whose captured rows fit in `max_bytes`; each group replays the
    calibration reservoir once. inputs_from: InputsFrom (with `quantized`, a group's layers are put in place
    before the next group is captured)."""

    inputs_from: InputsFrom = InputsFrom.FLOAT
    max_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "inputs_from", InputsFrom(self.inputs_from))
        except ValueError:
            raise InputError(f"inputs_from must be one of {', '.join(m.value for m in InputsFrom)}, got "
                             f"{self.inputs_from!r}", "inputs_from") from None
        require_int(self.max_bytes, "capture max_bytes", 1)


def capture_bytes(module: nn.Module, max_rows: int) -> int:
    """What capturing `max_rows` input rows of this layer holds: rows (M, K) plus channel samples (M, C)."""
    channels = module.weight.shape[1]
    patch = module.kernel_size[0] * module.kernel_size[1] if isinstance(module, nn.Conv2d) else 1
    return max_rows * channels * (patch + 1) * 4


def capture_groups(denoiser: nn.Module, layers: list[str], wanted: set[str], max_rows: int,
                   max_bytes: int) -> list[list[str]]:
    """`layers` (in order) split into groups of whole blocks whose captured inputs fit in `max_bytes` (a block
    larger than that is a group of its own); layers outside every block are blocks of one."""
    from ..placement import offload_units

    units, _ = offload_units(denoiser)
    owner = {}
    names = {id(m): name for name, m in denoiser.named_modules()}
    for unit in units:
        prefix = names[id(unit)] + "."
        for layer in layers:
            if layer.startswith(prefix):
                owner.setdefault(layer, prefix)
    blocks: list[tuple[list[str], int]] = []  # consecutive layers of one block, with their capture bytes
    for layer in layers:
        cost = capture_bytes(denoiser.get_submodule(layer), max_rows) if layer in wanted else 0
        if blocks and owner.get(layer, layer) == owner.get(blocks[-1][0][-1], blocks[-1][0][-1]):
            blocks[-1] = (blocks[-1][0] + [layer], blocks[-1][1] + cost)
        else:
            blocks.append(([layer], cost))
    groups: list[list[str]] = []
    current_bytes = 0
    for block, cost in blocks:
        if not groups or (current_bytes + cost > max_bytes and current_bytes > 0):
            groups.append([])
            current_bytes = 0
        groups[-1].extend(block)
        current_bytes += cost
    return groups


@dataclass
class LayerInputs:
    rows: torch.Tensor  # (M, K): what the layer's matmul sees (im2col rows for convs), float32
    channels: torch.Tensor  # (M', C): inputs per input channel (tokens or pixels), float32

    def to(self, device) -> "LayerInputs":
        return LayerInputs(self.rows.to(device), self.channels.to(device))


def _rows_of(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().float()  # on the device the call runs on; the caller keeps a CPU sample
    if isinstance(module, nn.Conv2d):
        patches = nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1]), x.movedim(1, -1).reshape(-1, x.shape[1])
    flat = x.reshape(-1, x.shape[-1])
    return flat, flat


def capture_layer_inputs(denoiser: nn.Module, calibration: CalibrationSet, layers: set[str],
                         max_rows: int = 2048, seed: int = 0, progress: bool = False) -> dict[str, LayerInputs]:
    """Replay every reservoir call and collect up to `max_rows` input rows for each named layer."""
    entries = calibration.entries()
    if not entries:
        raise InputError("the calibration set has no reservoir entries to replay (it was calibrated with "
                         "reservoir_size 0)", "calibration")
    generator = torch.Generator().manual_seed(seed)
    per_call = max(1, max_rows // len(entries))
    collected: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in layers}

    def hook_for(name):
        def hook(module, args):
            rows, channels = _rows_of(module, args[0])
            pick = lambda t: t[torch.randperm(t.shape[0], generator=generator)[:per_call]]
            collected[name].append((pick(rows).cpu(), pick(channels).cpu()))
        return hook

    handles = [denoiser.get_submodule(name).register_forward_pre_hook(hook_for(name)) for name in layers]
    calls = (entry.call_kwargs() for entry in tqdm(entries, desc="replay calibration inputs", unit="call",
                                                   disable=not progress))
    replay(denoiser, calls, handles)
    return {name: LayerInputs(torch.cat([r for r, _ in parts]), torch.cat([c for _, c in parts]))
            for name, parts in collected.items() if parts}


def replay(denoiser: nn.Module, calls, handles: list, mode=None) -> None:
    """Run `denoiser(**kwargs)` for each call without gradients (inside `mode`, e.g. a torch-function
    mode, when given), then remove the hook `handles`, also when a call raises."""
    try:
        with torch.no_grad(), mode or nullcontext():
            for kwargs in calls:
                denoiser(**kwargs)
    finally:
        for handle in handles:
            handle.remove()
