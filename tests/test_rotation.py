"""Rotations: the randomized block-Hadamard transform, folded into weights and applied to activations."""
import pytest
import torch
from torch import nn

import diffpress
import tiny_models
from diffpress.calibration import calibrate
from diffpress.compression.ptq import quantize_model
from diffpress.compression.rotation import (hadamard_matrix, hadamard_transform, random_signs, rotate, rotate_flat,
                                            rotation_block)
from diffpress.compression.swap import quantize_
from diffpress.errors import InputError
from diffpress.metrics import sqnr_db
from diffpress.recipe import QuantSpec, Recipe

W4A4_INT = dict(weight_format="int4", granularity="per_group", group_size=32, act_format="int4", act_group_size=32)


@pytest.mark.parametrize("size", [1, 2, 8, 64, 256])
def test_fast_hadamard_transform_matches_the_dense_matrix(size):
    x = torch.randn(3, 5, size)
    assert torch.allclose(hadamard_transform(x), x @ hadamard_matrix(size), atol=1e-4)
    h = hadamard_matrix(size)
    assert torch.equal(h @ h.T, size * torch.eye(size))  # orthogonal up to the 1/sqrt(b) the rotation applies


def test_block_size_divides_the_channels_and_the_split_point():
    assert rotation_block(96) == 32
    assert rotation_block(3072) == 1024
    assert rotation_block(7) == 1
    assert rotation_block(128, act_split=48) == 16
    signs = random_signs(96, 32)
    assert signs.shape == (3, 32) and set(signs.unique().tolist()) == {-1, 1}
    assert torch.equal(signs, random_signs(96, 32))  # the same rotation on every run


def test_rotation_keeps_the_float_function_of_linear_and_conv():
    torch.manual_seed(0)
    signs = random_signs(48, rotation_block(48))
    x, weight = torch.randn(7, 48), torch.randn(5, 48)
    assert torch.allclose(rotate(x, signs) @ rotate(weight, signs).T, x @ weight.T, atol=1e-4)
    assert not torch.allclose(rotate(x, signs), x, atol=1e-2)
    conv = nn.Conv2d(16, 6, 3, padding=1)
    image = torch.randn(2, 16, 5, 5)
    signs = random_signs(16, 16)
    flat = rotate_flat(conv.weight.detach().reshape(6, -1), signs, 9)
    rotated = nn.functional.conv2d(rotate(image, signs, channel_dim=1), flat.reshape(6, 16, 3, 3), conv.bias, padding=1)
    assert torch.allclose(rotated, conv(image), atol=1e-4)


def _sqnr_with_and_without_rotation(linear: nn.Linear, x: torch.Tensor, spec: dict) -> dict[str, float]:
    target = linear(x)
    result = {}
    for rotation in ("none", "hadamard"):
        model = nn.Sequential(nn.Linear(linear.in_features, linear.out_features))
        model[0].load_state_dict(linear.state_dict())
        quantize_(model, QuantSpec(**spec, rotation=rotation), skip=())
        result[rotation] = sqnr_db(target, model(x))
    assert model[0].rotation.shape == (1, linear.in_features)
    return result


def test_rotation_spreads_heavy_tailed_weights_and_activations():
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    with torch.no_grad():  # one large weight per output row: it sets the row's int4 scale, the rest round to 0
        linear.weight.mul_(0.5)[torch.arange(64), torch.randint(0, 128, (64,))] *= 30
    errors = _sqnr_with_and_without_rotation(linear, torch.randn(256, 128),
                                             dict(weight_format="int4", granularity="per_channel"))
    assert errors["hadamard"] > errors["none"] + 6, errors
    # sparse activation outliers in different channels per token: each takes its 4-bit group's range
    x = torch.randn(256, 128) * torch.where(torch.rand(256, 128) < 0.02, 20.0, 1.0)
    errors = _sqnr_with_and_without_rotation(nn.Linear(128, 64), x, dict(
        weight_format="int8", granularity="per_channel", act_format="int4", act_group_size=32))
    assert errors["hadamard"] > errors["none"] + 3, errors


