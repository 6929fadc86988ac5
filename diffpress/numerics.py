"""Non-finite values named where they first appear, not as a NaN metric at the end.

`nonfinite_guard(denoiser)` checks each denoiser call's output (one reduction per call). When an output
holds NaN or Inf, the call is run again with a forward hook on every module to find the first one whose
output is not finite, and `NumericError` names it, the timestep, and an fp16 overflow when that is what
happened. `check_weights` does the same for a layer's weights before they are quantized.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Iterator

import torch
from torch import nn

from .errors import NumericError

FP16_MAX = 65504.0


def describe(tensor: torch.Tensor) -> str:
    """'NaN' / 'Inf' / 'NaN and Inf', with the count."""
    nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
    kinds = [f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else ""]
    return " and ".join(kind for kind in kinds if kind)


def check_weights(fqn: str, module: nn.Module) -> None:
    """NumericError naming the layer when its weight holds NaN or Inf (a corrupt or diverged checkpoint)."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point() and not torch.isfinite(weight).all():
        raise NumericError(f"layer {fqn!r}: the weight holds {describe(weight)} values; the checkpoint is corrupt "
                           "or diverged, and a quantization scale cannot be computed from it")


def _output_tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    for name in ("sample", "noise_pred"):
        if isinstance(getattr(output, name, None), torch.Tensor):
            return getattr(output, name)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _timestep(signature: inspect.Signature, args, kwargs) -> str:
    try:
        timestep = signature.bind(*args, **kwargs).arguments.get("timestep")
    except TypeError:
        return "?"
    if timestep is None:
        return "?"
    return f"{float(torch.as_tensor(timestep).detach().float().flatten()[0]):g}"


@contextlib.contextmanager
def nonfinite_guard(denoiser: nn.Module, what: str = "sampling") -> Iterator[None]:
    """Raise NumericError at the first denoiser call whose output is not finite, naming the layer and timestep."""
    signature = inspect.signature(denoiser.forward)
    state = {"call": None, "locating": False}

    def before(module, args, kwargs):
        if not state["locating"]:
            state["call"] = (args, kwargs)

    def after(module, args, kwargs, output):
        tensor = _output_tensor(output)
        if state["locating"] or tensor is None or bool(torch.isfinite(tensor).all()):
            return
        call_args, call_kwargs = state["call"]
        timestep = _timestep(signature, call_args, call_kwargs)
        state["locating"] = True
        try:
            located = first_nonfinite_module(denoiser, call_args, call_kwargs)
        finally:
            state["locating"] = False
        raise NumericError(f"{what}: the denoiser output holds {describe(tensor)} values at timestep {timestep}; "
                           f"{located}")

    handles = [denoiser.register_forward_pre_hook(before, with_kwargs=True),
               denoiser.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def first_nonfinite_module(denoiser: nn.Module, args, kwargs) -> str:
    """Run the call again and say which module, in execution order, first returned NaN or Inf."""
    found: list[str] = []

    def hook(name):
        def check(module, inputs, output):
            tensor = _output_tensor(output)
            if found or tensor is None or not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
                return
            found.append(_blame(name, module, inputs, tensor))
        return check

    handles = [module.register_forward_hook(hook(name)) for name, module in denoiser.named_modules()
               if name and not any(True for _ in module.children())]
    try:
        with torch.no_grad():
            denoiser(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else "no single layer's output was non-finite when the call was repeated"


def _blame(name: str, module: nn.Module, inputs, output: torch.Tensor) -> str:
    text = f"first produced by layer {name!r} ({type(module).__name__}, {describe(output)} in its output)"
    finite_inputs = [t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if finite_inputs and not all(bool(torch.isfinite(t).all()) for t in finite_inputs):
        return text + " from a non-finite input"
    if output.dtype == torch.float16 and bool(torch.isinf(output).any()):
        largest = max((float(t.abs().max()) for t in finite_inputs), default=0.0)
        return text + (f": fp16 overflow (outputs beyond {FP16_MAX:g}; inputs up to {largest:.4g}); run this layer "
                       "in bf16 or fp32, or keep it in high precision")
    return text
