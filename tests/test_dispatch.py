"""Backend resolution (auto | triton | reference), its repr, load-time resolution, and the whole
module path on the triton backend (Triton's interpreter on CPU) against the reference backend."""
import kernel_cases  # noqa: F401  (sets TRITON_INTERPRET on CPU)
import pytest
import torch
from torch import nn

import diffpress
from diffpress.compression.modules import QuantConv2d, QuantLinear, set_backends
from diffpress.errors import DiffpressError
from diffpress.formats import QuantFormat
from diffpress.kernels import dispatch
from diffpress.kernels.dispatch import Backend, resolve_backend
from diffpress.presets import preset
from diffpress.recipe import QuantSpec

CPU = torch.device("cpu")


def _no_interpreter(monkeypatch):
    """As on a CPU machine without TRITON_INTERPRET (the variable itself stays: triton reads it once)."""
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)


def test_cpu_resolves_auto_to_reference(monkeypatch):
    _no_interpreter(monkeypatch)
    assert resolve_backend("auto", CPU, QuantFormat.INT8, QuantFormat.INT8) is Backend.REFERENCE
    assert resolve_backend("reference", CPU, QuantFormat.INT4, None) is Backend.REFERENCE


def test_triton_on_cpu_raises_with_the_reason(monkeypatch):
    _no_interpreter(monkeypatch)
    with pytest.raises(DiffpressError, match="needs a CUDA GPU; this layer is on cpu"):
        resolve_backend("triton", CPU, QuantFormat.INT8, QuantFormat.INT8, layer="blocks.0.ff")


def test_unknown_backend_and_missing_kernel_are_named(monkeypatch):
    with pytest.raises(DiffpressError, match="not one of: auto, triton, reference"):
        resolve_backend("cuda", CPU, QuantFormat.INT8, None)
    with pytest.raises(DiffpressError, match="no Triton kernel"):
        resolve_backend("triton", CPU, QuantFormat.INT8, QuantFormat.FP8_E4M3)
    assert resolve_backend("triton", CPU, QuantFormat.FP4_E2M1, QuantFormat.INT8) is Backend.TRITON
    assert resolve_backend("triton", CPU, QuantFormat.UINT4, None) is Backend.TRITON
    with pytest.raises(DiffpressError, match="asymmetric uint4 weights with int8 activations run on the reference"):
        resolve_backend("triton", CPU, QuantFormat.UINT4, QuantFormat.INT8)
    assert resolve_backend("auto", CPU, QuantFormat.UINT4, QuantFormat.INT8) is Backend.REFERENCE
    with pytest.raises(DiffpressError, match="int4 activations run on the reference backend"):
        resolve_backend("triton", CPU, QuantFormat.INT4, QuantFormat.INT4)
    assert resolve_backend("auto", CPU, QuantFormat.FP4_E2M1, QuantFormat.FP4_E2M1) is Backend.REFERENCE


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU resolution rules")
def test_backend_shows_in_repr(monkeypatch):
    layer = QuantLinear.from_float(nn.Linear(40, 17), preset("w8a8-int8"))
    assert "backend=reference" in repr(layer)
    layer.set_backend("triton")
    assert "backend=triton" in repr(layer)
    layer.set_backend("auto")
    assert "backend=reference" in repr(layer)  # auto on a CPU tensor


def test_load_resolves_backend_once(tmp_path, monkeypatch):
    _no_interpreter(monkeypatch)
    import tiny_models
    from diffpress.compression.swap import quantize_

    model, _ = tiny_models.build("pixart")
    quantize_(model, preset("w8a8-int8"))
    diffpress.save(model, tmp_path / "out")
    loaded = diffpress.load(tmp_path / "out", backend="reference")
    layers = [m for m in loaded.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    assert layers and all(m.backend == "reference" for m in layers)
    with pytest.raises(DiffpressError, match="needs a CUDA GPU"):
        diffpress.load(tmp_path / "out", backend="triton")


SPECS = {
    "w8a8-int8": QuantSpec("int8", "per_channel", act_format="int8"),
    "w8a8-fp8-smooth-lowrank": QuantSpec("fp8_e4m3", "per_channel", act_format="fp8_e4m3", smoothing=0.5, low_rank=4),
    "w4a8-int": QuantSpec("int4", "per_group", 32, act_format="int8"),
    "w4a8-fp4": QuantSpec("fp4_e2m1", "per_group", 16, act_format="fp8_e4m3"),
    "w4a16-int4": QuantSpec("int4", "per_group", 32),
    "w4a16-uint4": QuantSpec("uint4", "per_group", 32),
}


def _with_methods(module, spec, channels):
    g = torch.Generator().manual_seed(5)
    if spec.smoothing is not None:
        module.set_optional("smooth", torch.rand(channels, generator=g) + 0.5)
    if spec.low_rank:
        k = module.weight_shape[1]
        module.set_optional("lora_down", torch.randn(spec.low_rank, k, generator=g) * 0.1)
        module.set_optional("lora_up", torch.randn(module.weight_shape[0], spec.low_rank, generator=g) * 0.1)
    return module


@pytest.mark.parametrize("name", SPECS)
def test_linear_triton_backend_matches_reference(name, monkeypatch):
    spec = SPECS[name]
    layer = _with_methods(QuantLinear.from_float(nn.Linear(72, 17), spec), spec, 72)
    layer, x = layer.to(kernel_cases.DEVICE), torch.randn(2, 3, 72).bfloat16().to(kernel_cases.DEVICE)
    expected = layer(x)
    layer.set_backend("triton")
    kernel_cases.assert_close(layer(x), expected, torch.bfloat16)


@pytest.mark.parametrize("name,act_split", [("w8a8-int8", 0), ("w4a8-int", 5), ("w4a16-int4", 0), ("w4a16-uint4", 0),
                                            ("w8a8-fp8-smooth-lowrank", 0)])
def test_conv_triton_backend_matches_reference(name, act_split, monkeypatch):
    spec = SPECS[name]
    conv = nn.Conv2d(8, 12, 3, padding=1)
    layer = _with_methods(QuantConv2d.from_float(conv, spec), spec, 8)
    layer.act_split = act_split or None
    layer, x = layer.to(kernel_cases.DEVICE), torch.randn(2, 8, 5, 5).to(kernel_cases.DEVICE)
    expected = layer(x)
    layer.set_backend("triton")
    kernel_cases.assert_close(layer(x), expected, torch.float32, rtol_scale=50)  # conv sums in another order


def test_set_backends_on_a_model(monkeypatch):
    model = nn.Sequential(QuantLinear.from_float(nn.Linear(40, 40), preset("w8a8-int8")),
                          QuantLinear.from_float(nn.Linear(40, 17), preset("w4a16-int4"))).to(kernel_cases.DEVICE)
    set_backends(model, "triton")
    assert [m.backend for m in model] == ["triton", "triton"]
    with pytest.raises(DiffpressError, match="not one of"):
        set_backends(model, "fast")
