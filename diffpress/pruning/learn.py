"""Mask learning on the sampling trajectory (EcoDiff's objective, on any pipeline).

For each (prompt or label, seed) the float pipeline's final latent is the target. Each iteration
samples gate values, runs the gated pipeline on a batch of items from the same noise with timestep
gradient checkpointing (`trajectory.py`), and minimizes

    MSE(final latent, target) / mean(target^2) + w(i) * relu(expected kept fraction - target)

where the expected kept fraction counts each unit's parameters (or MACs) times its probability of
being open, and w ramps linearly from 0 to `penalty` over the first `warmup` of the iterations.
Only the gate logits are trained; the model's weights are frozen.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .. import resume
from ..prune_stage import LearnOptions
from .gates import Gates, GateSite
from .select import PruneBudget, unit_cost
from .trajectory import Trajectory, final_latents
from .training import frozen_weights, loop_state, optimizer_step, restore_loop
from .units import PruneGroup


@dataclass
class LearnedMask:
    gates: Gates
    losses: list[float]
    kept_fraction: list[float]
    seconds: float

    def scores(self) -> list[torch.Tensor]:
        return [logit.detach().clone() for logit in self.gates.logits]


def _batches(items: Sequence, samples: int, batch_size: int, seed: int) -> list[tuple[list, int]]:
    """(items, noise seed) per batch; sample i uses item i % len(items)."""
    chosen = [items[i % len(items)] for i in range(samples)]
    return [(chosen[start:start + batch_size], seed + index)
            for index, start in enumerate(range(0, samples, batch_size))]


def learn_mask(pipe, denoiser, groups: list[PruneGroup], items: Sequence, trajectory: Trajectory,
               budget: PruneBudget, total: float, options: LearnOptions = LearnOptions(),
               progress: bool = False) -> LearnedMask:
    started = time.perf_counter()
    batches = _batches(items, options.samples, options.batch_size, options.seed)
    targets = [final_latents(pipe, batch, seed, trajectory) for batch, seed in batches]
    power = [t.float().square().mean().clamp_min(1e-12) for t in targets]
    gates = Gates(groups, options.gate, options.init_logit)
    optimizer = torch.optim.Adam(gates.parameters(), lr=options.learning_rate)
    fixed = total - sum(g.count * unit_cost(g, budget.cost) for g in groups)
    generator = torch.Generator().manual_seed(options.seed)
    losses, kept = [], []
    checkpoints = resume.stage("mask-learning")
    start = 0
    if (snapshot := checkpoints.latest_snapshot()) is not None:
        start, history = restore_loop(gates, optimizer, generator, *snapshot)
        losses, kept = history["losses"], history["kept"]
    with frozen_weights(denoiser), GateSite(denoiser, groups) as site, \
            tqdm(range(start, options.iterations), desc="learn mask", unit="it", disable=not progress,
                 initial=start, total=options.iterations) as bar:
        for iteration in bar:
            index = iteration % len(batches)
            site.set(gates.sample(generator))
            latent = final_latents(pipe, batches[index][0], batches[index][1], trajectory, grad=True,
                                   site=site, checkpoint_steps=options.checkpoint_steps)
            mse = (latent.float() - targets[index].float()).square().mean() / power[index]
            fraction = (fixed + gates.expected_kept(budget.cost.value)) / total
            weight = options.penalty * min(1.0, (iteration + 1) / max(1.0, options.warmup * options.iterations))
            loss = mse + weight * torch.relu(fraction - budget.target)
            optimizer_step(optimizer, loss, f"mask learning at iteration {iteration}", "lower learning_rate")
            losses.append(float(mse.detach()))
            kept.append(float(fraction.detach()))
            bar.set_postfix(mse=f"{losses[-1]:.4f}", kept=f"{kept[-1]:.3f}")
            if iteration + 1 < options.iterations and checkpoints.snapshot_due():
                checkpoints.write_snapshot(*loop_state(gates, optimizer, generator, iteration + 1,
                                                       {"losses": losses, "kept": kept}))
    return LearnedMask(gates, losses, kept, time.perf_counter() - started)
