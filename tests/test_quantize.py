"""SQNR floors on Gaussian weights. Floors sit 0.3-0.5 dB under what the reference measures
(bench/sqnr_formats.py, seed 0, 256x1024): a regression of half a dB fails."""
import pytest
import torch

from diffpress.recipe import ScaleMethod
from diffpress.compression.quantize import choose_scales, dequantize, fake_quantize, quantize_weight
from diffpress.formats import Granularity, QuantFormat
from diffpress.metrics import sqnr_db

FLOORS = [  # format, granularity, group, method, floor dB (measured)
    (QuantFormat.INT8, Granularity.PER_TENSOR, None, ScaleMethod.ABSMAX, 39.0),  # 39.5
    (QuantFormat.INT8, Granularity.PER_CHANNEL, None, ScaleMethod.ABSMAX, 41.6),  # 42.07
    (QuantFormat.INT8, Granularity.PER_GROUP, 128, ScaleMethod.ABSMAX, 43.3),  # 43.73
    (QuantFormat.INT4, Granularity.PER_CHANNEL, None, ScaleMethod.ABSMAX, 16.5),  # 16.89
    (QuantFormat.INT4, Granularity.PER_CHANNEL, None, ScaleMethod.MSE, 18.5),  # 18.94
    (QuantFormat.INT4, Granularity.PER_GROUP, 128, ScaleMethod.ABSMAX, 18.2),  # 18.58
    (QuantFormat.INT4, Granularity.PER_GROUP, 128, ScaleMethod.MSE, 19.1),  # 19.46
    (QuantFormat.INT4, Granularity.PER_GROUP, 32, ScaleMethod.MSE, 20.4),  # 20.78
    (QuantFormat.FP8_E4M3, Granularity.PER_TENSOR, None, ScaleMethod.ABSMAX, 31.2),  # 31.54
    (QuantFormat.FP8_E4M3, Granularity.PER_CHANNEL, None, ScaleMethod.ABSMAX, 31.2),  # 31.56
    (QuantFormat.FP4_E2M1, Granularity.PER_GROUP, 16, ScaleMethod.ABSMAX, 20.1),  # 20.49
    (QuantFormat.FP4_E2M1, Granularity.PER_GROUP, 16, ScaleMethod.MSE, 20.9),  # 21.30
    (QuantFormat.FP4_E2M1, Granularity.PER_GROUP, 32, ScaleMethod.MSE, 20.2),  # 20.57
]


@pytest.fixture(scope="module")
def gaussian():
    return torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("fmt,granularity,group,method,floor", FLOORS,
                         ids=[f"{f.value}-{g.value}-{s}-{m.value}" for f, g, s, m, _ in FLOORS])
def test_sqnr_floor(gaussian, fmt, granularity, group, method, floor):
    assert sqnr_db(gaussian, fake_quantize(gaussian, fmt, granularity, group, method)) >= floor


def test_mse_search_never_worse_than_absmax_per_unit(gaussian):
    for fmt, group in [(QuantFormat.INT4, 128), (QuantFormat.FP4_E2M1, 16)]:
        w = gaussian.clone()
        w[:, 5] *= 8  # one outlier column: absmax scales waste the grid on it
        errors = {}
        for method in (ScaleMethod.ABSMAX, ScaleMethod.MSE):  # mse_linear picks one of these per layer type
            approx = fake_quantize(w, fmt, Granularity.PER_GROUP, group, method)
            errors[method] = (approx - w).square().reshape(w.shape[0], -1, group).sum(-1)
        assert torch.all(errors[ScaleMethod.MSE] <= errors[ScaleMethod.ABSMAX] + 1e-6)
        assert errors[ScaleMethod.MSE].sum() < 0.9 * errors[ScaleMethod.ABSMAX].sum()


def test_dequantize_matches_fake_quantize_and_partial_groups(gaussian):
    w = gaussian[:5, :129]  # the last group of each row has one element
    packed = quantize_weight(w, QuantFormat.INT4, Granularity.PER_GROUP, 32)
    assert torch.equal(dequantize(packed), fake_quantize(w, QuantFormat.INT4, Granularity.PER_GROUP, 32))
    assert sqnr_db(w, dequantize(packed)) > 19


