"""W8A8 (INT8 / FP8) GEMM under the interpreter (CPU) or on a GPU, against the torch reference."""
import kernel_cases  # noqa: F401  (sets TRITON_INTERPRET on CPU)
import pytest
import torch

from diffpress.compression.quantize import quantize_weight
from diffpress.formats import Granularity, QuantFormat
from diffpress.kernels import reference
from diffpress.kernels.w8a8 import int8_mm_raw, w8a8_linear

DEVICE = kernel_cases.DEVICE
SHAPES = [(1, 17, 40), (5, 48, 72), (33, 17, 130)]  # ragged against the 16 x 16 x 32 interpreter tile


def _case(m, n, k, fmt, granularity=Granularity.PER_CHANNEL, group=None, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    packed = quantize_weight(torch.randn(n, k, generator=g), fmt, granularity, group)
    packed.qdata, packed.scales = packed.qdata.to(DEVICE), packed.scales.to(DEVICE)
    x = (torch.randn(m, k, generator=g) * 2).to(dtype).to(DEVICE)
    return x, packed, torch.randn(n, generator=g).to(DEVICE)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int8_accumulator_is_bit_exact(m, n, k):
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8).to(DEVICE)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8).to(DEVICE)
    out = int8_mm_raw(a, w, out=kernel_cases.poisoned((m, n), torch.int32))
    assert torch.equal(out, reference.int_matmul_exact(a, w))


@pytest.mark.parametrize("fmt", [QuantFormat.INT8, QuantFormat.FP8_E4M3])
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("act_quant", ["separate", "prologue"])
def test_dynamic_matches_reference(fmt, m, n, k, act_quant):
    x, packed, bias = _case(m, n, k, fmt)
    out = w8a8_linear(x, packed.qdata, packed.scales, bias, fmt, act_quant=act_quant,
                      out=kernel_cases.poisoned((m, n), x.dtype))
    kernel_cases.assert_close(out, reference.quantized_linear(x, packed, bias, fmt), x.dtype)


@pytest.mark.parametrize("fmt", [QuantFormat.INT8, QuantFormat.FP8_E4M3])
@pytest.mark.parametrize("out_dtype", kernel_cases.OUT_DTYPES)
def test_each_output_dtype(fmt, out_dtype):
    x, packed, bias = _case(5, 48, 72, fmt, dtype=out_dtype)
    out = w8a8_linear(x, packed.qdata, packed.scales, bias, fmt, out=kernel_cases.poisoned((5, 48), out_dtype))
    kernel_cases.assert_close(out, reference.quantized_linear(x, packed, bias, fmt), out_dtype)


@pytest.mark.parametrize("fmt", [QuantFormat.INT8, QuantFormat.FP8_E4M3])
@pytest.mark.parametrize("act_quant", ["separate", "prologue"])
def test_static_scale(fmt, act_quant):
    x, packed, bias = _case(33, 17, 130, fmt)
    scale = torch.tensor([0.03], device=DEVICE)
    out = w8a8_linear(x, packed.qdata, packed.scales, None, fmt, scale, act_quant=act_quant,
                      out=kernel_cases.poisoned((33, 17), x.dtype))
    kernel_cases.assert_close(out, reference.quantized_linear(x, packed, None, fmt, scale), x.dtype)


@pytest.mark.parametrize("granularity,group", [(Granularity.PER_TENSOR, None), (Granularity.PER_GROUP, 32)])
def test_per_tensor_and_group_weight_scales(granularity, group):
    x, packed, bias = _case(5, 17, 130, QuantFormat.INT8, granularity, group, dtype=torch.float32)
    out = w8a8_linear(x, packed.qdata, packed.scales, bias, QuantFormat.INT8, group_size=group,
                      out=kernel_cases.poisoned((5, 17), torch.float32))
    kernel_cases.assert_close(out, reference.quantized_linear(x, packed, bias, QuantFormat.INT8), torch.float32)


def test_mismatched_operand_types_raise():
    x, packed, bias = _case(1, 17, 40, QuantFormat.INT8)
    with pytest.raises(ValueError, match="one type"):
        w8a8_linear(x, packed.qdata, packed.scales, bias, QuantFormat.FP8_E4M3)
