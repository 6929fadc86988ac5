"""The quantized ops as torch custom ops: `torch.ops.diffpress.quantized_linear` / `quantized_conv2d`.

Registered with `torch.library.custom_op` and a `register_fake` shape function, so
`torch.compile(model, fullgraph=True)` sees one opaque node per quantized layer (no graph break).
Arguments are tensors and plain values (custom ops need concrete types): formats are their string
values, "" means no activation quantization, 0 means no group size / no act_split; `backend` is the
layer's resolved backend ("reference" or "triton"). Importing this module never imports triton:
the triton path (`ops_triton`) is imported on the first call that asks for it.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..formats import Granularity, QuantFormat
from . import reference
from .layout import PackedWeight


def packed_weight(qdata: torch.Tensor, scales: torch.Tensor, zero_points: Optional[torch.Tensor], weight_format: str,
                  granularity: str, group_size: int, k: int) -> PackedWeight:
    return PackedWeight(qdata, scales, QuantFormat(weight_format), Granularity(granularity), group_size or None,
                        (qdata.shape[0], k), zero_points)


def _low_rank(down: Optional[torch.Tensor], up: Optional[torch.Tensor]):
    return (down, up) if down is not None else None


@torch.library.custom_op("diffpress::quantized_linear", mutates_args=())
def quantized_linear(x: torch.Tensor, qdata: torch.Tensor, scales: torch.Tensor, zero_points: Optional[torch.Tensor],
                     bias: Optional[torch.Tensor],
                     smooth: Optional[torch.Tensor], lora_down: Optional[torch.Tensor],
                     lora_up: Optional[torch.Tensor], act_scale: Optional[torch.Tensor], weight_format: str,
                     granularity: str, group_size: int, k: int, act_format: str, act_group: int,
                     backend: str) -> torch.Tensor:
    """y = Q(x / smooth) @ dequant(W).T + bias [+ low-rank branch]; see `reference.quantized_linear`. act_group:
    the group size of 4-bit activation scales (0: per token)."""
    packed = packed_weight(qdata, scales, zero_points, weight_format, granularity, group_size, k)
    act = QuantFormat(act_format) if act_format else None
    if backend == "triton":
        from . import ops_triton
        return ops_triton.quantized_linear(x, packed, bias, act, act_scale, smooth, _low_rank(lora_down, lora_up))
    _check_backend(backend)
    return reference.quantized_linear(x, packed, bias, act, act_scale, smooth, _low_rank(lora_down, lora_up),
                                      act_group or None)


@quantized_linear.register_fake
def _(x, qdata, scales, zero_points, bias, smooth, lora_down, lora_up, act_scale, weight_format, granularity,
      group_size, k, act_format, act_group, backend):
    return x.new_empty((*x.shape[:-1], qdata.shape[0]))


@torch.library.custom_op("diffpress::quantized_conv2d", mutates_args=())
def quantized_conv2d(x: torch.Tensor, qdata: torch.Tensor, scales: torch.Tensor, zero_points: Optional[torch.Tensor],
                     bias: Optional[torch.Tensor],
                     smooth: Optional[torch.Tensor], lora_down: Optional[torch.Tensor],
                     lora_up: Optional[torch.Tensor], act_scale: Optional[torch.Tensor], weight_format: str,
                     granularity: str, group_size: int, kernel_shape: list[int], stride: list[int],
                     padding: list[int], padding_name: str, dilation: list[int], groups: int, act_format: str,
                     act_group: int, act_split: int, backend: str) -> torch.Tensor:
    """Conv2d with a packed weight; `padding_name` ("same"/"valid", else "") overrides `padding`."""
    k = kernel_shape[1] * kernel_shape[2] * kernel_shape[3]
    packed = packed_weight(qdata, scales, zero_points, weight_format, granularity, group_size, k)
    conv = conv_params(stride, padding, padding_name, dilation, groups)
    act = QuantFormat(act_format) if act_format else None
    split = act_split if act_split > 0 else None
    if backend == "triton":
        from . import ops_triton
        return ops_triton.quantized_conv2d(x, packed, tuple(kernel_shape), bias, conv, act, act_scale, smooth,
                                           _low_rank(lora_down, lora_up), split).contiguous()
    _check_backend(backend)
    return reference.quantized_conv2d(x, packed, tuple(kernel_shape), bias, conv, act, act_scale, smooth,
                                      _low_rank(lora_down, lora_up), act_split=split,
                                      act_group_size=act_group or None).contiguous()


@quantized_conv2d.register_fake
def _(x, qdata, scales, zero_points, bias, smooth, lora_down, lora_up, act_scale, weight_format, granularity,
      group_size, kernel_shape, stride, padding, padding_name, dilation, groups, act_format, act_group, act_split,
      backend):
    weight = x.new_empty(kernel_shape)
    shape = torch.nn.functional.conv2d(x, weight, None, **conv_params(stride, padding, padding_name, dilation,
                                                                        groups)).shape
    return x.new_empty(shape)  # contiguous, as both implementations return


def conv_params(stride, padding, padding_name: str, dilation, groups: int) -> dict:
    return {"stride": tuple(stride), "padding": padding_name or tuple(padding), "dilation": tuple(dilation),
            "groups": groups}


def _check_backend(backend: str) -> None:
    if backend != "reference":
        raise ValueError(f"backend must be a resolved backend, 'reference' or 'triton', got {backend!r}")
