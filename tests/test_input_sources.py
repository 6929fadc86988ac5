"""Structural methods: shortcut splitting of concatenated conv inputs, BOS-aware text-token layers."""
import pytest
import torch
from torch import nn

import diffpress
import tiny_models
import tiny_pipelines
from diffpress.calibration import calibrate, collect
from diffpress.compression.input_sources import find_concat_splits, find_constant_first_tokens
from diffpress.compression.modules import QuantConv2d, QuantLinear
from diffpress.compression.ptq import quantize_model
from diffpress.formats import QuantFormat
from diffpress.kernels.reference import fake_quantize_per_token, prepare_activation
from diffpress.recipe import QuantSpec, Recipe


def test_concat_splits_are_the_up_block_skip_joins():
    model, inputs = tiny_models.build("unet2d_condition")
    splits = find_concat_splits(model, inputs)
    up_blocks = model.up_blocks
    for b, block in enumerate(up_blocks):
        for i, resnet in enumerate(block.resnets):
            # the part before the skip: the previous resnet's output, or the previous block's
            previous = block.resnets[i - 1] if i else (up_blocks[b - 1].resnets[-1] if b else up_blocks[0].resnets[0])
            name = f"up_blocks.{b}.resnets.{i}"
            assert splits[f"{name}.conv1"] == previous.out_channels
            assert splits[f"{name}.conv_shortcut"] == previous.out_channels
            assert 0 < splits[f"{name}.conv1"] < resnet.conv1.in_channels
    assert all(name.startswith("up_blocks.") for name in splits)
    assert not any(name.endswith("conv2") for name in splits)  # conv2's input is the resnet's own output


def test_split_quantizes_each_half_with_its_own_scales():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 3, 3)
    x[:, 8:] *= 50  # the skip half is 50x larger, as skip features often are
    _, split = prepare_activation(x, QuantFormat.INT8, channel_dim=1, act_split=8)
    _, joint = prepare_activation(x, QuantFormat.INT8, channel_dim=1)
    per_half = [fake_quantize_per_token(part.movedim(1, -1), QuantFormat.INT8).movedim(-1, 1) for part in x.split([8, 4], 1)]
    assert torch.equal(split, torch.cat(per_half, dim=1))
    small_error = lambda q: float((q[:, :8] - x[:, :8]).square().mean())
    assert small_error(split) < 0.01 * small_error(joint)
    static = torch.tensor([1.0 / 127, 50.0 / 127]) * 3
    _, with_static = prepare_activation(x, QuantFormat.INT8, static, channel_dim=1, act_split=8)
    assert small_error(with_static) < small_error(prepare_activation(x, QuantFormat.INT8, static[1], channel_dim=1)[1])


@pytest.fixture(scope="module")
def unet_calibrated():
    model, inputs = tiny_models.build("unet2d_condition")
    calibration = calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [900, 500, 100]), buckets=3,
                            reservoir_size=1, progress=False)
    return model, inputs, calibration


@pytest.mark.parametrize("act_mode", ["dynamic", "static"])
def test_split_shortcuts_quantize_save_and_load(unet_calibrated, tmp_path, act_mode):
    model, inputs, calibration = unet_calibrated
    inputs = {**inputs, "timestep": torch.tensor([500, 500])}  # static scales: one timestep per call
    import copy
    quantized = copy.deepcopy(model)
    spec = QuantSpec("int8", "per_channel", act_format="int8", act_mode=act_mode, split_shortcuts=True)
    quantize_model(quantized, Recipe(spec), calibration)
    conv1 = quantized.get_submodule("up_blocks.0.resnets.1.conv1")
    assert isinstance(conv1, QuantConv2d) and conv1.act_split == 64
    assert quantized.get_submodule("down_blocks.0.resnets.0.conv1").act_split is None
    if act_mode == "static":
        assert conv1.act_scales.shape == (3, 2) and not torch.equal(conv1.act_scales[:, 0], conv1.act_scales[:, 1])
    expected = tiny_models.run(quantized, inputs)
    diffpress.save(quantized, tmp_path / "out")
    loaded = diffpress.load(tmp_path / "out")
    assert loaded.get_submodule("up_blocks.0.resnets.1.conv1").act_split == 64
    assert torch.equal(tiny_models.run(loaded, inputs), expected)


def test_split_shortcuts_needs_activation_quantization():
    with pytest.raises(ValueError, match="split_shortcuts"):
        QuantSpec("int8", "per_channel", split_shortcuts=True)


@pytest.fixture(scope="module")
def sd_calibrated(tmp_path_factory):
    pipe = tiny_pipelines.tiny_sd_pipeline(tmp_path_factory.mktemp("sd"))
    pipe.set_progress_bar_config(disable=True)
    with collect(pipe, buckets=2, reservoir_size=2) as calib:
        for prompt in ["a cat", "a red house by the sea"]:
            pipe(prompt=[prompt], num_inference_steps=3, guidance_scale=3.0, output_type="latent", height=8, width=8,
                 generator=torch.Generator().manual_seed(0))
    return pipe, calib.result


CROSS_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
SELF_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"


def test_constant_first_token_found_only_for_text_layers(sd_calibrated):
    pipe, calibration = sd_calibrated
    calls = [entry.call_kwargs() for entry in calibration.entries()]
    found = find_constant_first_tokens(pipe.unet, calls, {CROSS_K, SELF_K})
    assert set(found) == {CROSS_K}  # CLIP is causal: its BOS output is the same for every prompt
    assert torch.equal(found[CROSS_K], calls[0]["encoder_hidden_states"][0, 0].float())
    model, inputs = tiny_models.build("unet2d_condition")  # random text states: the first token varies
    varied = [{**inputs, "timestep": torch.tensor([t, t])} for t in (100, 900)]
    assert find_constant_first_tokens(model, varied, {CROSS_K}) == {}


def test_bos_aware_keeps_the_first_token_output_in_float(sd_calibrated):
    pipe, calibration = sd_calibrated
    import copy
    unet = copy.deepcopy(pipe.unet)
    spec = QuantSpec("int4", "per_group", 32, act_format="int8", bos_aware=True)
    quantize_model(unet, Recipe(spec), calibration)
    cross, self_attention = unet.get_submodule(CROSS_K), unet.get_submodule(SELF_K)
    assert isinstance(cross, QuantLinear) and cross.bos_out is not None and self_attention.bos_out is None
    text = next(iter(calibration.reservoir.values()))[0].call_kwargs()["encoder_hidden_states"]
    float_k = pipe.unet.get_submodule(CROSS_K)(text)
    quantized_k = cross(text)
    error = (quantized_k - float_k).detach().abs().amax(dim=(0, 2))  # per token
    assert error[0] < 1e-5 and error[1:].min() > 1e-3  # float for the BOS token, quantized for the rest
