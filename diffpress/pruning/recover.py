"""Recovery: a short distillation of the pruned denoiser from the float one, on calibration calls (no dataset).

Before the model is cut, `record_teacher` replays calibration calls (denoiser inputs recorded along
the float model's own trajectories, every timestep bucket) through the float model and keeps its
outputs and the outputs of the blocks that will survive. `distill` then trains the pruned model's
weights for `steps` Adam steps, one call per step, on

    |f_s(x) - f_t(x)|^2 / |f_t(x)|^2 + feature_weight * mean_b |h_s,b(x) - h_t,b(x)|^2 / |h_t,b(x)|^2

where h_b is the output of surviving block b. Every feature term is normalized by the teacher
feature's own power (LAPTOP-Diff): un-normalized feature losses differ by orders of magnitude
between blocks and the largest would dominate. The teacher copy is never held: its targets are
recorded on the CPU once, so memory is the model plus the recorded tensors (and, while training, a
CPU copy of the pruned weights). The trained weights are kept only when they lower the output error
(a model already close to the teacher can be moved away by a few hundred steps); otherwise the
pruned weights are put back and the result says so (`Recovery.kept`). That error is judged on
held-out calls -- the reservoir's next calls of each bucket, never trained on -- where the
calibration set has them, else on the training calls (`Recovery.judged_on`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import CalibrationSet
from ..compression.sensitivity.output_metric import output_tensor
from ..metrics import relative_error
from .depth import calibration_entries, output_error
from .training import optimizer_step


@dataclass
class TeacherTargets:
    calls: list  # calibration entries
    outputs: list[torch.Tensor]
    features: list[dict[str, list[torch.Tensor]]]  # per call: block name -> its output tensors
    held_out_calls: list = field(default_factory=list)  # calls not trained on, that judge the result
    held_out_outputs: list[torch.Tensor] = field(default_factory=list)


@dataclass
class Recovery:
    losses: list[float] = field(default_factory=list)
    output_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    output_loss_before: float = float("nan")  # mean relative output error over the judging calls
    output_loss_after: float = float("nan")  # of the trained weights (kept or not)
    kept: bool = True  # False: training raised the output error, and the pruned weights were put back
    judged_on: str = "training calls"  # or "held-out calls": where before / after were measured

    def to_dict(self) -> dict:
        return {"steps": len(self.losses), "seconds": round(self.seconds, 2),
                "output_loss_before": self.output_loss_before, "output_loss_after": self.output_loss_after,
                "kept": self.kept, "judged_on": self.judged_on, "loss": self.losses,
                "output_loss": self.output_losses}


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [o for o in output if isinstance(o, torch.Tensor)]
    return [output_tensor(output)]


@contextlib.contextmanager
def _capturing(model: nn.Module, names: list[str], into: dict):
    handles = []
    for name in names:
        def hook(module, args, output, name=name):
            into[name] = _tensors(output)

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def record_teacher(model: nn.Module, calibration: CalibrationSet, feature_blocks: list[str],
                   per_bucket: int = 2) -> TeacherTargets:
    """The float model's outputs and surviving-block outputs on `per_bucket` calibration calls per bucket, and
    its outputs on up to `per_bucket` more calls per bucket (held out, where the reservoir has them)."""
    calls = calibration_entries(calibration, per_bucket)
    held_out = [e for bucket in sorted(calibration.reservoir)
                for e in calibration.reservoir[bucket][per_bucket:2 * per_bucket]]
    outputs, features = [], []
    with torch.no_grad():
        for entry in calls:
            captured: dict = {}
            with _capturing(model, feature_blocks, captured):
                outputs.append(output_tensor(model(**entry.call_kwargs())).detach().float().cpu())
            features.append({k: [t.detach().float().cpu() for t in v] for k, v in captured.items()})
        held_out_outputs = [output_tensor(model(**e.call_kwargs())).detach().float().cpu() for e in held_out]
    return TeacherTargets(calls, outputs, features, held_out, held_out_outputs)


def output_loss(model: nn.Module, teacher: TeacherTargets, held_out: bool = False) -> float:
    """Mean relative output error of `model` against the teacher over the recorded training calls, or (held_out)
    over the held-out calls where there are any."""
    if held_out and teacher.held_out_calls:
        return output_error(model, teacher.held_out_calls, teacher.held_out_outputs)
    return output_error(model, teacher.calls, teacher.outputs)


def distill(model: nn.Module, teacher: TeacherTargets, steps: int, learning_rate: float = 1e-4,
            feature_weight: float = 1.0, seed: int = 0, progress: bool = False,
            keep_if_better: bool = True) -> Recovery:
    """Train `model`'s weights toward the teacher targets for `steps` steps (in place); the loss curve. With
    `keep_if_better`, the trained weights stay only if they lower the output error on the held-out calls (the
    training calls where there are none); otherwise the weights from before (held on the CPU meanwhile) are put
    back."""
    started = time.perf_counter()
    parameters = [p for p in model.parameters() if p.requires_grad and p.numel()]
    before = [p.detach().to("cpu", copy=True) for p in parameters] if keep_if_better else None
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    order = torch.randperm(len(teacher.calls), generator=torch.Generator().manual_seed(seed)).tolist()
    recovery = Recovery(judged_on="held-out calls" if teacher.held_out_calls else "training calls")
    names = sorted(teacher.features[0]) if teacher.features else []
    was_training = model.training
    model.train(False)  # dropout off: the teacher ran in eval mode
    recovery.output_loss_before = output_loss(model, teacher, held_out=True)
    try:
        with tqdm(range(steps), desc="recover", unit="step", disable=not progress) as bar:
            for step in bar:
                index = order[step % len(order)]
                captured: dict = {}
                with torch.enable_grad(), _capturing(model, names, captured):
                    output = output_tensor(model(**teacher.calls[index].call_kwargs()))
                    step_output_loss = relative_error(teacher.outputs[index], output)
                    terms = [relative_error(t, s) for name in names
                             for s, t in zip(captured.get(name, []), teacher.features[index][name])]
                    feature_loss = torch.stack(terms).mean() if terms else step_output_loss.new_zeros(())
                    loss = step_output_loss + feature_weight * feature_loss
                optimizer_step(optimizer, loss, f"recovery at step {step}", "lower the recovery learning rate")
                recovery.losses.append(float(loss.detach()))
                recovery.output_losses.append(float(step_output_loss.detach()))
                bar.set_postfix(loss=f"{recovery.losses[-1]:.4f}")
    finally:
        model.train(was_training)
        optimizer.zero_grad(set_to_none=True)
    recovery.output_loss_after = output_loss(model, teacher, held_out=True)
    if before is not None and not recovery.output_loss_after < recovery.output_loss_before:
        recovery.kept = False
        with torch.no_grad():
            for parameter, saved in zip(parameters, before):
                parameter.copy_(saved)
    recovery.seconds = time.perf_counter() - started
    return recovery
