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

Precision: float64 up to `FLOAT64_COLUMNS` input columns, where it costs little; wider layers (the
23040-column convolutions of an SD1.5 UNet) work in float32, as the reference implementation does,
which halves the memory of the K x K matrices and roughly halves the time of their factorizations; a
float32 factorization that fails is retried in float64.
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
FLOAT64_COLUMNS = 4096


def working_dtype(columns: int) -> torch.dtype:
    return torch.float64 if columns <= FLOAT64_COLUMNS else torch.float32


def nearest_on_grid(scaled: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Each value of `scaled` replaced by the nearest value of the sorted `grid` (clamped to its ends)."""
    lower, upper = grid_neighbours(scaled, grid)
    clamped = scaled.clamp(grid[0], grid[-1])
    return torch.where(clamped - lower <= upper - clamped, lower, upper)


def inverse_hessian_factor(inputs: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper Cholesky factor of the damped H^-1, columns that never see a non-zero input), in the working
    precision of the layer's width (float64 when float32 fails)."""
    rows = inputs.reshape(-1, inputs.shape[-1])
    dtype = working_dtype(rows.shape[1])
    try:
        return _inverse_hessian_factor(rows.to(dtype), damping)
    except NumericError:
        if dtype is torch.float64:
            raise
        return _inverse_hessian_factor(rows.double(), damping)


def _inverse_hessian_factor(rows: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    hessian = rows.T @ rows / max(1, rows.shape[0])
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1.0
    hessian += damping * torch.diagonal(hessian).mean() * torch.eye(len(hessian), dtype=hessian.dtype, device=hessian.device)
    try:  # at most two K x K matrices alive at once (2.1 GB each in float32 for a 23040-column conv)
        lower = torch.linalg.cholesky(hessian)
        del hessian
        inverse = torch.cholesky_inverse(lower)
        del lower
        factor = torch.linalg.cholesky(inverse, upper=True)
        if not torch.isfinite(torch.diagonal(factor)).all():
            raise torch.linalg.LinAlgError("non-finite factor")
        return factor, dead
    except torch.linalg.LinAlgError:
        raise NumericError("GPTQ: the input Hessian is not positive definite even after damping; raise the "
                           "damping or use learned rounding") from None


def gptq_rounding(weight: torch.Tensor, scales: torch.Tensor, packed_like: PackedWeight, inputs: torch.Tensor,
                  damping: float = DEFAULT_DAMPING, act_order: bool = True,
                  block_size: int = DEFAULT_BLOCK_SIZE) -> PackedWeight:
    """A PackedWeight of `weight` (N, K) on `packed_like`'s format and layout with `scales` kept, its codes
    chosen by GPTQ on the input rows `inputs` (M, K)."""
    shape = tuple(weight.shape)
    rows = inputs.reshape(-1, shape[1]).to(working_dtype(shape[1]))
    order = torch.argsort(rows.square().sum(0), descending=True) if act_order else torch.arange(shape[1], device=rows.device)
    factor, dead = inverse_hessian_factor(rows[:, order], damping)
    del rows
    dtype = factor.dtype
    work = weight.detach().to(dtype)[:, order].clone()
    work[:, dead] = 0.0
    full_scales = expand_scales(scales, packed_like.granularity, packed_like.group_size, shape).expand(shape)
    scale_columns = full_scales.to(dtype)[:, order]
    offsets = torch.as_tensor(zero_point_offsets(packed_like), device=work.device).to(dtype).expand(shape)  # asymmetric
    offset_columns = offsets[:, order]
    grid = grid_values(packed_like.format).to(dtype).to(work.device)
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
