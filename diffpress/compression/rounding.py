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

from dataclasses import dataclass

import torch

from ..errors import InputError, require_int

from ..formats import encode, grid_values
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
        self.lower, self.upper = grid_neighbours(scaled, grid_values(packed_like.format).to(scaled.device))
        self.step = (self.upper - self.lower).clamp_min(1e-12)
        fraction = ((scaled - self.lower) / self.step).clamp(0.01, 0.99)
        self.variable = (-torch.log((ZETA - GAMMA) / (fraction - GAMMA) - 1)).requires_grad_(True)
        self.scales = scales

    def soft_weight(self) -> torch.Tensor:
        return self.full_scales * (self.lower + _rectified_sigmoid(self.variable) * self.step - self.offsets)

    def penalty(self, beta: float | None) -> torch.Tensor:
        """Pushes every h(V) to 0 or 1 (zero before the warm-up ends)."""
        if beta is None:
            return torch.zeros((), device=self.variable.device)
        return (1 - (2 * _rectified_sigmoid(self.variable) - 1).abs().pow(beta)).mean()

    def packed(self) -> PackedWeight:
        """The hard choice: each weight at its lower or upper neighbour."""
        like = self.packed_like
        with torch.no_grad():
            chosen = torch.where(_rectified_sigmoid(self.variable) >= 0.5, self.upper, self.lower)
        return PackedWeight(pack(encode(chosen, like.format), like.format), self.scales, like.format,
                            like.granularity, like.group_size, self.shape, like.zero_points)


@dataclass(frozen=True)
class RoundingOptions:
    """How learned rounding (and block reconstruction) fits.

    iterations: Adam steps per layer (per block for block reconstruction); rows: captured input rows per
    layer; batch_size: rows per step (None: all of them); early_stop: after the warm-up, every
    iterations/20 steps the hard codes (each weight rounded up or down) are read and their reconstruction
    loss on all rows measured; fitting stops once, `patience` checks in a row, at most `tolerance` of the
    codes changed since the previous check (the rounding has settled: more steps would not change the
    result), and the codes with the lowest loss seen are kept. (The loss itself is no stopping signal: it
    barely moves while the annealed penalty is still weak, then drops.) Layer-wise learned rounding only;
    block reconstruction runs its iterations.
    """

    iterations: int = 300
    rows: int = 2048
    batch_size: int | None = None
    early_stop: bool = False
    tolerance: float = 1e-3  # early stop: the fraction of codes that may still change between checks
    patience: int = 3

    def __post_init__(self) -> None:
        require_int(self.iterations, "rounding iterations", 1)
        require_int(self.rows, "rounding rows", 1)
        if self.batch_size is not None:
            require_int(self.batch_size, "rounding batch_size", 1)
        require_int(self.patience, "rounding patience", 1)
        if not isinstance(self.early_stop, bool):
            raise InputError(f"early_stop must be true or false, got {self.early_stop!r}", "early_stop")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or not 0 <= self.tolerance <= 1:
            raise InputError(f"rounding tolerance must be in [0, 1], got {self.tolerance!r}", "tolerance")


def learn_rounding(weight: torch.Tensor, scales: torch.Tensor, packed_like: PackedWeight, inputs: torch.Tensor,
                   quantized_inputs: torch.Tensor, iterations: int = 300, regularization: float = 0.01,
                   learning_rate: float = 0.01, seed: int = 0,
                   options: RoundingOptions | None = None) -> PackedWeight:
    """A PackedWeight whose codes minimize the output error on `inputs` (rows (M, K)).

    `quantized_inputs` are the same rows as the quantized layer sees them (activation quantization
    applied); `packed_like` supplies format, granularity and group size; `scales` are kept. `options`
    (when given) sets iterations, the batch size and early stopping.
    """
    options = options or RoundingOptions(iterations=iterations)
    rounding = RoundingVariables(weight, scales, packed_like)
    target = inputs.float() @ weight.float().T
    target_power = target.square().mean().clamp_min(1e-20)
    optimizer = torch.optim.Adam([rounding.variable], lr=learning_rate)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rows = quantized_inputs.shape[0]
    batch = options.batch_size if options.batch_size and options.batch_size < rows else None
    stopper = _EarlyStop(rounding, quantized_inputs, target, target_power, options) if options.early_stop else None
    for iteration in range(options.iterations):
        x, y = quantized_inputs, target
        if batch is not None:
            chosen = torch.randint(0, rows, (batch,), generator=generator)
            x, y = quantized_inputs[chosen], target[chosen]
        reconstruction = (x @ rounding.soft_weight().T - y).square().mean() / target_power
        beta = beta_schedule(iteration, options.iterations)
        loss = reconstruction + regularization * rounding.penalty(beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if stopper is not None and beta is not None and stopper.should_stop(iteration):
            break
    return stopper.best() if stopper is not None else rounding.packed()


class _EarlyStop:
    """Measures the hard-rounded codes every iterations/20 steps after the warm-up; keeps the best."""

    def __init__(self, rounding: RoundingVariables, x: torch.Tensor, target: torch.Tensor, power: torch.Tensor,
                 options: RoundingOptions) -> None:
        self.rounding, self.x, self.target, self.power, self.options = rounding, x, target, power, options
        self.every = max(1, options.iterations // 20)
        self.best_loss, self.best_packed, self.settled, self.previous = float("inf"), None, 0, None

    def _loss(self, packed: PackedWeight) -> float:
        from ..kernels.reference import dequantize_weight

        with torch.no_grad():
            return float((self.x @ dequantize_weight(packed).T - self.target).square().mean() / self.power)

    def should_stop(self, iteration: int) -> bool:
        if (iteration + 1) % self.every:
            return False
        packed = self.rounding.packed()
        loss = self._loss(packed)
        if loss < self.best_loss:
            self.best_loss, self.best_packed = loss, packed
        changed = 1.0 if self.previous is None else float((packed.qdata != self.previous).float().mean())
        self.previous = packed.qdata
        self.settled = self.settled + 1 if changed <= self.options.tolerance else 0
        return self.settled >= self.options.patience

    def best(self) -> PackedWeight:
        final = self.rounding.packed()
        if self.best_packed is None or self._loss(final) <= self.best_loss:
            return final
        return self.best_packed


def beta_schedule(iteration: int, iterations: int) -> float | None:
    """No rounding penalty for the first 20% (warm-up), then beta from 20 down to 2."""
    warmup = int(0.2 * iterations)
    if iteration < warmup:
        return None
    progress = (iteration - warmup) / max(1, iterations - warmup)
    return 20 - 18 * progress
