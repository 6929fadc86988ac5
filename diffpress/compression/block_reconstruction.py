"""Block-wise reconstruction with learned rounding (BRECQ, Li et al. 2021; as Q-Diffusion and EDA-DM use it).

Layer-wise learned rounding (`rounding.learn_rounding`) fits each layer to its own float output.
BRECQ fits every quantized layer of a block at once to the block's float output, so the errors of
one layer can be compensated by the next (inside a resnet: conv1 by conv2; inside a transformer
block: the projections by the MLP). A block is found without layer-name lists: the innermost entry
of an `nn.ModuleList` that holds quantized layers (a UNet resnet or attention transformer block, a
DiT transformer block). Layers outside every block keep layer-wise rounding.

One replay of the calibration reservoir (up to `max_calls` calls) through the float denoiser records
every block's call arguments and float outputs; then, per block, swap each of its layers for a soft-quantized
copy (rounding variables, activation fake quantization with a straight-through gradient, smoothing
and the low-rank branch as planned) and minimize the relative output error plus the AdaRound
rounding penalty with Adam. Inputs are the float model's (no error accumulation across blocks).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map
from tqdm.auto import tqdm

from ..calibration import CalibrationSet
from ..errors import InputError
from .. import placement
from ..kernels import reference
from ..kernels.layout import PackedWeight
from ..recipe import QuantSpec
from .layer_inputs import replay
from .rotation import transformed_input
from .rounding import RoundingVariables, beta_schedule
from .surgery import swapped


@dataclass
class PreparedLayer:
    """One layer's plan after smoothing and the low-rank split, before rounding."""

    module: nn.Module
    spec: QuantSpec
    weight: torch.Tensor  # (N, K) float32: smoothed, minus the low-rank part
    nearest: PackedWeight  # nearest rounding with the chosen scales (the starting point)
    factors: torch.Tensor | None  # smoothing divisor per input channel
    low_rank: tuple[torch.Tensor, torch.Tensor] | None  # (down, up)
    act_split: int | None = None
    rotation: torch.Tensor | None = None  # signs of the input rotation (compression.rotation)

    def to(self, device) -> "PreparedLayer":
        """The same plan with its tensors on `device` (the module stays where it is)."""
        move = lambda t: t.to(device) if t is not None else None
        low_rank = tuple(t.to(device) for t in self.low_rank) if self.low_rank is not None else None
        return replace(self, weight=self.weight.to(device), nearest=self.nearest.to(device),
                       factors=move(self.factors), low_rank=low_rank, rotation=move(self.rotation))


def find_blocks(denoiser: nn.Module, layers: list[str]) -> dict[str, list[str]]:
    """block fqn -> its layers (in `layers` order): the innermost ModuleList entry holding each layer."""
    entries = [f"{parent}.{child}" if parent else child for parent, module in denoiser.named_modules()
               if isinstance(module, nn.ModuleList) for child, _ in module.named_children()]
    blocks: dict[str, list[str]] = {}
    for layer in layers:
        owners = [entry for entry in entries if layer.startswith(entry + ".")]
        if owners:
            blocks.setdefault(max(owners, key=len), []).append(layer)
    return blocks


class _SoftQuantized(nn.Module):
    """A float layer's stand-in during reconstruction: soft-rounded weight, fake-quantized input."""

    def __init__(self, prepared: PreparedLayer) -> None:
        super().__init__()
        self.prepared = prepared
        self.rounding = RoundingVariables(prepared.weight, prepared.nearest.scales, prepared.nearest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, module = self.prepared, self.prepared.module
        is_conv = isinstance(module, nn.Conv2d)
        channel_dim = 1 if is_conv else -1
        dtype = x.dtype
        x = transformed_input(x, p.factors, p.rotation, channel_dim)
        x_smooth, x_quantized = reference.prepare_activation(x, p.spec.act_format, None, None,
                                                             channel_dim=channel_dim, act_split=p.act_split,
                                                             act_group_size=p.spec.act_group_size)
        x_quantized = x_smooth + (x_quantized - x_smooth).detach()  # straight-through activation rounding
        weight = self.rounding.soft_weight()
        if is_conv:
            conv = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups)
            y = reference.conv2d_with_weight(x_quantized, x_smooth, weight, tuple(module.weight.shape), module.bias,
                                             conv, p.low_rank)
        else:
            y = reference.linear_with_weight(x_quantized, x_smooth, weight, module.bias, p.low_rank)
        return y.to(dtype)


