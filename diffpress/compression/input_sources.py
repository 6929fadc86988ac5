"""Structural facts about layer inputs, read from the running denoiser instead of layer-name lists.

Two methods depend on where a layer's input comes from:

- Shortcut splitting (Q-Diffusion, Li et al. 2023) needs the convs whose input is a channel
  concatenation (a UNet up block concatenates the upsampled features with the encoder skip, whose
  ranges differ by several times). One replayed call runs under a torch-function mode that records
  each 4-D `torch.cat` along channels and follows the result through channel-preserving ops
  (group norm, activations, dropout); a Conv2d that receives such a tensor gets the split channel.
- BOS-aware quantization (MixDQ, Zhao et al. 2024) needs the linear layers whose first input token
  is the same for every prompt and timestep: with a causal text encoder (CLIP) the BOS embedding
  does not depend on the prompt, so the layer's output for it can be computed once in float.
  Replaying every calibration call and comparing each candidate layer's first token checks exactly
  that invariant: image-token layers (noise differs per call) and bidirectional text encoders (T5:
  the first token depends on the prompt) fail it and are quantized normally.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .layer_inputs import replay

# ops that keep a tensor's channel layout, so a split found on their input holds for their output
_CHANNEL_PRESERVING = {
    nn.functional.group_norm, nn.functional.silu, nn.functional.gelu, nn.functional.relu,
    nn.functional.mish, nn.functional.dropout, torch.Tensor.contiguous, torch.Tensor.to, torch.Tensor.float,
}
_CONCATS = {torch.cat, torch.concat, torch.concatenate}


class _ConcatTracker(TorchFunctionMode):
    """Records channel concatenations of two 4-D tensors and the tensors derived from them channel-wise."""

    def __init__(self) -> None:
        super().__init__()
        self.splits: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (tensor kept alive, split channel)

    def split_of(self, tensor) -> int | None:
        found = self.splits.get(id(tensor))
        return found[1] if found is not None and found[0] is tensor else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CONCATS:
            self._record_concat(out, args, kwargs)
        elif func in _CHANNEL_PRESERVING and args and isinstance(out, torch.Tensor):
            split = self.split_of(args[0])
            if split is not None and out.shape == args[0].shape:
                self.splits[id(out)] = (out, split)
        return out

    def _record_concat(self, out, args, kwargs) -> None:
        tensors = args[0] if args else kwargs.get("tensors", ())
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if len(tensors) == 2 and out.dim() == 4 and dim in (1, -3):
            self.splits[id(out)] = (out, int(tensors[0].shape[1]))


def find_concat_splits(denoiser: nn.Module, call_kwargs: dict) -> dict[str, int]:
    """Conv2d fqn -> the channel where its concatenated input's two parts meet, from one call."""
    tracker, found = _ConcatTracker(), {}

    def hook_for(name):
        def hook(module, args):
            split = tracker.split_of(args[0]) if args else None
            if split is not None and module.groups == 1:
                found[name] = split
        return hook

    convs = [(name, m) for name, m in denoiser.named_modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in convs]
    replay(denoiser, [call_kwargs], handles, mode=tracker)
    return found


def find_constant_first_tokens(denoiser: nn.Module, calls: list[dict], layers: set[str],
                               rtol: float = 1e-5) -> dict[str, torch.Tensor]:
    """Linear fqn -> its first input token (K,), for the layers where that token is the same in every
    batch row of every call. Needs at least two calls to count as evidence."""
    first: dict[str, torch.Tensor] = {}
    varies: set[str] = set()

    def hook_for(name):
        def hook(module, args):
            x = args[0]
            if x.dim() != 3:
                varies.add(name)
                return
            tokens = x[:, 0, :].detach().float()
            reference = first.setdefault(name, tokens[0].clone())
            if not torch.allclose(tokens, reference.expand_as(tokens), rtol=rtol, atol=rtol * float(reference.abs().max())):
                varies.add(name)
        return hook

    handles = [denoiser.get_submodule(name).register_forward_pre_hook(hook_for(name)) for name in layers]
    replay(denoiser, calls, handles)
    if len(calls) < 2:
        return {}
    return {name: token for name, token in first.items() if name not in varies}
