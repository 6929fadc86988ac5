"""The sampling trajectory as a differentiable function of the gates, for any diffusers-style pipeline.

The pipeline's own `__call__` runs (no forked pipeline): its `torch.no_grad` decorator is stepped
around (`__wrapped__`), and with `checkpoint_steps` every denoiser call becomes one autograd node
(`_DenoiserStep`): its forward runs the denoiser under no_grad and keeps only the call's input
tensors and the gate masks; its backward recomputes that one step with grad and returns the
gradients of the step's inputs and of the masks (trainable parameters, such as LoRA adapters
co-trained with a depth mask, get theirs accumulated as in reentrant checkpointing). That is timestep gradient checkpointing (EcoDiff's
memory trick, generic): peak memory is one step's graph plus the T step inputs, instead of T graphs.
Without it (`checkpoint_steps=False`) memory grows with the number of steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..calibration.collector import find_denoiser
from ..compression.sensitivity.output_metric import output_tensor
from .gates import GateSite


class _DenoiserStep(torch.autograd.Function):
    """One denoiser call as one node: `run(*tensors)` -> output tensor, recomputed with grad in backward."""

    @staticmethod
    def forward(ctx, run, *tensors):
        ctx.run = run
        ctx.save_for_backward(*tensors)
        with torch.no_grad():
            return run(*tensors)

    @staticmethod
    def backward(ctx, grad_output):
        tensors = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        run, ctx.run = ctx.run, None  # the recomputed graph must not outlive this backward
        with torch.enable_grad():
            output = run(*tensors)
        if output.requires_grad:  # also accumulates into trainable parameters the step reaches (LoRA adapters)
            torch.autograd.backward(output, grad_output)
        return (None, *[t.grad if t.requires_grad else None for t in tensors])


def _tensor_slots(args: tuple, kwargs: dict) -> list:
    return [("arg", i) for i, a in enumerate(args) if isinstance(a, torch.Tensor)] + \
        [("kw", k) for k, v in kwargs.items() if isinstance(v, torch.Tensor)]


def _rebuilt(args: tuple, kwargs: dict, slots: list, tensors) -> tuple[list, dict]:
    args, kwargs = list(args), dict(kwargs)
    for (where, key), tensor in zip(slots, tensors):
        if where == "arg":
            args[key] = tensor
        else:
            kwargs[key] = tensor
    return args, kwargs


def _rewrapped(output, tensor: torch.Tensor):
    """The denoiser's return value with its predicted tensor replaced."""
    if isinstance(output, torch.Tensor):
        return tensor
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    first = dataclasses.fields(output)[0].name
    return dataclasses.replace(output, **{first: tensor})


@contextlib.contextmanager
def stepwise_calls(denoiser: nn.Module, site: GateSite) -> Iterator[None]:
    """Every call of `denoiser` inside the block is one `_DenoiserStep` node, differentiable with respect to its
    tensor inputs and to the masks `site` applies."""
    had_own = "forward" in denoiser.__dict__
    original = denoiser.forward

    def forward(*args, **kwargs):
        slots = _tensor_slots(args, kwargs)
        inputs = [args[key] if where == "arg" else kwargs[key] for where, key in slots]
        names = list(site.masks)
        first = {}

        def run(*tensors):
            saved = site.masks
            site.masks = dict(zip(names, tensors[len(slots):]))
            try:
                call_args, call_kwargs = _rebuilt(args, kwargs, slots, tensors[:len(slots)])
                output = original(*call_args, **call_kwargs)
            finally:
                site.masks = saved
            first.setdefault("output", output)  # the no-grad forward's; never the recomputed (graph-holding) one
            return output_tensor(output)

        predicted = _DenoiserStep.apply(run, *inputs, *[site.masks[n] for n in names])
        return _rewrapped(first["output"], predicted)

    denoiser.forward = forward
    try:
        yield
    finally:
        if had_own:
            denoiser.forward = original
        else:
            del denoiser.forward