def reconstruct_blocks(denoiser: nn.Module, calibration: CalibrationSet, prepared: dict[str, PreparedLayer],
                       iterations: int = 300, max_calls: int = 16, regularization: float = 0.01,
                       learning_rate: float = 0.01, seed: int = 0, progress: bool = False) -> dict[str, PackedWeight]:
    """fqn -> learned-rounding PackedWeight for every prepared layer that lies inside a block."""
    blocks = find_blocks(denoiser, list(prepared))
    recorded = _record_block_calls(denoiser, list(blocks), _reservoir_calls(calibration, max_calls))
    result: dict[str, PackedWeight] = {}
    for block_name, layer_names in tqdm(blocks.items(), desc="block reconstruction", unit="block", disable=not progress):
        block = denoiser.get_submodule(block_name)
        result.update(_fit_block(block, {n: prepared[n] for n in layer_names}, block_name, recorded.pop(block_name),
                                 iterations, regularization, learning_rate, seed))
    return result


def _reservoir_calls(calibration: CalibrationSet, max_calls: int) -> list[dict]:
    entries = calibration.entries()
    if not entries:
        raise InputError("block reconstruction replays calibration calls, but the calibration set's reservoir is "
                         "empty (calibrate with reservoir_size >= 1)", "calibration")
    stride = max(1, len(entries) // max_calls)  # spread over the buckets, not the first few
    return [entry.call_kwargs() for entry in entries[::stride][:max_calls]]


def _record_block_calls(denoiser: nn.Module, blocks: list[str], calls: list[dict]) -> dict[str, list[tuple]]:
    """block -> (args, kwargs, float output) of each of its calls, all blocks in one replay of the calls.

    Memory: every block's inputs and outputs for `max_calls` calls, on the CPU (a block's move to the device
    when it is fitted); lower max_calls for large models.
    """
    recorded: dict[str, list[tuple]] = {name: [] for name in blocks}
    detach = lambda tree: tree_map(lambda t: t.detach().to("cpu", copy=True) if isinstance(t, torch.Tensor) else t,
                                   tree)

    def hook_for(name):
        def hook(module, args, kwargs, output):
            recorded[name].append((detach(args), detach(kwargs), detach(output)))
        return hook

    handles = [denoiser.get_submodule(name).register_forward_hook(hook_for(name), with_kwargs=True) for name in blocks]
    replay(denoiser, calls, handles)
    return recorded


def _fit_block(block: nn.Module, prepared: dict[str, PreparedLayer], block_name: str, recorded: list[tuple],
               iterations: int, regularization: float, learning_rate: float, seed: int) -> dict[str, PackedWeight]:
    """The block's learned codes. The block (and its layers' plans) stay on the device while it is fitted: the
    backward pass reads the weights the forward pass used."""
    relative = {name: name[len(block_name) + 1:] for name in prepared}
    device = placement.current().device
    frozen = {parameter: parameter.requires_grad for parameter in block.parameters()}  # only V is trained
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        with placement.materialized(block):
            soft = {name: _SoftQuantized(layer.to(device)) for name, layer in prepared.items()}
            with swapped(block, {relative[name]: module for name, module in soft.items()}):
                _optimize(block, list(soft.values()), recorded, iterations, regularization, learning_rate, seed)
    finally:
        for parameter, requires_grad in frozen.items():
            parameter.requires_grad_(requires_grad)
    return {name: module.rounding.packed().to("cpu") for name, module in soft.items()}


def _optimize(block, soft_layers, recorded, iterations, regularization, learning_rate, seed) -> None:
    variables = [layer.rounding.variable for layer in soft_layers]
    optimizer = torch.optim.Adam(variables, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    on_device = placement.current().cast
    targets = [[on_device(t).float() for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
               for _, _, output in recorded]
    powers = [sum(float(t.square().mean()) for t in target) or 1e-20 for target in targets]
    for iteration in range(iterations):
        index = int(torch.randint(len(recorded), (1,), generator=generator))
        args, kwargs = tree_map(lambda t: on_device(t) if isinstance(t, torch.Tensor) else t, recorded[index][:2])
        outputs = [t for t in tree_flatten(block(*args, **kwargs))[0] if isinstance(t, torch.Tensor)]
        error = sum((o.float() - t).square().mean() for o, t in zip(outputs, targets[index])) / powers[index]
        beta = beta_schedule(iteration, iterations)
        loss = error + regularization * sum(layer.rounding.penalty(beta) for layer in soft_layers) / len(soft_layers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
