"""QuantLinear and QuantConv2d: modules that hold packed weights and compute through the kernels.

Conv2d weights (out, in/groups, kh, kw) are stored flattened as (N=out, K=in/groups*kh*kw); the
reference path dequantizes and runs `conv2d` (compressed storage, float compute). With activation
quantization, conv inputs are quantized per pixel over channels (a "token" is one spatial position).
"""
from __future__ import annotations

import torch
from torch import nn

from ..formats import QuantFormat
from ..kernels import reference
from ..kernels.layout import PackedWeight, qdata_dtype, qdata_shape, scale_dtype_for, scales_shape
from ..recipe import QuantSpec
from .quantize import quantize_weight


class _QuantWeightMixin:
    """Buffers `qdata` and `scales` plus the spec, shared by QuantLinear and QuantConv2d."""

    spec: QuantSpec
    weight_shape: tuple[int, int]

    def _register_packed(self, spec: QuantSpec, shape: tuple[int, int], device) -> None:
        self.spec, self.weight_shape = spec, shape
        self.register_buffer("qdata", torch.empty(qdata_shape(spec.weight_format, shape),
                                                  dtype=qdata_dtype(spec.weight_format), device=device))
        self.register_buffer("scales", torch.empty(scales_shape(spec.granularity, shape, spec.group_size),
                                                   dtype=scale_dtype_for(spec.granularity), device=device))

    def _set_packed(self, packed: PackedWeight) -> None:
        self.qdata, self.scales = packed.qdata, packed.scales

    @property
    def packed(self) -> PackedWeight:
        s = self.spec
        return PackedWeight(self.qdata, self.scales, s.weight_format, s.granularity, s.group_size, self.weight_shape)

    def _spec_repr(self) -> str:
        s = self.spec
        group = f", group_size={s.group_size}" if s.group_size else ""
        act = s.act_format.value if s.act_format else "none"
        return f"weight={s.weight_format.value}, {s.granularity.value}{group}, act={act}, backend=reference"


class QuantLinear(_QuantWeightMixin, nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, spec: QuantSpec,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._register_packed(spec, (out_features, in_features), device)
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: QuantSpec) -> "QuantLinear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, spec,
                     device="meta", dtype=linear.weight.dtype)
        module._set_packed(quantize_weight(linear.weight.detach(), spec.weight_format, spec.granularity,
                                           spec.group_size, spec.scale_method))
        if linear.bias is not None:
            module.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return module

    @classmethod
    def empty_like(cls, linear: nn.Linear, spec: QuantSpec) -> "QuantLinear":
        """A shell with meta tensors of the right shapes, for load_state_dict(assign=True)."""
        return cls(linear.in_features, linear.out_features, linear.bias is not None, spec,
                   device="meta", dtype=linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.quantized_linear(x, self.packed, self.bias, self.spec.act_format)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._spec_repr()}"


_CONV_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")


class QuantConv2d(_QuantWeightMixin, nn.Module):
    def __init__(self, conv: nn.Conv2d, spec: QuantSpec) -> None:
        super().__init__()
        for name in _CONV_ATTRS:
            setattr(self, name, getattr(conv, name))
        if self.padding_mode != "zeros":
            raise ValueError(f"QuantConv2d supports padding_mode='zeros' only, got {self.padding_mode!r}")
        out_channels, in_per_group, kh, kw = conv.weight.shape
        self._register_packed(spec, (out_channels, in_per_group * kh * kw), "meta")
        self.kernel_shape = (out_channels, in_per_group, kh, kw)
        bias = conv.bias
        self.bias = nn.Parameter(torch.empty_like(bias, device="meta"), requires_grad=False) if bias is not None else None

    @classmethod
    def from_float(cls, conv: nn.Conv2d, spec: QuantSpec) -> "QuantConv2d":
        module = cls(conv, spec)
        flat = conv.weight.detach().reshape(conv.weight.shape[0], -1)
        module._set_packed(quantize_weight(flat, spec.weight_format, spec.granularity, spec.group_size, spec.scale_method))
        if conv.bias is not None:
            module.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        return module

    @classmethod
    def empty_like(cls, conv: nn.Conv2d, spec: QuantSpec) -> "QuantConv2d":
        return cls(conv, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = _fake_quantize_channels(x, self.spec.act_format) if self.spec.act_format else x.float()
        weight = reference.dequantize_weight(self.packed).reshape(self.kernel_shape)
        bias = self.bias.float() if self.bias is not None else None
        out = nn.functional.conv2d(x32, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, {self._spec_repr()}")


def _fake_quantize_channels(x: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """Per-pixel activation quantization of an NCHW tensor over its channels."""
    channels_last = x.movedim(1, -1)
    return reference.fake_quantize_per_token(channels_last, fmt).movedim(-1, 1)
