"""Mask learning on the sampling trajectory (EcoDiff's objective, on any pipeline).

For each (prompt or label, seed) the float pipeline's final latent is the target. Each iteration
samples gate values, runs the gated pipeline on a batch of items from the same noise with timestep
gradient checkpointing (`trajectory.py`), and minimizes

    MSE(final latent, target) / mean(target^2)  [+ step_loss * mean_t |f_gated(x_t) - f(x_t)|^2 / |f(x_t)|^2]

where the optional per-step term replays the float trajectory's denoiser calls x_t through the gated
denoiser (`fit.TrajectoryObjective`; objective replay fits on replayed calibration calls instead). The budget on the expected kept fraction (each unit's parameters or MACs times its
probability of being open) is held by `control`:

- projected: after every Adam step all logits move by one constant (found by bisection)
  so the expected kept fraction is exactly the budget of the moment, which falls from 1 to the
  target over the first `warmup` of the iterations (cubic: fast first, gently at the end) and then
  stays. The loss alone decides which units close, and the mask is fitted at the budget it will be
  cut to.
- topk: every iteration draws a hard mask at the budget of the moment (the same schedule): the final
  cut's selection (its scope, global or per layer, and each group's floor of kept units) applied to
  logit + T * Gumbel noise; the gradient reaches the logits straight through sigmoid((key - threshold) / T),
  the threshold between the highest dropped key and the lowest kept key above it (per group with per-layer
  scope). T anneals from 1 to 0.05.
- penalty (default: it measured best in image PSNR, bench/mask_learning.py): + w(i) * relu(expected
  kept fraction - target), w ramping from 0 to `penalty` over the first `warmup` of the iterations. Adam normalizes each logit's gradient, so every logit falls at
  about the learning rate until the fraction is under the target, whatever the target.

With `warm_start` taylor the logits start apart: each is offset by its unit's standardized log taylor
score (the first-order output change of removing it, `importance.py`) measured on 16 of the float
trajectories' own denoiser calls, so the descent starts from a first-order ranking that the
trajectory loss then corrects. With candidate (the default) the logits start equal, and the cuts of
three one-shot rankings are measured first as candidates: taylor, activation (input RMS on the same
calls times the consumer columns' weight norm) and weight magnitude. On builtin:digits the taylor warm
start gained 4.5 dB at 10% removed and lost 2 dB at 30% (bench/results/README.md, "Mask learning"), a
one-shot ranking being right for small removals only; as candidates they cost one held-out measurement
each and bind nothing. Every iterations / `mask_checks` iterations (and at the end, and at the start
for the one-shot rankings' cuts) the logits are cut to the budget, as the final selection cuts them, and that binary mask's loss is measured without noise on held-out targets (`fit.held_out`: other noise seeds, or the reservoir's next calls);
the logits of the best cut are the scores (the penalty descent ranks units differently at different
depths of the descent, and the best ranking for a mild budget comes early). Only the gate logits are
trained; the model's weights are frozen. Gradients are accumulated on the
column masks one denoiser step at a time and passed to the logits once per iteration (`fit.fit_step`),
so memory is one step's graph whatever the number of steps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .. import resume
from ..calibration import CalibrationSet
from ..errors import InputError
from ..prune_stage import BudgetControl, LearnObjective, LearnOptions, Scope, WarmStart
from .fit import ReplayObjective, TrajectoryObjective, fit_step, held_out, progress_bar
from .gates import Gates, GateSite, column_masks
from .importance import activation_scores_on, magnitude_scores, normalized, taylor_scores_on
from .select import PruneBudget, select, unit_cost
from .trajectory import Trajectory
from .training import frozen_weights, loop_state, restore_loop
from .units import PruneGroup

WARM_START_BATCHES, WARM_START_CALLS, WARM_START_SPREAD = 2, 16, 1.0
TOPK_TEMPERATURE = (1.0, 0.05)  # topk control: noise scale and straight-through temperature, first -> last iteration


@dataclass
class LearnedMask:
    gates: Gates
    losses: list[float]
    kept_fraction: list[float]
    seconds: float
    checks: list[dict] = field(default_factory=list)  # {"iteration", "loss"} of each binarized-mask check
    best_iteration: int | None = None  # whose logits the scores are (None: the last iteration's)
    best: list[torch.Tensor] | None = None

    def scores(self) -> list[torch.Tensor]:
        chosen = self.best if self.best is not None else self.gates.logits
        return [logit.detach().clone() for logit in chosen]

    @property
    def kept_check(self) -> dict | None:
        """The held-out check whose cut is kept (the first of least loss), or None without checks."""
        return min(self.checks, key=lambda c: c["loss"]) if self.checks else None


class _Tracked(nn.Module):
    """What a mask-learning checkpoint holds besides the optimizer: the gates, and the logits of the best
    binarized mask checked so far."""

    def __init__(self, gates: Gates) -> None:
        super().__init__()
        self.gates = gates
        self.best = nn.ParameterList([nn.Parameter(logit.detach().clone(), requires_grad=False)
                                      for logit in gates.logits])


def reads_rankings(options: LearnOptions) -> bool:
    """Whether learning reads the one-shot rankings (`one_shot_candidates`: taylor, and with candidate also
    activation and magnitude) on the trajectories' calls: as its start, or as the first cuts checked."""
    return options.warm_start is WarmStart.TAYLOR or (options.warm_start is WarmStart.CANDIDATE
                                                      and options.mask_checks > 0)


