"""QuantLinear and QuantConv2d: modules that hold packed weights and compute through the kernels.

Buffers: `qdata` and `scales` (the packed weight) always, and `zero_points` for an asymmetric weight
format (uint4); optional, per the layer's methods:
`smooth` (per-input-channel divisor, SmoothQuant), `rotation` (int8 signs (blocks, block) of a randomized
block-Hadamard rotation of the input channels, applied to the smoothed input before the op: see
`compression.rotation`), `lora_down`/`lora_up` (the high-precision
low-rank branch, SVDQuant), `act_scales` (one static activation scale per timestep bucket; two per
bucket with shortcut splitting), `bos_out` (the float output for a prompt-independent first text
token, MixDQ's BOS-aware quantization: replaces the quantized output at sequence position 0).
`act_split` (a plain attribute, saved in the quantization config): the channel where a
concatenated conv input splits into separately quantized halves (Q-Diffusion shortcut splitting).
Conv2d weights (out, in/groups, kh, kw) are stored flattened as (N=out, K=in/groups*kh*kw); the
reference path dequantizes and runs `conv2d` (compressed storage, float compute). With activation
quantization, conv inputs are quantized per pixel over channels (a "token" is one spatial position).
"""
from __future__ import annotations

import torch
from torch import nn

from ..kernels import ops  # noqa: F401  (registers torch.ops.diffpress.*)
from ..kernels.dispatch import Backend, parse_backend, resolve_backend
from ..formats import spec_of
from ..kernels.layout import ZERO_POINT_DTYPE, PackedWeight, qdata_dtype, qdata_shape, scale_dtype_for, scales_shape
from ..recipe import ActMode, QuantSpec, Rotation, layer_scale_method
from .quantize import quantize_weight
from .rotation import layer_signs, rotate_flat, transformed_input

OPTIONAL_BUFFERS = ("smooth", "rotation", "lora_down", "lora_up", "act_scales", "bos_out")
# What defines the quantization: moved between devices, never cast to another dtype (a dtype cast of
# the model changes the compute dtype: biases, the low-rank branch and the BOS output follow it).
QUANTIZATION_BUFFERS = ("qdata", "scales", "zero_points", "smooth", "rotation", "act_scales")