def test_zero_and_constant_weights():
    zeros = torch.zeros(4, 64)
    assert torch.equal(fake_quantize(zeros, QuantFormat.INT4, Granularity.PER_GROUP, 32), zeros)
    ones = torch.full((4, 64), 0.37)
    for fmt in (QuantFormat.INT8, QuantFormat.INT4):
        assert torch.allclose(fake_quantize(ones, fmt, Granularity.PER_CHANNEL), ones, rtol=1e-2)


@pytest.mark.parametrize("method", ["absmax", "mse"])
def test_asymmetric_int4_spends_its_levels_on_the_range_a_skewed_group_has(method):
    generator = torch.Generator().manual_seed(0)
    skewed = torch.rand(16, 256, generator=generator) * 0.2 - 0.02  # mostly positive, as post-GELU weights are
    symmetric = quantize_weight(skewed, QuantFormat.INT4, Granularity.PER_GROUP, 128, method)
    asymmetric = quantize_weight(skewed, QuantFormat.UINT4, Granularity.PER_GROUP, 128, method)
    assert sqnr_db(skewed, dequantize(asymmetric)) > sqnr_db(skewed, dequantize(symmetric)) + 4
    assert asymmetric.zero_points.dtype == torch.uint8 and asymmetric.zero_points.shape == asymmetric.scales.shape
    from diffpress.kernels.layout import unpack

    codes = unpack(asymmetric.qdata, QuantFormat.UINT4, 256)
    assert codes.min() >= 0 and codes.max() <= 15 and asymmetric.nbytes == 16 * 128 + 16 * 2 * 2 + 16 * 2


def test_asymmetric_int4_keeps_zero_exact_and_constant_groups_close():
    weight = torch.rand(4, 64) * 0.5 + 0.1
    weight[:, ::7] = 0.0
    restored = fake_quantize(weight, QuantFormat.UINT4, Granularity.PER_GROUP, 32)
    assert torch.equal(restored[:, ::7], torch.zeros_like(restored[:, ::7]))
    zeros = torch.zeros(4, 64)
    assert torch.equal(fake_quantize(zeros, QuantFormat.UINT4, Granularity.PER_GROUP, 32), zeros)
    negative = torch.full((4, 64), -0.37)
    assert torch.allclose(fake_quantize(negative, QuantFormat.UINT4, Granularity.PER_CHANNEL), negative, rtol=1e-2)


def test_group_scales_are_bfloat16_and_channel_scales_float32(gaussian):
    assert choose_scales(gaussian, QuantFormat.INT4, Granularity.PER_GROUP, 128).dtype == torch.bfloat16
    assert choose_scales(gaussian, QuantFormat.INT8, Granularity.PER_CHANNEL).dtype == torch.float32


def test_rejects_non_matrix():
    with pytest.raises(ValueError, match=r"\(N, K\) weight"):
        quantize_weight(torch.randn(2, 3, 4), QuantFormat.INT8, Granularity.PER_CHANNEL)


def test_mse_linear_clips_linear_layers_and_keeps_absmax_on_convolutions():
    from torch import nn

    from diffpress.compression.quantize import choose_scales
    from diffpress.compression.swap import quantize_
    from diffpress.presets import preset

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 8, 3), nn.Flatten(), nn.Linear(32, 8))
    floats = [model[0].weight.detach().reshape(8, -1).clone(), model[2].weight.detach().clone()]
    spec = preset("w4a16-fp4")
    assert spec.scale_method.value == "mse_linear"
    quantize_(model, spec, skip=())
    conv_absmax = choose_scales(floats[0], "fp4_e2m1", "per_group", 16, "absmax")
    linear_mse = choose_scales(floats[1], "fp4_e2m1", "per_group", 16, "mse")
    assert torch.equal(model[0].scales, conv_absmax) and torch.equal(model[2].scales, linear_mse)
    assert not torch.equal(linear_mse, choose_scales(floats[1], "fp4_e2m1", "per_group", 16, "absmax"))
