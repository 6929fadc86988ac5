"""Placement: the device and compute dtype every stage runs on, with the model offloaded block by block.

On a CPU-only machine the device cannot differ from the model's, so these tests use the compute dtype
(float64 on a float32 model) as the observable: a stage that ran outside the placement sees float32
weights, a tensor left behind by the offload mixes dtypes and raises. GPU tests run the same paths on
CUDA where a GPU is lent.
"""
import copy

import pytest
import torch
from torch import nn

import diffpress
import tiny_models
from diffpress import placement
from diffpress.calibration import calibrate
from diffpress.compression.ptq import quantize_model
from diffpress.compression.rounding import RoundingOptions
from diffpress.compression.surgery import compressed_layers
from diffpress.errors import InputError
from diffpress.placement import Placement, ResidentBytes, materialized, offload_units, placed
from diffpress.recipe import QuantSpec, Recipe

FLOAT64 = Placement(torch.device("cpu"), torch.float64)


def _weights_seen(model: nn.Module) -> tuple[set, list]:
    """(dtypes of Linear/Conv2d weights and inputs at call time, hook handles)."""
    seen = set()
    hook = lambda module, args: seen.add((module.weight.dtype, args[0].dtype))
    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return seen, handles


def _calibrated(model, inputs):
    loop = tiny_models.timestep_loop(inputs, [900, 600, 300, 50])
    return calibrate(model, forward_loop=loop, buckets=4, reservoir_size=1, progress=False)


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_calls_run_in_the_compute_dtype_and_the_model_is_left_as_it_was():
    model, inputs = tiny_models.build("unet2d_condition")
    stored = {k: v.clone() for k, v in model.state_dict().items()}
    seen, handles = _weights_seen(model)
    with placed(model, FLOAT64):
        output = tiny_models.run(model, inputs)
    for handle in handles:
        handle.remove()
    assert seen == {(torch.float64, torch.float64)}
    assert output.dtype == torch.float32  # the caller gets its own dtype back
    assert all(torch.equal(v, stored[k]) and v.dtype == stored[k].dtype for k, v in model.state_dict().items())
    float64_reference = tiny_models.run(copy.deepcopy(model).double(), {k: v.double() if v.is_floating_point() else v
                                                                        for k, v in inputs.items()})
    assert torch.equal(output, float64_reference.float())


def test_offload_holds_one_unit_at_a_time():
    model, inputs = tiny_models.build("unet2d_condition")
    units, loose = offload_units(model)
    assert "down_blocks.0.resnets.0" in {name for name, m in model.named_modules() if any(m is u for u in units)}
    covered = {id(t) for unit in units for t in unit.parameters()} | \
        {id(t) for m in loose for t in m.parameters(recurse=False)}
    assert covered == {id(t) for t in model.parameters()}  # every tensor moves with some unit
    tracker = ResidentBytes()
    with placed(model, FLOAT64, tracker):
        tiny_models.run(model, inputs)
    largest_unit = max(_bytes(unit.parameters()) for unit in units) * 2  # float64
    loose_bytes = sum(_bytes(m.parameters(recurse=False)) for m in loose) * 2
    assert tracker.now == 0
    assert largest_unit <= tracker.peak <= largest_unit + loose_bytes
    assert tracker.peak < _bytes(model.parameters()) * 2


def test_a_placement_in_the_stored_dtype_changes_nothing():
    model, inputs = tiny_models.build("unet2d_condition")
    plain = _calibrated(model, inputs)
    with placed(model, Placement(torch.device("cpu"), torch.float32)):  # hooks installed, no tensor moves
        hooked = _calibrated(model, inputs)
    fqn = plain.layers[0]
    for bucket, stats in plain.layer_stats(fqn).items():
        assert torch.equal(stats.channel_sumsq, hooked.layer_stats(fqn)[bucket].channel_sumsq)


@pytest.mark.parametrize("rounding", ["gptq", "learned", "block"])
def test_every_quantization_stage_runs_under_the_placement(rounding):
    model, inputs = tiny_models.build("unet2d_condition")
    calibration = _calibrated(model, inputs)
    spec = QuantSpec("int4", "per_group", 32, act_format="int8", smoothing="auto", rounding=rounding)
    results = {}
    for name, where in (("plain", None), ("float64", FLOAT64)):
        quantized = copy.deepcopy(model)
        seen, handles = _weights_seen(quantized)
        with placed(quantized, where) if where else placement.placed(quantized, placement.CPU):
            quantize_model(quantized, Recipe(spec), calibration, rounding=RoundingOptions(iterations=20))
        for handle in handles:
            handle.remove()
        results[name] = (quantized, seen)
    # input capture (and block reconstruction's replay) ran the float model in float64
    assert results["float64"][1] == {(torch.float64, torch.float64)}
    assert results["plain"][1] <= {(torch.float32, torch.float32)}
    plain, on_float64 = dict(compressed_layers(results["plain"][0])), dict(compressed_layers(results["float64"][0]))
    assert plain.keys() == on_float64.keys()
    for fqn, module in on_float64.items():  # the quantized model is the stored-dtype kind, on the model's device
        assert module.scales.dtype == plain[fqn].scales.dtype and module.scales.device.type == "cpu"
        assert (module.qdata == plain[fqn].qdata).float().mean() > 0.9  # same codes but for float64 input rows