def test_rotated_w4a4_model_calibrates_quantizes_and_saves_bit_exact(tmp_path):
    model, inputs = tiny_models.build("pixart")
    reference = tiny_models.run(model, inputs)
    calibration = calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [950, 600, 300, 40]), buckets=4,
                            reservoir_size=1)
    methods = dict(scale_method="mse", smoothing="auto", low_rank=4, rounding="gptq")
    results = {}
    for rotation in ("none", "hadamard"):
        quantized, _ = tiny_models.build("pixart")
        quantize_model(quantized, Recipe(QuantSpec(**W4A4_INT, **methods, rotation=rotation)), calibration)
        results[rotation] = quantized
    rotated = results["hadamard"]
    sqnr = sqnr_db(reference, tiny_models.run(rotated, inputs))
    assert sqnr > 10, sqnr  # the full pipeline (smoothing search, low-rank split, GPTQ) in the rotated space
    assert rotated.transformer_blocks[0].attn1.to_q.rotation is not None
    diffpress.save(rotated, tmp_path / "rotated")
    loaded = diffpress.load(tmp_path / "rotated")
    assert torch.equal(tiny_models.run(loaded, inputs), tiny_models.run(rotated, inputs))
    assert loaded.transformer_blocks[0].attn1.to_q.spec.rotation.value == "hadamard"


def test_rotation_specs_are_checked_and_stay_out_of_old_plans():
    with pytest.raises(InputError, match="rotation needs dynamic activation scales"):
        QuantSpec("int8", "per_channel", act_format="int8", act_mode="static", rotation="hadamard")
    with pytest.raises(InputError, match="rotation 'givens' is not one of: none, hadamard"):
        QuantSpec("int8", "per_channel", rotation="givens")
    assert "rotation" not in QuantSpec(**W4A4_INT).to_dict()
    spec = QuantSpec(**W4A4_INT, rotation="hadamard")
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    assert "rotation" in spec.describe()


def test_rotated_layer_runs_the_same_on_the_triton_backend():
    import kernel_cases  # noqa: F401  (Triton's interpreter on CPU)

    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(64, 24))
    quantize_(layer, QuantSpec("int8", "per_channel", act_format="int8", rotation="hadamard"), skip=())
    x = torch.randn(2, 5, 64)
    expected = layer(x)
    layer[0].set_backend("triton")
    assert layer[0].backend == "triton"
    assert torch.allclose(layer(x), expected, atol=1e-4)


def test_auto_rotation_rotates_only_the_layers_it_helps():
    from diffpress.compression.layer_inputs import LayerInputs
    from diffpress.compression.ptq import LayerContext, _rotation_and_smoothing

    torch.manual_seed(0)
    spec = QuantSpec(**W4A4_INT, rotation="auto")
    heavy = nn.Linear(128, 64)
    with torch.no_grad():
        heavy.weight.mul_(0.5)[torch.arange(64), torch.randint(0, 128, (64,))] *= 30
    heavy_rows = torch.randn(512, 128) * torch.where(torch.rand(512, 128) < 0.02, 20.0, 1.0)
    light = nn.Linear(128, 64)
    with torch.no_grad():
        light.weight.uniform_(-1, 1)
    light_rows = torch.rand(512, 128) * 2 - 1  # uniform: lighter tails than a rotation's near-Gaussian output
    signs, _ = _rotation_and_smoothing(LayerContext("heavy", heavy, spec, None, LayerInputs(heavy_rows, heavy_rows)))
    assert signs is not None
    signs, _ = _rotation_and_smoothing(LayerContext("light", light, spec, None, LayerInputs(light_rows, light_rows)))
    assert signs is None
    assert QuantSpec(**W4A4_INT, rotation="auto").needs_calibration
    assert "rotation=auto" in QuantSpec(**W4A4_INT, rotation="auto").describe()
