"""Mask learning on the sampling trajectory (EcoDiff's objective, on any pipeline).

For each (prompt or label, seed) the float pipeline's final latent is the target. Each iteration
samples gate values, runs the gated pipeline on a batch of items from the same noise with timestep
gradient checkpointing (`trajectory.py`), and minimizes

    MSE(final latent, target) / mean(target^2)  [+ step_loss * mean_t |f_gated(x_t) - f(x_t)|^2 / |f(x_t)|^2]

where the optional per-step term replays the float trajectory's denoiser calls x_t through the gated
denoiser (`fit.TrajectoryObjective`; objective replay fits on replayed calibration calls instead). The budget on the expected kept fraction (each unit's parameters or MACs times its
probability of being open) is held by `control`:

- projected (default): after every Adam step all logits move by one constant (found by bisection)
  so the expected kept fraction is exactly the budget of the moment, which falls from 1 to the
  target over the first `warmup` of the iterations (cubic: fast first, gently at the end) and then
  stays. The loss alone decides which units close, and the mask is fitted at the budget it will be
  cut to.
- topk: every iteration draws a hard mask at the budget of the moment (the same schedule): the units
  of highest logit + T * Gumbel noise whose parameters (or MACs) fit, which is the selection the final
  cut makes; the gradient reaches the logits straight through sigmoid((key - threshold) / T), the
  threshold between the last kept and the first dropped unit. T anneals from 1 to 0.05.
- penalty: + w(i) * relu(expected kept fraction - target), w ramping from 0 to `penalty` over the
  first `warmup` of the iterations. Adam normalizes each logit's gradient, so every logit falls at
  about the learning rate until the fraction is under the target, whatever the target.

Only the gate logits are trained; the model's weights are frozen. Gradients are accumulated on the
column masks one denoiser step at a time and passed to the logits once per iteration (`fit.fit_step`),
so memory is one step's graph whatever the number of steps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from .. import resume
from ..calibration import CalibrationSet
from ..prune_stage import BudgetControl, LearnObjective, LearnOptions
from .fit import ReplayObjective, TrajectoryObjective, fit_step, progress_bar
from .gates import Gates, GateSite, column_masks
from .select import PruneBudget, unit_cost
from .trajectory import Trajectory
from .training import frozen_weights, loop_state, restore_loop
from .units import PruneGroup

TOPK_TEMPERATURE = (1.0, 0.05)  # topk control: noise scale and straight-through temperature, first -> last iteration


@dataclass
class LearnedMask:
    gates: Gates
    losses: list[float]
    kept_fraction: list[float]
    seconds: float

    def scores(self) -> list[torch.Tensor]:
        return [logit.detach().clone() for logit in self.gates.logits]


def objective_for(options: LearnOptions, pipe, items: Sequence, trajectory: Trajectory, denoiser,
                  calibration: CalibrationSet | None, default: LearnObjective):
    """The objective `options` asks for (`default` when it names none)."""
    if (options.objective or default) is LearnObjective.REPLAY:
        return ReplayObjective(denoiser, calibration)
    return TrajectoryObjective(pipe, items, trajectory, options.samples, options.batch_size, options.seed,
                               options.step_loss, options.checkpoint_steps)


def learn_mask(pipe, denoiser, groups: list[PruneGroup], items: Sequence, trajectory: Trajectory,
               budget: PruneBudget, total: float, options: LearnOptions = LearnOptions(),
               progress: bool = False, calibration: CalibrationSet | None = None) -> LearnedMask:
    started = time.perf_counter()
    objective = objective_for(options, pipe, items, trajectory, denoiser, calibration, LearnObjective.TRAJECTORY)
    gates = Gates(groups, options.gate, options.init_logit)
    optimizer = torch.optim.Adam(gates.parameters(), lr=options.learning_rate)
    fixed = total - sum(g.count * unit_cost(g, budget.cost) for g in groups)
    projected = options.control is BudgetControl.PROJECTED
    at_budget = options.control is BudgetControl.TOPK

    def scheduled(iteration: int) -> float:
        """Cost of the gated units allowed after `iteration` (projected: expected; topk: drawn)."""
        ramp = max(1.0, options.warmup * options.iterations)
        fraction = budget.target + (1.0 - budget.target) * (1.0 - min(1.0, (iteration + 1) / ramp)) ** 3
        return fraction * total - fixed

    generator = torch.Generator().manual_seed(options.seed)
    losses, kept = [], []
    checkpoints = resume.stage("mask-learning")
    start = 0
    if (snapshot := checkpoints.latest_snapshot()) is not None:
        start, history = restore_loop(gates, optimizer, generator, *snapshot)
        losses, kept = history["losses"], history["kept"]
    elif projected:
        gates.project(scheduled(0), budget.cost.value)
    with frozen_weights(denoiser), GateSite(denoiser, groups) as site, \
            progress_bar(start, options.iterations, "learn mask", progress) as bar:
        for iteration in bar:
            if at_budget:
                temperature = TOPK_TEMPERATURE[0] * (TOPK_TEMPERATURE[1] / TOPK_TEMPERATURE[0]) ** (
                    iteration / max(1, options.iterations - 1))
                values = gates.sample_at_budget(generator, scheduled(iteration), budget.cost.value, temperature)
            else:
                values = gates.sample(generator)
            masks = column_masks(denoiser, groups, values)
            term = None
            if options.control is BudgetControl.PENALTY:
                fraction = (fixed + gates.expected_kept(budget.cost.value)) / total
                weight = options.penalty * min(1.0, (iteration + 1) / max(1.0, options.warmup * options.iterations))
                term = weight * torch.relu(fraction - budget.target)
            losses.append(fit_step(site, objective, denoiser, optimizer, iteration, masks, term))
            if projected:
                gates.project(scheduled(iteration), budget.cost.value)
            with torch.no_grad():
                if at_budget:
                    used = sum((v.detach() * unit_cost(g, budget.cost)).sum() for v, g in zip(values, groups))
                    kept.append(float((fixed + used) / total))
                else:
                    kept.append(float((fixed + gates.expected_kept(budget.cost.value)) / total))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", kept=f"{kept[-1]:.3f}")
            if iteration + 1 < options.iterations and checkpoints.snapshot_due():
                checkpoints.write_snapshot(*loop_state(gates, optimizer, generator, iteration + 1,
                                                       {"losses": losses, "kept": kept}))
    return LearnedMask(gates, losses, kept, time.perf_counter() - started)