def test_a_unit_that_raises_gives_its_tensors_back():
    model, inputs = tiny_models.build("unet2d_condition")
    block = model.down_blocks[0].resnets[0]
    boom = block.register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        with placed(model, FLOAT64):
            tiny_models.run(model, inputs)
    boom.remove()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not model._forward_pre_hooks and not block._forward_pre_hooks  # hooks removed on the way out


def test_materialized_keeps_a_unit_on_the_device_for_training():
    model, inputs = tiny_models.build("unet2d_condition")
    block = model.down_blocks[0].resnets[0]
    with placed(model, FLOAT64), materialized(block):
        x = torch.randn(2, block.conv1.in_channels, 8, 8, dtype=torch.float64, requires_grad=True)
        temb = torch.randn(2, block.time_emb_proj.in_features, dtype=torch.float64)
        block(x, temb).square().mean().backward()  # backward reads the float64 weights the forward used
        assert x.grad is not None and x.grad.dtype == torch.float64
    assert {p.dtype for p in block.parameters()} == {torch.float32}


def test_device_and_dtype_names_are_checked():
    assert Placement.resolve("cpu", "bfloat16") == Placement(torch.device("cpu"), torch.bfloat16)
    assert Placement.resolve(None, "stored").compute_dtype is None
    with pytest.raises(InputError, match="not one of stored"):
        Placement.resolve("cpu", "int8")
    with pytest.raises(InputError, match="cpu or cuda"):
        Placement.resolve("meta")
    if not torch.cuda.is_available():
        assert Placement.resolve().device == torch.device("cpu")
        with pytest.raises(InputError, match="no CUDA device"):
            Placement.resolve("cuda")


def test_cli_takes_device_and_compute_dtype(tmp_path, capsys):
    from diffpress.cli.main import main

    out = tmp_path / "w8"
    assert main(["compress", "builtin:digits", "--preset", "w8a8-int8", "--out", str(out), "--quiet",
                 "--device", "cpu", "--compute-dtype", "float64"]) == 0
    assert "computed on cpu (float64)" in capsys.readouterr().out
    assert diffpress.load(out) is not None
    assert main(["compress", "builtin:digits", "--preset", "w8a8-int8", "--out", str(tmp_path / "x"), "--quiet",
                 "--device", "cuda:7"]) != 0 or torch.cuda.device_count() > 7


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compress_on_the_gpu_matches_the_cpu(tmp_path):
    for device in ("cpu", "cuda"):
        diffpress.compress("builtin:digits", "w4a8-int", tmp_path / device, device=device,
                           calibration=diffpress.CalibrationOptions(num_samples=8, steps=10))
    cpu, gpu = (diffpress.load(tmp_path / d) for d in ("cpu", "cuda"))
    agreeing = [(a.qdata == b.qdata).float().mean() for (_, a), (_, b) in zip(compressed_layers(cpu),
                                                                              compressed_layers(gpu))]
    assert min(agreeing) > 0.95


def test_capture_groups_keep_blocks_whole_within_the_budget():
    from diffpress.compression.layer_inputs import capture_bytes, capture_groups
    from diffpress.compression.surgery import compressible_layers

    model, _ = tiny_models.build("unet2d_condition")
    layers = [fqn for fqn, _ in compressible_layers(model)]
    budget = 40 * capture_bytes(model.get_submodule(layers[0]), 64)
    groups = capture_groups(model, layers, set(layers), 64, budget)
    assert [fqn for group in groups for fqn in group] == layers and len(groups) > 2
    block = "down_blocks.0.resnets.0."
    assert len({i for i, group in enumerate(groups) for fqn in group if fqn.startswith(block)}) == 1
    units = [name for name, m in model.named_modules() if any(m is u for u in offload_units(model)[0])]
    owner = lambda fqn: max((u for u in units if fqn.startswith(u + ".")), key=len, default=fqn)
    for group in groups:  # within the budget, or one block larger than it on its own
        cost = sum(capture_bytes(model.get_submodule(fqn), 64) for fqn in group)
        assert cost <= budget or len({owner(fqn) for fqn in group}) == 1


def test_inputs_from_the_quantized_model_change_only_later_groups():
    from diffpress.compression.layer_inputs import CaptureOptions

    model, inputs = tiny_models.build("unet2d_condition")
    calibration = _calibrated(model, inputs)
    spec = QuantSpec("int4", "per_group", 32, act_format="int8", rounding="gptq")
    codes = {}
    for mode in ("float", "quantized"):
        quantized = copy.deepcopy(model)
        quantize_model(quantized, Recipe(spec), calibration, capture=CaptureOptions(mode, max_bytes=1))
        codes[mode] = {fqn: m.qdata for fqn, m in compressed_layers(quantized)}
    first = next(iter(codes["float"]))
    assert torch.equal(codes["float"][first], codes["quantized"][first])  # the first group sees float inputs either way
    changed = [fqn for fqn in codes["float"] if not torch.equal(codes["float"][fqn], codes["quantized"][fqn])]
    assert changed and first not in changed
