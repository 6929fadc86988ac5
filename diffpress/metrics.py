"""Error metrics shared by quantizers, sensitivity, eval, tests and benchmarks."""
from __future__ import annotations

import math

import torch


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(|ref|^2 / |ref - approx|^2); inf if equal."""
    reference, approximation = reference.double(), approximation.double()
    noise = (reference - approximation).square().sum().item()
    signal = reference.square().sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf
