"""torch.compile(fullgraph=True) over quantized modules (reference backend, CPU, inductor): the custom
ops are single graph nodes with fake implementations, so the whole model compiles without breaks,
and the fake outputs' shapes and strides match the real ones (opcheck).
"""
import pytest
import torch
from torch import nn

from diffpress.compression.modules import QuantConv2d, QuantLinear
from diffpress.presets import preset
from diffpress.recipe import QuantSpec


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = QuantConv2d.from_float(nn.Conv2d(4, 8, 3, padding=1), preset("w8a8-int8"))
        self.conv_wo = QuantConv2d.from_float(nn.Conv2d(8, 8, 1), preset("w4a16-int4"))
        self.proj = QuantLinear.from_float(nn.Linear(8, 16), preset("w8a8-fp8"))
        self.out = QuantLinear.from_float(nn.Linear(16, 8), QuantSpec("fp4_e2m1", "per_group", 16,
                                                                    act_format="fp8_e4m3"))

    def forward(self, x):
        h = self.conv_wo(torch.relu(self.conv(x)))
        tokens = h.flatten(2).transpose(1, 2)
        return self.out(torch.nn.functional.gelu(self.proj(tokens)))


def test_fullgraph_compile_matches_eager():
    model = Tiny().eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        expected = model(x)
        actual = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_custom_ops_pass_opcheck():
    layer = QuantLinear.from_float(nn.Linear(40, 17), preset("w8a8-int8"))
    x = torch.randn(3, 40)
    args = (x, layer.qdata, layer.scales, None, layer.bias, None, None, None, None, "int8", "per_channel", 0, 40,
            "int8", 0, "reference")
    torch.library.opcheck(torch.ops.diffpress.quantized_linear.default, args)
    asymmetric = QuantLinear.from_float(nn.Linear(40, 17), preset("w4a16-uint4"))
    args = (x, asymmetric.qdata, asymmetric.scales, asymmetric.zero_points, asymmetric.bias, None, None, None, None,
            "uint4", "per_group", 128, 40, "", 0, "reference")
    torch.library.opcheck(torch.ops.diffpress.quantized_linear.default, args)
    conv = QuantConv2d.from_float(nn.Conv2d(4, 6, 3, stride=2), preset("w4a16-int4"))
    args = (torch.randn(1, 4, 7, 7), conv.qdata, conv.scales, None, conv.bias, None, None, None, None, "int4",
            "per_group", 128, [6, 4, 3, 3], [2, 2], [0, 0], "", [1, 1], 1, "", 0, 0, "reference")
    torch.library.opcheck(torch.ops.diffpress.quantized_conv2d.default, args)
