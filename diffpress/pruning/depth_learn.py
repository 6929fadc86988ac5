"""Learnable depth (TinyFusion): which blocks to remove, learned with N:M group gates.

The removable blocks of each class are split, in model order, into local groups of `group_size` (M)
blocks (a transformer's consecutive blocks; a UNet's ResNets and its attention blocks); group g keeps N_g of its M blocks (the removals spread as evenly as the count
allows). Each group has one logit per keep-combination (C(M, N_g) of them). Every step draws a hard
one-hot combination per group with Gumbel-softmax and a straight-through gradient, at a temperature
annealed from 4 to 0.1, and each block's output becomes

    passed + m * (block(x) - passed)

where `passed` is what the block's pass-through returns (its residual input) and m in {0, 1} is
whether the drawn combination keeps it; gradients reach the logits through the soft probabilities.
The loss is the denoiser's relative output error against the float model on a replayed calibration
call (every timestep bucket in turn), recorded before any gate is applied. After training, each
group keeps its most probable combination. Weights stay frozen (no LoRA co-training here).
"""
from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import CalibrationSet
from ..compression.sensitivity.output_metric import output_tensor
from ..metrics import relative_error
from ..errors import InputError
from .blocks import Block
from .depth import calibration_entries, denoiser_outputs
from .training import frozen_weights, optimizer_step


@dataclass
class BlockGroup:
    blocks: list[Block]
    keep: int

    @property
    def combinations(self) -> list[tuple[int, ...]]:
        return list(itertools.combinations(range(len(self.blocks)), self.keep))


def block_groups(blocks: list[Block], remove: int, group_size: int = 4) -> list[BlockGroup]:
    """The blocks of each class, in model order, in local groups of at most `group_size` (a transformer's
    consecutive blocks; a UNet's ResNets and its attention blocks, each in order); `remove` removals spread
    evenly (each group keeps at least one block)."""
    by_kind: dict[str, list[Block]] = {}
    for block in blocks:
        by_kind.setdefault(block.kind, []).append(block)
    runs = [members[start:start + group_size] for members in by_kind.values()
            for start in range(0, len(members), group_size)]
    removable = sum(len(run) - 1 for run in runs)
    if not 0 < remove <= removable:
        raise InputError(f"the learned depth mask can remove 1 to {removable} blocks here (each group of up to "
                         f"{group_size} keeps one); asked for {remove}", "remove_blocks")
    removals = [0] * len(runs)
    order = sorted(range(len(runs)), key=lambda i: -len(runs[i]))
    left = remove
    while left:  # one more removal to the group with the most blocks per removal so far
        best = max((i for i in order if removals[i] < len(runs[i]) - 1),
                   key=lambda i: (len(runs[i]) / (removals[i] + 1), -i))
        removals[best] += 1
        left -= 1
    return [BlockGroup(run, len(run) - r) for run, r in zip(runs, removals)]


def _mixing_hook(block: Block, gate: dict):
    passing = block.pass_through()

    def hook(module, args, kwargs, output):
        m = gate.get(block.name)
        if m is None:
            return None
        passed = passing(*args, **kwargs)
        if isinstance(output, torch.Tensor):
            return passed + m * (output - passed)
        if isinstance(output, tuple):
            return tuple(o if p is None or o is None else p + m * (o - p) for o, p in zip(output, passed))
        first = output_tensor(output)
        return type(output)(output_tensor(passed) + m * (first - output_tensor(passed)))

    return hook


@contextlib.contextmanager
def _gated_blocks(model: nn.Module, blocks: list[Block], gate: dict):
    handles = [model.get_submodule(b.name).register_forward_hook(_mixing_hook(b, gate), with_kwargs=True)
               for b in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class LearnedDepth:
    removed: list[Block]
    losses: list[float]
    probabilities: list[list[float]]  # per group, over its combinations, at the end
    seconds: float


def learn_depth(model: nn.Module, blocks: list[Block], remove: int, calibration: CalibrationSet,
                iterations: int = 100, learning_rate: float = 0.1, group_size: int = 4, seed: int = 0,
                per_bucket: int = 2, progress: bool = False) -> LearnedDepth:
    started = time.perf_counter()
    groups = block_groups(blocks, remove, group_size)
    entries = calibration_entries(calibration, per_bucket)
    targets = denoiser_outputs(model, entries)
    logits = [torch.zeros(len(g.combinations), requires_grad=True) for g in groups]
    optimizer = torch.optim.Adam(logits, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    gate: dict = {}
    losses = []
    with frozen_weights(model), _gated_blocks(model, [b for g in groups for b in g.blocks], gate), \
            tqdm(range(iterations), desc="learn depth", unit="it", disable=not progress) as bar:
        for iteration in bar:
            tau = 4.0 * (0.1 / 4.0) ** (iteration / max(1, iterations - 1))
            gate.clear()
            for group, logit in zip(groups, logits):
                gumbel = -torch.log(-torch.log(torch.rand(logit.shape, generator=generator).clamp(1e-9, 1 - 1e-9)))
                soft = torch.softmax((logit + gumbel) / tau, dim=0)
                hard = torch.zeros_like(soft)
                hard[soft.argmax()] = 1.0
                choice = hard + soft - soft.detach()  # straight-through
                for index, block in enumerate(group.blocks):
                    keeps = [c for c, combo in enumerate(group.combinations) if index in combo]
                    gate[block.name] = choice[keeps].sum()
            call = iteration % len(entries)
            with torch.enable_grad():
                loss = relative_error(targets[call], output_tensor(model(**entries[call].call_kwargs())))
            optimizer_step(optimizer, loss, f"learning the depth mask at iteration {iteration}",
                           "lower learning_rate")
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", tau=f"{tau:.2f}")
    removed, probabilities = [], []
    for group, logit in zip(groups, logits):
        probabilities.append([round(p, 4) for p in torch.softmax(logit.detach(), 0).tolist()])
        kept = group.combinations[int(logit.detach().argmax())]
        removed += [b for i, b in enumerate(group.blocks) if i not in kept]
    return LearnedDepth(removed, losses, probabilities, time.perf_counter() - started)