def one_shot_candidates(denoiser: nn.Module, groups: list[PruneGroup], calls: list,
                        options: LearnOptions) -> dict[str, list[torch.Tensor]]:
    """The one-shot rankings whose cuts are measured before learning, by name (the first is the taylor warm
    start's): taylor and activation on `calls` (the float trajectories' own denoiser calls), and weight
    magnitude; taylor alone unless `warm_start` is candidate. Scores are the baselines' (`importance.py`)."""
    rankings = {"taylor": taylor_scores_on(denoiser, groups, calls)}
    if options.warm_start is WarmStart.CANDIDATE:
        rankings["activation"] = normalized(activation_scores_on(denoiser, groups, calls))
        rankings["magnitude"] = normalized(magnitude_scores(denoiser, groups))
    return rankings


@torch.no_grad()
def warm_logits(gates: Gates, scores: list[torch.Tensor], spread: float = WARM_START_SPREAD) -> list[torch.Tensor]:
    """The gates' logits, each offset by `spread` x its unit's standardized log score (the mean logit stays
    put; the gates unchanged)."""
    logs = torch.cat(scores).clamp_min(1e-30).log()
    deviation = logs.std() if logs.numel() > 1 and logs.std() > 0 else logs.new_tensor(1.0)
    offsets = (spread * (logs - logs.mean()) / deviation).split([len(s) for s in scores])
    return [logit.detach() + offset.to(logit) for logit, offset in zip(gates.logits, offsets)]


def binarized_loss(objective, site: GateSite, denoiser: nn.Module, groups: list[PruneGroup],
                   kept: list[torch.Tensor]) -> float:
    """The objective's loss (no gradient) with the units of `kept` open and every other unit removed."""
    values = []
    for group, indices in zip(groups, kept):
        value = torch.zeros(group.count)
        value[indices] = 1.0
        values.append(value)
    site.set(values)
    try:
        return objective.evaluate(site, denoiser)
    finally:
        site.set(None)


def objective_kind(options: LearnOptions, pipe, items: Sequence | None) -> LearnObjective:
    """The objective `options` names, else the trajectory where there is a pipeline and items to sample."""
    return options.objective or LearnObjective.default(pipe is not None and bool(items))


def objective_for(options: LearnOptions, pipe, items: Sequence, trajectory: Trajectory, denoiser,
                  calibration: CalibrationSet | None):
    """The objective `options` asks for (`objective_kind`)."""
    if objective_kind(options, pipe, items) is LearnObjective.REPLAY:
        if options.step_loss:
            raise InputError("step_loss weighs a per-step term of the trajectory objective; the replay objective "
                             "is per-step already: drop step_loss or fit on the trajectory", "step_loss")
        return ReplayObjective(denoiser, calibration)
    return TrajectoryObjective(pipe, items, trajectory, options.samples, options.batch_size, options.seed,
                               options.step_loss, options.checkpoint_steps,
                               record_batches=WARM_START_BATCHES if reads_rankings(options) else 0)


