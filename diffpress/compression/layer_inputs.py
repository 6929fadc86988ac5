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

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import CalibrationSet
from ..errors import InputError


@dataclass
class LayerInputs:
    rows: torch.Tensor  # (M, K): what the layer's matmul sees (im2col rows for convs), float32
    channels: torch.Tensor  # (M', C): inputs per input channel (tokens or pixels), float32


def _rows_of(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().float()
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
            collected[name].append((pick(rows), pick(channels)))
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
