"""Weight-only GEMM (W4A16 / FP4-A16 / W8A16, incl. the split-K small-M path) and the dequantize kernel."""
import kernel_cases  # noqa: F401  (sets TRITON_INTERPRET on CPU)
import pytest
import torch

from diffpress.compression.quantize import quantize_weight
from diffpress.formats import Granularity, QuantFormat
from diffpress.kernels import reference
from diffpress.kernels.dequantize import dequantize
from diffpress.kernels.w4a16 import weight_only_linear

DEVICE = kernel_cases.DEVICE
WEIGHTS = [(QuantFormat.INT4, Granularity.PER_GROUP, 128), (QuantFormat.INT4, Granularity.PER_GROUP, 32),
           (QuantFormat.UINT4, Granularity.PER_GROUP, 32), (QuantFormat.UINT4, Granularity.PER_CHANNEL, None),
           (QuantFormat.FP4_E2M1, Granularity.PER_GROUP, 16), (QuantFormat.INT8, Granularity.PER_CHANNEL, None),
           (QuantFormat.FP8_E4M3, Granularity.PER_TENSOR, None)]


def _packed(n, k, wf, granularity, group, seed=0):
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) + 0.5  # skewed: zero points matter
    packed = quantize_weight(weight, wf, granularity, group)
    packed.qdata, packed.scales = packed.qdata.to(DEVICE), packed.scales.to(DEVICE)
    if packed.zero_points is not None:
        packed.zero_points = packed.zero_points.to(DEVICE)
    return packed


def _run(x, packed, bias, split_k=None):
    out = kernel_cases.poisoned((x.shape[0], packed.shape[0]), x.dtype)
    return weight_only_linear(x, packed.qdata, packed.scales, bias, packed.format, packed.shape[1],
                              packed.group_size, split_k=split_k, out=out, zero_points=packed.zero_points)


@pytest.mark.parametrize("wf,granularity,group", WEIGHTS)
@pytest.mark.parametrize("m", [1, 33])  # M=1 takes the split-K path, 33 the tiled path
def test_matches_reference(wf, granularity, group, m):
    packed = _packed(17, 130, wf, granularity, group)
    x = torch.randn(m, 130).bfloat16().to(DEVICE)
    bias = torch.randn(17).to(DEVICE)
    kernel_cases.assert_close(_run(x, packed, bias), reference.quantized_linear(x, packed, bias, None), x.dtype)


@pytest.mark.parametrize("dtype", kernel_cases.OUT_DTYPES)
@pytest.mark.parametrize("m,split_k", [(5, 1), (5, 2), (16, 5), (17, 1)])
def test_each_dtype_and_split(dtype, m, split_k):
    packed = _packed(48, 72, QuantFormat.INT4, Granularity.PER_GROUP, 32)
    x = torch.randn(m, 72).to(dtype).to(DEVICE)
    kernel_cases.assert_close(_run(x, packed, None, split_k), reference.quantized_linear(x, packed, None, None), dtype)


@pytest.mark.parametrize("wf,granularity,group", WEIGHTS)
@pytest.mark.parametrize("dtype", kernel_cases.OUT_DTYPES)
def test_dequantize_is_exact(wf, granularity, group, dtype):
    packed = _packed(48, 75, wf, granularity, group)
    out = dequantize(packed.qdata, packed.scales, wf, 75, group, dtype, out=kernel_cases.poisoned((48, 75), dtype),
                     zero_points=packed.zero_points)
    assert torch.equal(out, reference.dequantize_weight(packed).to(dtype))
