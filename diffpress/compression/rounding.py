"""Learned rounding on calibration inputs (AdaRound; the reconstruction step of BRECQ, Q-Diffusion
and EDA-DM), on INT and FP grids alike (the learned-rounding FP variant of "Low-Bitwidth Floating
Point Quantization for Efficient High-Quality Diffusion Models").

Each scaled weight w/s (+ the zero point z of an asymmetric format) lies between two neighbouring grid
values lo <= w/s + z <= hi (uniform steps for INT, the exponent-dependent steps of e4m3/e2m1 for FP).
Instead of rounding to the nearest, a per-weight variable V chooses: w_q = s (lo + h(V) (hi - lo) - z),
h the rectified sigmoid. V is
fitted so the layer's output on captured inputs matches the float output,
|X_q W_q^T - X W^T|^2 / |X W^T|^2 + lambda * sum(1 - |2h - 1|^beta), with beta annealed from 20
to 2 so h ends at 0 or 1; the final codes are exactly lo or hi. This is layer-wise reconstruction
(each layer on its own float inputs); `block_reconstruction` fits all layers of a block jointly
(BRECQ) with the same variables.
"""
from __future__ import annotations

import torch

from ..formats import QuantFormat, encode, grid_values
from ..kernels.layout import PackedWeight, pack
from ..kernels.reference import expand_scales, zero_point_offsets

ZETA, GAMMA = 1.1, -0.1


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def grid_neighbours(scaled: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid values either side of each (clamped) value of `scaled`; `grid` sorted."""
    clamped = scaled.clamp(grid[0], grid[-1])
    index = (torch.searchsorted(grid, clamped, right=True) - 1).clamp(0, len(grid) - 2)
    return grid[index], grid[index + 1]


class RoundingVariables:
    """The per-weight choice between the two grid neighbours of w/s, as a trainable soft weight."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, packed_like: PackedWeight) -> None:
        self.packed_like, self.shape = packed_like, tuple(weight.shape)
        self.full_scales = expand_scales(scales, packed_like.granularity, packed_like.group_size, self.shape)
        self.offsets = zero_point_offsets(packed_like)  # 0 for symmetric formats
        scaled = weight.float() / self.full_scales + self.offsets
        self.lower, self.upper = grid_neighbours(scaled, grid_values(packed_like.format))
        self.step = (self.upper - self.lower).clamp_min(1e-12)
        fraction = ((scaled - self.lower) / self.step).clamp(0.01, 0.99)
        self.variable = (-torch.log((ZETA - GAMMA) / (fraction - GAMMA) - 1)).requires_grad_(True)
        self.scales = scales

    def soft_weight(self) -> torch.Tensor:
        return self.full_scales * (self.lower + _rectified_sigmoid(self.variable) * self.step - self.offsets)

    def penalty(self, beta: float | None) -> torch.Tensor:
        """Pushes every h(V) to 0 or 1 (zero before the warm-up ends)."""
        if beta is None:
            return torch.zeros(())
        return (1 - (2 * _rectified_sigmoid(self.variable) - 1).abs().pow(beta)).mean()

    def packed(self) -> PackedWeight:
        """The hard choice: each weight at its lower or upper neighbour."""
        like = self.packed_like
        with torch.no_grad():
            chosen = torch.where(_rectified_sigmoid(self.variable) >= 0.5, self.upper, self.lower)
        return PackedWeight(pack(encode(chosen, like.format), like.format), self.scales, like.format,
                            like.granularity, like.group_size, self.shape, like.zero_points)


def learn_rounding(weight: torch.Tensor, scales: torch.Tensor, packed_like: PackedWeight, inputs: torch.Tensor,
                   quantized_inputs: torch.Tensor, iterations: int = 300, regularization: float = 0.01,
                   learning_rate: float = 0.01, seed: int = 0) -> PackedWeight:
    """A PackedWeight whose codes minimize the output error on `inputs` (rows (M, K)).

    `quantized_inputs` are the same rows as the quantized layer sees them (activation quantization
    applied); `packed_like` supplies format, granularity and group size; `scales` are kept.
    """
    rounding = RoundingVariables(weight, scales, packed_like)
    target = inputs.float() @ weight.float().T
    target_power = target.square().mean().clamp_min(1e-20)
    optimizer = torch.optim.Adam([rounding.variable], lr=learning_rate)
    torch.manual_seed(seed)
    for iteration in range(iterations):
        reconstruction = (quantized_inputs @ rounding.soft_weight().T - target).square().mean() / target_power
        loss = reconstruction + regularization * rounding.penalty(beta_schedule(iteration, iterations))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return rounding.packed()


def beta_schedule(iteration: int, iterations: int) -> float | None:
    """No rounding penalty for the first 20% (warm-up), then beta from 20 down to 2."""
    warmup = int(0.2 * iterations)
    if iteration < warmup:
        return None
    progress = (iteration - warmup) / max(1, iterations - warmup)
    return 20 - 18 * progress
