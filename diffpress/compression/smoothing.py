"""Smoothing: migrate activation outliers into the weights, per layer (SmoothQuant; ViDiT-Q's
per-layer strength search for diffusion transformers).

For input channel j: s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha). The layer computes
Q(X / s) Q(W * s)^T, mathematically equal to X W^T before quantization, with activation outliers
damped and the weights' columns scaled up to take them. `alpha` is searched per layer on captured
calibration inputs: the alpha with the smallest output error of the quantized layer wins.
"""
from __future__ import annotations

import torch
from torch import nn

DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(0, 11))


def weight_channel_absmax(module: nn.Module) -> torch.Tensor:
    """max |W| per input channel: (K,) for linear, (C/groups,) for conv (over out, kh, kw)."""
    weight = module.weight.detach().float()
    return weight.abs().amax(dim=0) if weight.dim() == 2 else weight.abs().amax(dim=(0, 2, 3))


def smoothing_factors(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-input-channel divisors s (float32); channels that are all-zero keep s = 1."""
    act = act_absmax.float().clamp_min(1e-5)
    weight = weight_absmax.float().clamp_min(1e-5)
    factors = act.pow(alpha) / weight.pow(1 - alpha)
    return torch.where((act_absmax > 0) & (weight_absmax > 0), factors, torch.ones_like(factors)).clamp(1e-4, 1e4)


def smoothed_weight(module: nn.Module, factors: torch.Tensor) -> torch.Tensor:
    """The flattened (N, K) weight with input-channel columns multiplied by the factors."""
    weight = module.weight.detach().float()
    if weight.dim() == 2:
        return weight * factors
    return (weight * factors.reshape(1, -1, 1, 1)).reshape(weight.shape[0], -1)


def supports_smoothing(module: nn.Module) -> bool:
    """Per-input-channel factors need every output to see every input channel (groups == 1)."""
    return not isinstance(module, nn.Conv2d) or module.groups == 1
