"""The fused activation quantization kernel against `reference.quantize_per_token` (bit-exact)."""
import kernel_cases  # noqa: F401  (sets TRITON_INTERPRET on CPU)
import pytest
import torch

from diffpress.formats import QuantFormat, encode
from diffpress.kernels import reference
from diffpress.kernels.quantize_act import quantize_activation

FORMATS = (QuantFormat.INT8, QuantFormat.FP8_E4M3)


def _codes_poisoned(m, k, fmt):
    dtype = torch.int8 if fmt is QuantFormat.INT8 else torch.float8_e4m3fn
    return torch.full((m, k), 99, dtype=torch.int8, device=kernel_cases.DEVICE).view(dtype)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", kernel_cases.OUT_DTYPES)
@pytest.mark.parametrize("m,k", [(1, 40), (33, 130)])
def test_dynamic_is_bit_exact(fmt, dtype, m, k):
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m + k)) * 5).to(dtype).to(kernel_cases.DEVICE)
    x[0, : k // 3] = 0.0
    if m > 1:
        x[m - 1] = 0.0  # an all-zero row takes scale 1
    codes, scales = quantize_activation(x, fmt, codes=_codes_poisoned(m, k, fmt))
    expected_codes, expected_scales = reference.quantize_per_token(x, fmt)
    assert torch.equal(scales, expected_scales)
    assert torch.equal(codes.view(torch.int8), expected_codes.view(torch.int8))


@pytest.mark.parametrize("fmt", FORMATS)
def test_rounding_ties_and_saturation(fmt):
    """Ties go to even, values past qmax clamp: the interpreter's truncating casts are not relied on."""
    qmax = 127.0 if fmt is QuantFormat.INT8 else 448.0
    row = torch.tensor([qmax, 0.5, 1.5, 2.5, -2.5, 17.0, 1.0625, 127.6, -0.49, 0.0009765625, 100.5, 3.5] * 3)
    scale = torch.tensor([1.0])
    codes, _ = quantize_activation(row.reshape(1, -1).to(kernel_cases.DEVICE), fmt, scale.to(kernel_cases.DEVICE))
    assert torch.equal(codes.view(torch.int8).cpu(), encode(row.reshape(1, -1), fmt).view(torch.int8))


@pytest.mark.parametrize("fmt", FORMATS)
def test_static_scale_and_column_slice(fmt):
    x = torch.randn(5, 72, device=kernel_cases.DEVICE) * 3
    scale = torch.tensor([0.02], device=kernel_cases.DEVICE)
    codes, scales = quantize_activation(x[:, 30:], fmt, scale)  # a strided view, as shortcut splitting uses
    assert torch.equal(codes.view(torch.int8), encode(x[:, 30:] / scale, fmt).view(torch.int8))
    assert torch.equal(scales, torch.full((5, 1), 0.02, device=kernel_cases.DEVICE))
