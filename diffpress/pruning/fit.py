"""Fitting gates end to end: the loop that mask learning (width, `learn.py`) and learned depth
(`depth_learn.py`) share, and the two objectives they fit.

A *site* holds the current gate values as leaf tensors (`site.masks`: name -> tensor) that its hooks
read: `gates.GateSite` scales consumer input columns, `depth_learn.BlockSite` mixes a block's output
with its pass-through. Each iteration draws gate values from the parameterization (with a graph back
to its logits), puts detached leaf copies in the site, lets the objective backpropagate one batch into
the leaves one denoiser step at a time, then carries the leaves' gradients to the logits in one pass
(with an optional budget term) and steps the optimizer. Other trainable tensors the objective reaches
(LoRA adapters co-trained with a depth mask) get their gradients directly.

Objectives (`LearnObjective`):
- trajectory: the final latent of the gated pipeline against the float pipeline's for the same
  (item, seed) batches, through timestep gradient checkpointing (`trajectory.py`); optionally plus
  `step_loss` times the per-step output error on the float trajectory's recorded calls.
- replay: the denoiser's relative output error on replayed calibration calls (every timestep bucket in
  turn) against the float outputs recorded before any gate acts. No pipeline needed.

`held_out` builds the same objective on other data (twice as many trajectories from other noise seeds; the
reservoir's next calls of each bucket, where it has them), on which the learners choose among the binary
masks they pass through by the geometric mean of the per-sample error (`evaluate`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import CalibrationSet
from ..compression.sensitivity.output_metric import output_tensor
from ..errors import DiffpressError, InputError
from ..metrics import relative_error
from .trajectory import RecordedCall, Trajectory, final_latents


def check_finite(loss: torch.Tensor, where: str, remedy: str = "lower learning_rate") -> None:
    if not torch.isfinite(loss):
        raise DiffpressError(f"{where} diverged (loss {loss.item()}); {remedy}")


def batches_of(items: Sequence, samples: int, batch_size: int, seed: int) -> list[tuple[list, int]]:
    """(items, noise seed) per batch; sample i uses item i % len(items)."""
    chosen = [items[i % len(items)] for i in range(samples)]
    return [(chosen[start:start + batch_size], seed + index)
            for index, start in enumerate(range(0, samples, batch_size))]


class TrajectoryObjective:
    """Final-latent MSE (relative to the target's power) of the gated pipeline against the float one, plus
    `step_loss` x the mean relative output error on the float trajectory's calls (0: none). The float
    trajectories' denoiser calls are kept (on the CPU) for every batch with a step loss, else for the first
    `record_batches` (what `sample_calls` draws from)."""

    def __init__(self, pipe, items: Sequence, trajectory: Trajectory, samples: int, batch_size: int, seed: int,
                 step_loss: float = 0.0, checkpoint_steps: bool = True, record_batches: int = 0) -> None:
        if pipe is None or not items:
            raise InputError("the trajectory objective samples the pipeline: give a pipeline and prompts or labels",
                             "objective")
        self.pipe, self.trajectory, self.step_loss = pipe, trajectory, step_loss
        self.checkpoint_steps = checkpoint_steps
        self.batches = batches_of(items, samples, batch_size, seed)
        self.calls: list[list[RecordedCall]] = [[] for _ in self.batches]
        recorded = len(self.batches) if step_loss else min(len(self.batches), record_batches)
        self.targets = [final_latents(pipe, batch, noise, trajectory, record=self.calls[i] if i < recorded else None)
                        for i, (batch, noise) in enumerate(self.batches)]
        self.power = [t.float().square().mean().clamp_min(1e-12) for t in self.targets]

    def __len__(self) -> int:
        return len(self.batches)

    def sample_calls(self, denoiser: nn.Module, count: int) -> list:
        """`count` of the float trajectories' recorded calls, spread evenly over batches and steps, as
        zero-argument callables that replay them through `denoiser`."""
        every = [call for calls in self.calls for call in calls]
        picked = every[::max(1, len(every) // count)][:count]
        return [lambda call=call: call.replay(denoiser) for call in picked]

    def evaluate(self, site, denoiser: nn.Module) -> float:
        """The geometric mean over samples of each sample's relative final-latent error, with the gates `site`
        holds, without a gradient (robust: a few trajectories that fall to another mode dominate a plain mean
        over a few dozen samples)."""
        logs = []
        for (items, noise), target in zip(self.batches, self.targets):
            latent = final_latents(self.pipe, items, noise, self.trajectory).float()
            target = target.float()
            error = (latent - target).square().flatten(1).mean(1) / target.square().flatten(1).mean(1).clamp_min(1e-12)
            logs.append(error.clamp_min(1e-30).log())
        return float(torch.cat(logs).mean().exp())

    def backward(self, iteration: int, site, denoiser: nn.Module) -> float:
        index = iteration % len(self.batches)
        items, noise = self.batches[index]
        latent = final_latents(self.pipe, items, noise, self.trajectory, grad=True, site=site,
                               checkpoint_steps=self.checkpoint_steps)
        loss = (latent.float() - self.targets[index].float()).square().mean() / self.power[index]
        check_finite(loss, f"learning at iteration {iteration}")
        loss.backward()
        calls = self.calls[index] if self.step_loss else []
        for call in calls:
            with torch.enable_grad():
                term = relative_error(call.output, call.replay(denoiser)) * (self.step_loss / len(calls))
            check_finite(term, f"learning at iteration {iteration}")
            term.backward()
        return float(loss.detach())


class ReplayObjective:
    """Relative output error of the gated denoiser on replayed calibration calls, `per_bucket` per timestep
    bucket, against the float outputs recorded at construction (before any gate acts)."""

    def __init__(self, denoiser: nn.Module, calibration: CalibrationSet | None, per_bucket: int = 2,
                 skip: int = 0) -> None:
        from .depth import calibration_entries, denoiser_outputs

        if calibration is None:
            raise InputError("the replay objective replays calibration calls: give a calibration set", "objective")
        if skip:  # the calls after the first `skip` of each bucket (held out), where the reservoir has them
            entries = [e for b in sorted(calibration.reservoir) for e in calibration.reservoir[b][skip:skip + per_bucket]]
            self.entries = entries or calibration_entries(calibration, per_bucket)
        else:
            self.entries = calibration_entries(calibration, per_bucket)
        self.targets = denoiser_outputs(denoiser, self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def sample_calls(self, denoiser: nn.Module, count: int) -> list:
        """Up to `count` of the replayed calls, spread evenly, as zero-argument callables."""
        picked = self.entries[::max(1, len(self.entries) // count)][:count]
        return [lambda entry=entry: denoiser(**entry.call_kwargs()) for entry in picked]

    def evaluate(self, site, denoiser: nn.Module) -> float:
        """The geometric mean of the output error over every replayed call with the gates `site` holds, without
        a gradient."""
        with torch.no_grad():
            logs = [relative_error(target, output_tensor(denoiser(**entry.call_kwargs()))).clamp_min(1e-30).log()
                    for entry, target in zip(self.entries, self.targets)]
        return float(torch.stack(logs).mean().exp())

    def backward(self, iteration: int, site, denoiser: nn.Module) -> float:
        index = iteration % len(self.entries)
        with torch.enable_grad():
            loss = relative_error(self.targets[index], output_tensor(denoiser(**self.entries[index].call_kwargs())))
        check_finite(loss, f"learning at iteration {iteration}")
        loss.backward()
        return float(loss.detach())


HELD_OUT_SEED = 7919  # noise seeds of the held-out trajectories start here (after the learning targets')
HELD_OUT_BATCH = 16


def held_out(objective, denoiser: nn.Module, calibration: CalibrationSet | None = None):
    """The objective of the same kind on held-out data: twice as many trajectories as the learning targets
    (batches of at least 16), from other noise seeds; or the replay reservoir's next calls."""
    if isinstance(objective, ReplayObjective):
        return ReplayObjective(denoiser, calibration, per_bucket=2, skip=2)
    items = [item for items, _ in objective.batches for item in items]
    batch = max(len(objective.batches[0][0]), HELD_OUT_BATCH)
    return TrajectoryObjective(objective.pipe, items, objective.trajectory, 2 * len(items), batch,
                               objective.batches[0][1] + HELD_OUT_SEED)


def fit_step(site, objective, denoiser: nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
             masks: dict[str, torch.Tensor], budget_term: torch.Tensor | None = None) -> float:
    """One iteration: the objective's gradient at the gate values `masks` (carried to their parameters), plus
    `budget_term`'s, then one optimizer step. Returns the objective's loss."""
    optimizer.zero_grad(set_to_none=True)
    site.masks = {name: value.detach().requires_grad_() for name, value in masks.items()}
    try:
        loss = objective.backward(iteration, site, denoiser)
    finally:
        leaves, site.masks = site.masks, {}
    pairs = [(masks[name], leaf.grad) for name, leaf in leaves.items()
             if leaf.grad is not None and masks[name].requires_grad]
    if budget_term is not None and budget_term.requires_grad:
        pairs.append((budget_term, None))
    if pairs:
        torch.autograd.backward([tensor for tensor, _ in pairs], [grad for _, grad in pairs])
    optimizer.step()
    return loss


def progress_bar(start: int, iterations: int, label: str, progress: bool):
    return tqdm(range(start, iterations), desc=label, unit="it", disable=not progress, initial=start,
                total=iterations)

