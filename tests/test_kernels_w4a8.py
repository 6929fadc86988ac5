"""W4A8 GEMM (INT4 / FP4 weights unpacked into the 8-bit operand) against the torch reference."""
import kernel_cases  # noqa: F401  (sets TRITON_INTERPRET on CPU)
import pytest
import torch

from diffpress.compression.quantize import quantize_weight
from diffpress.formats import Granularity, QuantFormat
from diffpress.kernels import reference
from diffpress.kernels.w4a8 import w4a8_linear

DEVICE = kernel_cases.DEVICE
WEIGHTS = [(QuantFormat.INT4, Granularity.PER_GROUP, 32), (QuantFormat.INT4, Granularity.PER_CHANNEL, None),
           (QuantFormat.FP4_E2M1, Granularity.PER_GROUP, 16), (QuantFormat.FP4_E2M1, Granularity.PER_GROUP, 32)]
ACTS = [QuantFormat.INT8, QuantFormat.FP8_E4M3]


def _case(m, n, k, wf, granularity, group, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    packed = quantize_weight(torch.randn(n, k, generator=g), wf, granularity, group)
    packed.qdata, packed.scales = packed.qdata.to(DEVICE), packed.scales.to(DEVICE)
    return (torch.randn(m, k, generator=g) * 2).to(dtype).to(DEVICE), packed, torch.randn(n, generator=g).to(DEVICE)


def _run(x, packed, bias, act, scale=None, out_dtype=None):
    out_dtype = out_dtype or x.dtype
    return w4a8_linear(x, packed.qdata, packed.scales, bias, packed.format, act, packed.shape[1], scale,
                       packed.group_size, out=kernel_cases.poisoned((x.shape[0], packed.shape[0]), out_dtype))


@pytest.mark.parametrize("wf,granularity,group", WEIGHTS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("m,n,k", [(1, 17, 40), (33, 48, 129)])
def test_matches_reference(wf, granularity, group, act, m, n, k):
    x, packed, bias = _case(m, n, k, wf, granularity, group)
    kernel_cases.assert_close(_run(x, packed, bias, act), reference.quantized_linear(x, packed, bias, act), x.dtype)


@pytest.mark.parametrize("wf,group", [(QuantFormat.INT4, 32), (QuantFormat.FP4_E2M1, 16)])
def test_group_sums_are_exact_with_unit_scales(wf, group):
    """With unit scales every partial sum is an integer (halves for fp4 x int8 doubled): fp32 output is exact."""
    x, packed, _ = _case(33, 17, 130, wf, Granularity.PER_GROUP, group, dtype=torch.float32)
    packed.scales = torch.ones_like(packed.scales)
    codes = torch.randint(-127, 128, x.shape, generator=torch.Generator().manual_seed(3)).float().to(DEVICE)
    codes[:, 0] = 127.0  # absmax 127 per row: per-token scale exactly 1
    out = _run(codes, packed, None, QuantFormat.INT8)
    assert torch.equal(out, reference.quantized_linear(codes, packed, None, QuantFormat.INT8))


@pytest.mark.parametrize("out_dtype", kernel_cases.OUT_DTYPES)
def test_each_output_dtype_and_static_scale(out_dtype):
    x, packed, bias = _case(5, 48, 72, QuantFormat.INT4, Granularity.PER_GROUP, 32, dtype=out_dtype)
    scale = torch.tensor([0.04], device=DEVICE)
    expected = reference.quantized_linear(x, packed, bias, QuantFormat.INT8, scale)
    kernel_cases.assert_close(_run(x, packed, bias, QuantFormat.INT8, scale), expected, out_dtype)