@dataclass
class RecordedCall:
    """One denoiser call of a sampling run: its arguments (tensors detached, on the CPU) and its output tensor."""

    arguments: list  # the flattened (args, kwargs): tensors on the CPU
    structure: object  # their pytree structure
    devices: list  # each flattened leaf's device (None for non-tensors)
    output: torch.Tensor

    def replay(self, denoiser: nn.Module) -> torch.Tensor:
        """The denoiser's output tensor on these arguments, each on its own device (with grad where grad is
        enabled)."""
        leaves = [v.to(device) if device is not None else v for v, device in zip(self.arguments, self.devices)]
        args, kwargs = tree_unflatten(leaves, self.structure)
        return output_tensor(denoiser(*args, **kwargs))


@contextlib.contextmanager
def recorded_calls(denoiser: nn.Module, into: list[RecordedCall]) -> Iterator[None]:
    """Every call of `denoiser` inside the block is appended to `into` (for the per-step loss of mask learning)."""
    def hook(module, args, kwargs, output):
        leaves, structure = tree_flatten((args, kwargs))
        devices = [v.device if isinstance(v, torch.Tensor) else None for v in leaves]
        stored = [v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v for v in leaves]
        into.append(RecordedCall(stored, structure, devices, output_tensor(output).detach().to("cpu", copy=True)))

    handle = denoiser.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _unwrapped_call(pipe):
    call = type(pipe).__call__
    while hasattr(call, "__wrapped__"):
        call = call.__wrapped__
    return call


def _final(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    images = getattr(output, "images", None)
    if isinstance(images, torch.Tensor):
        return images
    if isinstance(output, (tuple, list)) and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the pipeline returned {type(output).__name__}; expected a tensor or an output with .images "
                    "(output_type='latent')")


@dataclass(frozen=True)
class Trajectory:
    """How the pipeline samples: `steps` denoising steps, guidance as the pipeline defaults unless given."""

    steps: int
    guidance_scale: float | None = None

    def kwargs(self, pipe, items: Sequence, generator: torch.Generator) -> dict:
        parameters = inspect.signature(_unwrapped_call(pipe)).parameters
        kwargs = {"num_inference_steps": self.steps, "generator": generator}
        if "class_labels" in parameters:
            kwargs["class_labels"] = list(items)
        else:
            kwargs["prompt"] = list(items)
        if "output_type" in parameters:
            kwargs["output_type"] = "latent"
        if self.guidance_scale is not None and "guidance_scale" in parameters:
            kwargs["guidance_scale"] = self.guidance_scale
        if "progress" in parameters:
            kwargs["progress"] = False
        return kwargs


def final_latents(pipe, items: Sequence, seed: int, trajectory: Trajectory, *, grad: bool = False,
                  site: GateSite | None = None, checkpoint_steps: bool = True,
                  record: list[RecordedCall] | None = None) -> torch.Tensor:
    """The pipeline's final latent (or image, for pipelines without a latent output) for `items` from the
    noise of `seed`; with `grad`, differentiable with respect to the masks of `site` (stepwise, one node per
    denoiser call, when `checkpoint_steps`; else through every step's whole graph). Without `grad`, the
    denoiser's calls are appended to `record` when it is given."""
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    kwargs = trajectory.kwargs(pipe, items, torch.Generator().manual_seed(seed))
    if not grad:
        recording = recorded_calls(find_denoiser(pipe), record) if record is not None else contextlib.nullcontext()
        with torch.no_grad(), recording:
            return _final(pipe(**kwargs)).detach()
    denoiser = find_denoiser(pipe)
    steps = stepwise_calls(denoiser, site) if checkpoint_steps and site is not None else contextlib.nullcontext()
    with torch.enable_grad(), steps:
        return _final(_unwrapped_call(pipe)(pipe, **kwargs))
