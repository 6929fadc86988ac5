"""The sampling trajectory as a differentiable function of the gates, for any diffusers-style pipeline.

The pipeline's own `__call__` runs (no forked pipeline): its `torch.no_grad` decorator is stepped
around (`__wrapped__`), and with `checkpoint_steps` every denoiser call runs under non-reentrant
activation checkpointing. That is timestep gradient checkpointing (EcoDiff's memory trick, generic):
the forward keeps only each step's inputs (the T latents; the prompt embeddings are shared), and the
backward recomputes one denoiser step at a time, so peak memory is one step's graph plus T latents
instead of T graphs. Without it (`checkpoint_steps=False`) memory grows with the number of steps.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..calibration.collector import find_denoiser


@contextlib.contextmanager
def checkpointed_calls(denoiser: nn.Module) -> Iterator[None]:
    """Every call of `denoiser` inside the block is activation-checkpointed (recomputed in backward)."""
    had_own = "forward" in denoiser.__dict__
    original = denoiser.forward

    def forward(*args, **kwargs):
        return checkpoint(original, *args, use_reentrant=False, **kwargs)

    denoiser.forward = forward
    try:
        yield
    finally:
        if had_own:
            denoiser.forward = original
        else:
            del denoiser.forward


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
                  checkpoint_steps: bool = True) -> torch.Tensor:
    """The pipeline's final latent (or image, for pipelines without a latent output) for `items` from the
    noise of `seed`; with `grad`, differentiable with respect to anything the denoiser's hooks use."""
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    kwargs = trajectory.kwargs(pipe, items, torch.Generator().manual_seed(seed))
    if not grad:
        with torch.no_grad():
            return _final(pipe(**kwargs)).detach()
    denoiser = find_denoiser(pipe)
    steps = checkpointed_calls(denoiser) if checkpoint_steps else contextlib.nullcontext()
    with torch.enable_grad(), steps:
        return _final(_unwrapped_call(pipe)(pipe, **kwargs))
