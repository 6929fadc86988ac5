import pytest
import torch
from torch import nn

import tiny_models
from diffpress.compression.modules import QuantConv2d, QuantLinear
from diffpress.compression.swap import DEFAULT_SKIP, quantize_, skip_reason
from diffpress.formats import Granularity, QuantFormat
from diffpress.metrics import sqnr_db
from diffpress.presets import PRESETS, preset
from diffpress.recipe import QuantSpec
from diffpress.errors import InputError


def test_quant_linear_matches_dequantized_float_linear():
    linear = nn.Linear(70, 33)
    spec = QuantSpec(QuantFormat.INT4, Granularity.PER_GROUP, 32)
    quantized = QuantLinear.from_float(linear, spec)
    x = torch.randn(3, 5, 70)
    from diffpress.kernels.reference import dequantize_weight
    expected = nn.functional.linear(x, dequantize_weight(quantized.packed), linear.bias)
    assert torch.allclose(quantized(x), expected, atol=1e-6)
    assert "w:int4/g32 per_group act:a16 absmax, backend=reference" in repr(quantized)


@pytest.mark.parametrize("groups", [1, 2])
def test_quant_conv_matches_float_conv_at_8_bits(groups):
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=1, groups=groups)
    quantized = QuantConv2d.from_float(conv, preset("w8a16-int8"))
    x = torch.randn(2, 8, 9, 9)
    assert sqnr_db(conv(x), quantized(x)) > 35


def test_activation_quantization_changes_output_but_stays_close():
    linear = nn.Linear(64, 64)
    x = torch.randn(4, 64)
    weight_only = QuantLinear.from_float(linear, preset("w8a16-int8"))(x)
    w8a8 = QuantLinear.from_float(linear, preset("w8a8-int8"))(x)
    assert not torch.equal(weight_only, w8a8)
    assert sqnr_db(linear(x), w8a8) > 30


def test_quantize_keeps_dtype():
    linear = nn.Linear(32, 16).to(torch.bfloat16)
    quantized = QuantLinear.from_float(linear, preset("w4a16-int4"))
    assert quantized(torch.randn(2, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_default_skip_list_on_unet():
    model, _ = tiny_models.build("unet2d_condition")
    report = quantize_(model, preset("w8a16-int8"))
    assert set(report.skipped) == {"conv_in", "time_embedding.linear_1", "time_embedding.linear_2", "conv_out"}
    assert "down_blocks.0.attentions.0.proj_out" in report.quantized  # only the top-level proj_out is skipped
    assert isinstance(model.down_blocks[0].resnets[0].conv1, QuantConv2d)
    assert isinstance(model.conv_in, nn.Conv2d) and not isinstance(model.conv_in, QuantConv2d)


def test_default_skip_list_on_flux_keeps_embedders_and_output():
    model, _ = tiny_models.build("flux")
    report = quantize_(model, preset("w8a16-int8"))
    assert {"x_embedder", "context_embedder", "proj_out", "norm_out.linear",
            "time_text_embed.timestep_embedder.linear_1"} <= set(report.skipped)
    assert "single_transformer_blocks.0.proj_out" in report.quantized
    assert "transformer_blocks.0.norm1.linear" in report.quantized


def test_user_skip_patterns_and_per_layer_plans():
    model, _ = tiny_models.build("pixart")
    report = quantize_(model, lambda fqn: preset("w4a16-int4") if "ff" in fqn else None, skip=[r"attn2"])
    assert all("ff" in fqn for fqn in report.quantized) and report.quantized
    assert report.skipped["transformer_blocks.0.attn2.to_q"] == "user skip pattern"
    assert report.skipped["transformer_blocks.0.attn1.to_q"] == "no plan for this layer"
    assert skip_reason("conv_out", DEFAULT_SKIP) == "final output projection"


def test_unknown_preset_lists_the_presets():
    with pytest.raises(InputError, match="w9a9.*available: w8a16-int8"):
        preset("w9a9")
    assert {"w8a16-int8", "w4a16-int4"} <= set(PRESETS)


def test_spec_validation_names_the_problem():
    with pytest.raises(ValueError, match="act_format must be int8, fp8_e4m3, int4 or fp4_e2m1, got uint4"):
        QuantSpec(QuantFormat.INT8, Granularity.PER_CHANNEL, act_format=QuantFormat.UINT4)
    with pytest.raises(ValueError, match="int4 activations need act_group_size"):
        QuantSpec(QuantFormat.INT8, Granularity.PER_CHANNEL, act_format=QuantFormat.INT4)
    assert QuantSpec.from_dict(preset("w4a16-int4").to_dict()) == preset("w4a16-int4")


def test_quantize_refuses_plans_it_cannot_apply():
    model, _ = tiny_models.build("pixart")
    with pytest.raises(ValueError, match="quantize_model"):
        quantize_(model, preset("w4a8-int"))  # learned rounding + smoothing need calibration data