class _QuantWeightMixin:
    """The packed weight, the optional method buffers and the spec, shared by both module types."""

    spec: QuantSpec
    weight_shape: tuple[int, int]

    def _register_packed(self, spec: QuantSpec, shape: tuple[int, int], device) -> None:
        self.spec, self.weight_shape = spec, shape
        self.fqn = ""
        self.timestep_tracker = None
        self.requested_backend = Backend.AUTO
        self.backend: str | None = Backend.REFERENCE.value  # resolved for the layer's device: see set_backend
        self.backend_error = ""
        self.act_split: int | None = None
        self.register_buffer("qdata", torch.empty(qdata_shape(spec.weight_format, shape),
                                                  dtype=qdata_dtype(spec.weight_format), device=device))
        self.register_buffer("scales", torch.empty(scales_shape(spec.granularity, shape, spec.group_size),
                                                   dtype=scale_dtype_for(spec.granularity), device=device))
        asymmetric = spec_of(spec.weight_format).zero_point
        self.register_buffer("zero_points", torch.empty(scales_shape(spec.granularity, shape, spec.group_size),
                                                        dtype=ZERO_POINT_DTYPE, device=device) if asymmetric else None)
        for name in OPTIONAL_BUFFERS:
            self.register_buffer(name, None)

    @classmethod
    def from_float(cls, module: nn.Module, spec: QuantSpec):
        """Quantize `module` (an nn.Linear or nn.Conv2d) with `spec`, nearest rounding (rotated first when the
        spec's rotation is hadamard; `auto` decides on calibration inputs, which this path has not)."""
        flat = module.weight.detach().reshape(module.weight.shape[0], -1)
        signs = layer_signs(module) if spec.rotation is Rotation.HADAMARD else None
        if signs is not None:
            flat = rotate_flat(flat, signs, flat.shape[1] // signs.numel())
        packed = quantize_weight(flat, spec.weight_format, spec.granularity, spec.group_size,
                                 layer_scale_method(spec, module))
        quantized = cls.from_packed(module, spec, packed)
        quantized.set_optional("rotation", signs)
        return quantized

    @classmethod
    def from_packed(cls, module: nn.Module, spec: QuantSpec, packed: PackedWeight):
        """A quantized module holding `packed` (quantized elsewhere, the flattened (N, K) weight) and `module`'s bias."""
        quantized = cls.empty_like(module, spec)
        quantized.set_packed(packed)
        if module.bias is not None:
            quantized.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
        return quantized

    def set_packed(self, packed: PackedWeight) -> None:
        self.qdata, self.scales, self.zero_points = packed.qdata, packed.scales, packed.zero_points

    def set_optional(self, name: str, tensor: torch.Tensor | None) -> None:
        if name not in OPTIONAL_BUFFERS:
            raise ValueError(f"unknown optional buffer {name!r}; allowed: {OPTIONAL_BUFFERS}")
        # contiguous, as a loaded tensor is: a strided view would round differently in the matmul
        setattr(self, name, tensor.contiguous() if tensor is not None else None)

    @property
    def qweight(self) -> torch.Tensor:
        """The packed codes, under the name peft looks for to find a quantized layer's device (LoRA adapters)."""
        return self.qdata

    @property
    def packed(self) -> PackedWeight:
        s = self.spec
        return PackedWeight(self.qdata, self.scales, s.weight_format, s.granularity, s.group_size, self.weight_shape,
                            self.zero_points)

    def _low_rank(self):
        return (self.lora_down, self.lora_up) if self.lora_down is not None else None

    def _act_scale(self) -> torch.Tensor | None:
        if self.spec.act_mode is not ActMode.STATIC or self.spec.act_format is None:
            return None
        if self.timestep_tracker is None:
            from ..errors import DiffpressError
            raise DiffpressError(f"layer {self.fqn} has static activation scales but no timestep tracker; "
                                 "load the model with diffpress.load")
        return self.act_scales[self.timestep_tracker.current_bucket(self.fqn)]

    def set_backend(self, requested: Backend | str) -> None:
        """Resolve `auto | triton | reference` for this layer's device and formats (raises if triton cannot run);
        the request is kept and resolved again whenever the layer moves to another device."""
        self.requested_backend = parse_backend(requested)
        self.backend = resolve_backend(self.requested_backend, self.qdata.device, self.spec.weight_format,
                                       self.spec.act_format, self.fqn).value

    def _apply(self, fn, recurse: bool = True):
        """`.to()`, `.cuda()`, `.half()`...: quantization buffers move with the module but keep their dtype; then
        the backend is resolved for the new device. A backend that cannot run there is reported when the layer
        is called, so that moving a model never stops half-way."""
        exact = {name: self._buffers[name] for name in QUANTIZATION_BUFFERS if self._buffers.get(name) is not None}
        for name in exact:
            self._buffers[name] = None
        try:
            result = super()._apply(fn, recurse)
        finally:
            for name, tensor in exact.items():
                self._buffers[name] = _moved_like(tensor, fn)
        self._resolve_after_move()
        return result

    def _resolve_after_move(self) -> None:
        from ..errors import DiffpressError

        if self.qdata.is_meta:
            return
        try:
            self.set_backend(self.requested_backend)
        except DiffpressError as error:
            self.backend, self.backend_error = None, str(error)

    def _op_input(self, x: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the op's input, the smoothing divisor the op still applies): with a rotation the smoothed, rotated
        input in x's dtype and no divisor; without, x and the divisor."""
        if self.rotation is None:
            return x, self.smooth
        return transformed_input(x, self.smooth, self.rotation, channel_dim).to(x.dtype), None

    def _op_args(self, smooth: torch.Tensor | None) -> tuple:
        """The tensors and plain values every diffpress custom op takes after x."""
        s = self.spec
        return (self.qdata, self.scales, self.zero_points, self.bias, smooth, self.lora_down, self.lora_up, self._act_scale(),
                s.weight_format.value, s.granularity.value, s.group_size or 0)

    def _resolved_backend(self) -> str:
        if self.backend is None:
            from ..errors import DiffpressError
            raise DiffpressError(self.backend_error)
        return self.backend

    def _spec_repr(self) -> str:
        return f"{self.spec.describe()}, backend={self.backend}"


class QuantLinear(_QuantWeightMixin, nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, spec: QuantSpec,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._register_packed(spec, (out_features, in_features), device)
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def empty_like(cls, linear: nn.Linear, spec: QuantSpec) -> "QuantLinear":
        """A shell with meta tensors of the right shapes, for load_state_dict(assign=True)."""
        return cls(linear.in_features, linear.out_features, linear.bias is not None, spec,
                   device="meta", dtype=linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.spec.act_format.value if self.spec.act_format else ""
        x, smooth = self._op_input(x, -1)
        y = torch.ops.diffpress.quantized_linear(x, *self._op_args(smooth), self.weight_shape[1], act,
                                                 self.spec.act_group_size or 0, self._resolved_backend())
        return self._with_bos_output(y)

    def _with_bos_output(self, y: torch.Tensor) -> torch.Tensor:
        """Sequence position 0 takes the stored float output (its input is the same for every prompt)."""
        if self.bos_out is None or y.dim() != 3:
            return y
        first = self.bos_out.to(y.dtype).expand(y.shape[0], 1, y.shape[2])
        return torch.cat([first, y[:, 1:]], dim=1)

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
    def empty_like(cls, conv: nn.Conv2d, spec: QuantSpec) -> "QuantConv2d":
        """A shell with meta tensors of the right shapes, for load_state_dict(assign=True)."""
        return cls(conv, spec)

    @property
    def conv_params(self) -> dict:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.spec.act_format.value if self.spec.act_format else ""
        padding = (0, 0) if isinstance(self.padding, str) else self.padding
        padding_name = self.padding if isinstance(self.padding, str) else ""
        x, smooth = self._op_input(x, 1)
        return torch.ops.diffpress.quantized_conv2d(x, *self._op_args(smooth), list(self.kernel_shape), list(self.stride),
                                                    list(padding), padding_name, list(self.dilation), self.groups,
                                                    act, self.spec.act_group_size or 0, self.act_split or 0,
                                                    self._resolved_backend())

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, {self._spec_repr()}")


def _moved_like(tensor: torch.Tensor, fn) -> torch.Tensor:
    """`tensor` on the device `fn` would put a tensor of its device on, in its own dtype."""
    device = fn(torch.empty(0, device=tensor.device)).device
    if tensor.is_meta and device.type != "meta":
        return torch.empty_like(tensor, device=device)
    return tensor.to(device)


def set_backends(model: nn.Module, backend: Backend | str = Backend.AUTO) -> nn.Module:
    """Resolve `backend` for every quantized layer of `model` on its current device (call again after `.to()`)."""
    backend = parse_backend(backend)
    for module in model.modules():
        if isinstance(module, (QuantLinear, QuantConv2d)):
            module.set_backend(backend)
    return model
