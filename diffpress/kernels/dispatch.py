"""Which implementation runs a quantized layer: `auto | triton | reference`, resolved once per layer.

`reference` is the torch implementation (any device). `triton` is the fused kernels: it needs a
CUDA GPU of compute capability 8.0+ (8.9+ where an FP8 tensor-core dot is involved) and a kernel
for the layer's format pair, or `TRITON_INTERPRET=1` (Triton's CPU interpreter, used by the tests).
`auto` takes triton on a CUDA tensor where it can run and reference otherwise; asking for triton
where it cannot run raises with the reason. Nothing here imports triton unless triton is asked about.
"""
from __future__ import annotations

import enum
import importlib.util
import os

import torch

from ..errors import DiffpressError
from ..formats import QuantFormat, spec_of


class Backend(str, enum.Enum):
    AUTO = "auto"
    TRITON = "triton"
    REFERENCE = "reference"


def parse_backend(value: "Backend | str") -> Backend:
    try:
        return Backend(value)
    except ValueError:
        allowed = ", ".join(b.value for b in Backend)
        raise DiffpressError(f"backend {value!r} is not one of: {allowed}") from None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class KernelFamily(str, enum.Enum):
    """The Triton kernel families a quantized linear layer can run on (one file each)."""

    W8A8 = "w8a8"  # 8-bit weights x 8-bit activations of the same type
    W4A8 = "w4a8"  # 4-bit weights unpacked into the 8-bit activation operand
    WEIGHT_ONLY = "w4a16"  # 4- or 8-bit weights, activations in the model dtype


def linear_kernel(weight_format: QuantFormat, act_format: QuantFormat | None) -> KernelFamily | None:
    """The kernel family that runs a linear layer with these formats, or None when no kernel does."""
    if act_format is None:
        return KernelFamily.WEIGHT_ONLY
    if spec_of(act_format).bits == 4:
        return None  # 4-bit activations: no Triton kernel yet (4-bit tensor-core dots need Blackwell)
    if spec_of(weight_format).zero_point:
        return None  # the integer-dot kernels take symmetric codes only
    if spec_of(weight_format).bits == 4:
        return KernelFamily.W4A8
    if spec_of(weight_format).storage_dtype == spec_of(act_format).storage_dtype:
        return KernelFamily.W8A8
    return None


def kernel_gap(weight_format: QuantFormat, act_format: QuantFormat | None) -> str | None:
    """Why no Triton kernel covers this (weight, activation) pair, or None when one does."""
    if linear_kernel(weight_format, act_format) is not None:
        return None
    if spec_of(act_format).bits == 4:
        return (f"{act_format.value} activations run on the reference backend (4-bit activation dots need "
                "Blackwell tensor cores; no Triton kernel yet)")
    if spec_of(weight_format).zero_point:
        return (f"the W4A8 and W8A8 kernels multiply symmetric codes; asymmetric {weight_format.value} weights with "
                f"{act_format.value} activations run on the reference backend")
    return (f"the W8A8 kernel multiplies codes of one type; weight {weight_format.value} with "
            f"activations {act_format.value} has no Triton kernel")


def device_gap(device: torch.device, weight_format: QuantFormat, act_format: QuantFormat | None) -> str | None:
    """Why Triton cannot run on `device`, or None when it can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type != "cuda":
        if interpreting():
            return None
        return (f"triton backend needs a CUDA GPU; this layer is on {device.type} "
                "(set TRITON_INTERPRET=1 to run the kernels in Triton's CPU interpreter)")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        return f"triton kernels need compute capability >= 8.0; {torch.cuda.get_device_name(device)} is {major}.{minor}"
    fp8_dot = act_format is QuantFormat.FP8_E4M3
    if fp8_dot and (major, minor) < (8, 9):
        return f"FP8 tensor-core dots need compute capability >= 8.9; {torch.cuda.get_device_name(device)} is {major}.{minor}"
    return None


def resolve_backend(requested: "Backend | str", device: torch.device, weight_format: QuantFormat,
                    act_format: QuantFormat | None, layer: str = "") -> Backend:
    """The concrete backend (triton or reference) for one layer; raises DiffpressError when triton is
    requested and cannot run, naming the layer and the reason."""
    requested = parse_backend(requested)
    if requested is Backend.REFERENCE:
        return Backend.REFERENCE
    reason = kernel_gap(weight_format, act_format) or device_gap(torch.device(device), weight_format, act_format)
    if requested is Backend.TRITON:
        if reason:
            raise DiffpressError(f"layer {layer or '?'}: backend triton cannot run: {reason}")
        return Backend.TRITON
    return Backend.TRITON if reason is None and torch.device(device).type == "cuda" else Backend.REFERENCE
