"""GPTQ rounding (Frantar et al. 2023): quantize a layer's weight one input column at a time and push each
column's rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's inputs, so the output error on those inputs stays small.

H = X^T X / M over the captured input rows X (M, K), as the quantized layer sees them (smoothed and, for
W4A8 and the like, activation-quantized), with `damping` x mean(diag H) added to the diagonal. With the
upper Cholesky factor U of H^-1, column j is rounded to its nearest grid value q_j (the format's grid:
uniform for INT, exponent-dependent for FP; the scales and zero points are the ones the plan's scale
method chose), and
w_k -= (w_j - q_j) U_jk / U_jj for every k > j; the updates are applied lazily in blocks of `block_size`
columns. `act_order` quantizes columns in order of decreasing diag(H) (the scales stay per stored
group, so the on-disk layout does not change). Inputs whose column is never non-zero get a zero weight.
"""
from __future__ import annotations

import torch

from ..errors import NumericError
from ..metrics import relative_error
from ..formats import encode, grid_values
from ..kernels.layout import PackedWeight, pack
from ..kernels.reference import expand_scales, zero_point_offsets
from .rounding import grid_neighbours

DEFAULT_DAMPING = 0.01
DEFAULT_BLOCK_SIZE = 128


def nearest_on_grid(scaled: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Each value of `scaled` replaced by the nearest value of the sorted `grid` (clamped to its ends)."""
    lower, upper = grid_neighbours(scaled, grid)
    clamped = scaled.clamp(grid[0], grid[-1])
    return torch.where(clamped - lower <= upper - clamped, lower, upper)


def inverse_hessian_factor(inputs: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper Cholesky factor of the damped H^-1, columns that never see a non-zero input)."""
    rows = inputs.reshape(-1, inputs.shape[-1]).double()
    hessian = rows.T @ rows / max(1, rows.shape[0])
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1.0
    hessian += damping * torch.diagonal(hessian).mean() * torch.eye(len(hessian), dtype=hessian.dtype, device=hessian.device)
    try:  # at most two K x K float64 matrices alive at once (4.2 GB each for a 23040-column conv)
        lower = torch.linalg.cholesky(hessian)
        del hessian
        inverse = torch.cholesky_inverse(lower)
        del lower
        return torch.linalg.cholesky(inverse, upper=True), dead
    except torch.linalg.LinAlgError:
        raise NumericError("GPTQ: the input Hessian is not positive definite even after damping; raise the "
                           "damping or use learned rounding") from None


def gptq_rounding(weight: torch.Tensor, scales: torch.Tensor, packed_like: PackedWeight, inputs: torch.Tensor,
                  damping: float = DEFAULT_DAMPING, act_order: bool = True,
                  block_size: int = DEFAULT_BLOCK_SIZE) -> PackedWeight:
    """A PackedWeight of `weight` (N, K) on `packed_like`'s format and layout with `scales` kept, its codes
    chosen by GPTQ on the input rows `inputs` (M, K)."""
    shape = tuple(weight.shape)
    rows = inputs.reshape(-1, shape[1]).double()
    order = torch.argsort(rows.square().sum(0), descending=True) if act_order else torch.arange(shape[1], device=rows.device)
    factor, dead = inverse_hessian_factor(rows[:, order], damping)
    work = weight.detach().double()[:, order].clone()
    work[:, dead] = 0.0
    full_scales = expand_scales(scales, packed_like.granularity, packed_like.group_size, shape).expand(shape)
    scale_columns = full_scales.double()[:, order]
    offsets = torch.as_tensor(zero_point_offsets(packed_like), device=work.device).double().expand(shape)  # asymmetric
    offset_columns = offsets[:, order]
    grid = grid_values(packed_like.format).double().to(work.device)
    chosen = torch.empty_like(work)
    for start in range(0, shape[1], block_size):
        end = min(start + block_size, shape[1])
        block, errors = work[:, start:end].clone(), torch.empty(shape[0], end - start, dtype=work.dtype, device=work.device)
        for j in range(end - start):
            column, scale, offset = block[:, j], scale_columns[:, start + j], offset_columns[:, start + j]
            quantized = nearest_on_grid(column / scale + offset, grid)
            chosen[:, start + j] = quantized
            error = (column - (quantized - offset) * scale) / factor[start + j, start + j]
            block[:, j:] -= error[:, None] * factor[start + j, start + j:end][None, :]
            errors[:, j] = error
        work[:, end:] -= errors @ factor[start:end, end:]
    codes = torch.empty_like(chosen)
    codes[:, order] = chosen  # grid values, back in the stored column order
    return PackedWeight(pack(encode(codes.float(), packed_like.format), packed_like.format), scales,
                        packed_like.format, packed_like.granularity, packed_like.group_size, shape,
                        packed_like.zero_points)


def output_error(weight: torch.Tensor, quantized: torch.Tensor, inputs: torch.Tensor) -> float:
    """|X W^T - X Q^T|^2 / |X W^T|^2: what GPTQ lowers (for tests and benchmarks)."""
    return float(relative_error(inputs.double() @ weight.double().T, inputs.double() @ quantized.double().T))
