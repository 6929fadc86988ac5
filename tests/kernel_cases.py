"""Shared setup of the Triton kernel tests: interpreter on CPU, small ragged shapes, poisoned outputs,
dtype-aware tolerances."""
import os

import torch

if not torch.cuda.is_available():
    # must be set before any module with @triton.jit is imported: jit picks the interpreter then
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# max |kernel - reference| <= RTOL[dtype] * max |reference|: about two output ulps, as the kernel and
# the reference sum the same float32 products in different orders and round once to the dtype
RTOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def poisoned(shape, dtype) -> torch.Tensor:
    """An output buffer every element of which the kernel must overwrite: NaN, or a sentinel for ints."""
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    return torch.full(shape, -12345, dtype=dtype, device=DEVICE)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, rtol_scale: float = 1.0) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert not torch.isnan(actual).any(), "unwritten (poisoned) elements in the output"
    error = (actual.float() - expected.float()).abs().max().item()
    bound = RTOL[dtype] * rtol_scale * max(expected.float().abs().max().item(), 1e-6)
    assert error <= bound, f"max error {error} > {bound}"