def learn_mask(pipe, denoiser, groups: list[PruneGroup], items: Sequence, trajectory: Trajectory,
               budget: PruneBudget, total: float, options: LearnOptions = LearnOptions(),
               progress: bool = False, calibration: CalibrationSet | None = None,
               scope: Scope = Scope.GLOBAL) -> LearnedMask:
    started = time.perf_counter()
    objective = objective_for(options, pipe, items, trajectory, denoiser, calibration)
    gates = Gates(groups, options.gate, options.init_logit)
    every = max(1, options.iterations // options.mask_checks) if options.mask_checks else 0
    checkpoints = resume.stage("mask-learning")
    snapshot = checkpoints.latest_snapshot()  # a resumed run has measured the rankings' cuts and moved on
    first_cuts = {}  # name -> logits whose cut is measured before the first iteration
    if reads_rankings(options) and snapshot is None:
        calls = objective.sample_calls(denoiser, WARM_START_CALLS)
        first_cuts = {name: warm_logits(gates, scores)
                      for name, scores in one_shot_candidates(denoiser, groups, calls, options).items()}
        if options.warm_start is WarmStart.TAYLOR:
            with torch.no_grad():
                for logit, warm in zip(gates.logits, first_cuts["taylor"]):
                    logit.copy_(warm)
    optimizer = torch.optim.Adam(gates.parameters(), lr=options.learning_rate)
    fixed = total - sum(g.count * unit_cost(g, budget.cost) for g in groups)
    projected = options.control is BudgetControl.PROJECTED
    at_budget = options.control is BudgetControl.TOPK

    def scheduled_fraction(iteration: int) -> float:
        """Fraction of the whole denoiser's cost allowed after `iteration` (projected: expected; topk: drawn)."""
        ramp = max(1.0, options.warmup_fraction * options.iterations)
        return budget.target + (1.0 - budget.target) * (1.0 - min(1.0, (iteration + 1) / ramp)) ** 3

    def scheduled(iteration: int) -> float:
        """Cost of the gated units allowed after `iteration`."""
        return scheduled_fraction(iteration) * total - fixed

    generator = torch.Generator().manual_seed(options.seed)
    tracked = _Tracked(gates)
    history: dict = {"losses": [], "kept": [], "checks": [], "best": None}
    losses, kept = history["losses"], history["kept"]
    validation = held_out(objective, denoiser, calibration) if every else None
    start = 0
    if snapshot is not None:
        start, history = restore_loop(tracked, optimizer, generator, *snapshot)
        losses, kept = history["losses"], history["kept"]
    elif projected:
        gates.project(scheduled(0), budget.cost.value)
    with frozen_weights(denoiser), GateSite(denoiser, groups) as site, \
            progress_bar(start, options.iterations, "learn mask", progress) as bar:
        if every and start == 0:  # the one-shot rankings' cuts
            for name, logits in first_cuts.items():
                _check(history, tracked, logits, validation, site, denoiser, groups, total, budget, scope, -1, name)
        for iteration in bar:
            if at_budget:
                temperature = TOPK_TEMPERATURE[0] * (TOPK_TEMPERATURE[1] / TOPK_TEMPERATURE[0]) ** (
                    iteration / max(1, options.iterations - 1))
                values = gates.sample_at_budget(generator, PruneBudget(scheduled_fraction(iteration), budget.cost),
                                                total, temperature, scope)
            else:
                values = gates.sample(generator)
            masks = column_masks(denoiser, groups, values)
            term = None
            if options.control is BudgetControl.PENALTY:
                fraction = (fixed + gates.expected_kept(budget.cost.value)) / total
                weight = options.penalty * min(1.0, (iteration + 1) / max(1.0, options.warmup_fraction * options.iterations))
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
            if every and ((iteration + 1) % every == 0 or iteration + 1 == options.iterations):
                _check(history, tracked, [logit.detach() for logit in gates.logits], validation, site, denoiser,
                       groups, total, budget, scope, iteration)
            postfix = {"loss": f"{losses[-1]:.4f}", "kept": f"{kept[-1]:.3f}"}
            if history["checks"]:
                postfix["best cut"] = f"{min(c['loss'] for c in history['checks']):.4f}"
            bar.set_postfix(postfix)
            if iteration + 1 < options.iterations and checkpoints.snapshot_due():
                checkpoints.write_snapshot(*loop_state(tracked, optimizer, generator, iteration + 1, history))
    best = [b.detach().clone() for b in tracked.best] if history["best"] is not None else None
    return LearnedMask(gates, losses, kept, time.perf_counter() - started, history["checks"], history["best"], best)


def _check(history: dict, tracked: _Tracked, logits: list[torch.Tensor], objective, site: GateSite, denoiser,
           groups, total: float, budget: PruneBudget, scope: Scope, iteration: int, ranking: str = "learned") -> None:
    """Cut `logits` to the budget, measure that mask, and keep the logits if it is the best so far."""
    kept = select(groups, logits, total, budget, scope)
    loss = binarized_loss(objective, site, denoiser, groups, kept)
    history["checks"].append({"iteration": iteration + 1, "loss": loss, "ranking": ranking})
    if history["best"] is None or loss < min(c["loss"] for c in history["checks"][:-1]):
        history["best"] = iteration + 1
        with torch.no_grad():
            for best, logit in zip(tracked.best, logits):
                best.copy_(logit)
