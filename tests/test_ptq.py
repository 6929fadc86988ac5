"""Calibration-driven methods: smoothing, low-rank branch, learned rounding, static activation scales."""
import pytest
import torch
from torch import nn

import diffpress
import tiny_models
from diffpress.api import compress
from diffpress.calibration import calibrate
from diffpress.compression.layer_inputs import capture_layer_inputs
from diffpress.compression.low_rank import split_low_rank
from diffpress.compression.ptq import LayerContext, _output_error, quantize_model, static_activation_scales
from diffpress.compression.quantize import dequantize, quantize_weight
from diffpress.compression.rounding import RoundingOptions, learn_rounding
from diffpress.compression.smoothing import smoothed_weight, smoothing_factors, weight_channel_absmax
from diffpress.errors import InputError
from diffpress.formats import Granularity, QuantFormat, grid_values
from diffpress.metrics import sqnr_db
from diffpress.recipe import QuantSpec, Recipe

W4A8 = dict(weight_format="int4", granularity="per_group", group_size=32, act_format="int8", scale_method="mse")




@pytest.fixture(scope="module")
def pixart_calibrated():
    model, inputs = tiny_models.build("pixart")
    calibration = calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [950, 600, 300, 40]), buckets=4, reservoir_size=1)
    return model, inputs, calibration


def test_smoothing_keeps_the_float_function():
    linear = nn.Linear(16, 8)
    x = torch.randn(5, 16)
    factors = smoothing_factors(torch.rand(16) * 10, weight_channel_absmax(linear), 0.5)
    assert torch.allclose((x / factors) @ smoothed_weight(linear, factors).T, x @ linear.weight.T, atol=1e-5)
    conv = nn.Conv2d(4, 6, 3)
    image = torch.randn(1, 4, 7, 7)
    factors = smoothing_factors(torch.rand(4) * 10, weight_channel_absmax(conv), 0.5)
    smoothed = nn.functional.conv2d(image / factors.reshape(1, -1, 1, 1), smoothed_weight(conv, factors).reshape(6, 4, 3, 3))
    assert torch.allclose(smoothed, nn.functional.conv2d(image, conv.weight), atol=1e-5)


def test_searched_smoothing_tames_an_outlier_channel():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    rows = torch.randn(512, 64)
    rows[:, 3] *= 60  # one outlier input channel, as diffusion activations have
    spec = QuantSpec("int8", "per_channel", act_format="int8", smoothing="auto")  # W8A8: activation error dominates
    from diffpress.calibration.stats import ActStats
    from diffpress.compression.ptq import _smoothing

    class Stats:  # the merged calibration statistics of this one layer
        def merged_over_buckets(self, fqn):
            return ActStats.from_input(rows, -1)

    from diffpress.compression.layer_inputs import LayerInputs
    context = LayerContext("layer", linear, spec, Stats(), LayerInputs(rows, rows))
    no_smoothing = _output_error(context, torch.ones(64))
    smoothed = _output_error(context, _smoothing(context))
    print(f"output error: {no_smoothing:.3e} without smoothing, {smoothed:.3e} with the searched alpha")
    assert smoothed < 0.5 * no_smoothing


def test_low_rank_split_is_exact_and_takes_the_outliers():
    weight = torch.randn(48, 64)
    weight[:, 7] += 40  # a rank-one outlier column
    down, up, residual = split_low_rank(weight, 4)
    assert down.shape == (4, 64) and up.shape == (48, 4)
    assert torch.allclose(up @ down + residual, weight, atol=1e-4)
    assert residual.abs().max() < 0.2 * weight.abs().max()
    assert split_low_rank(torch.randn(3, 5), 16)[0].shape == (3, 5)  # rank capped at min(N, K)


@pytest.mark.parametrize("fmt,group", [(QuantFormat.INT4, 32), (QuantFormat.FP4_E2M1, 16), (QuantFormat.UINT4, 32)])
def test_learned_rounding_beats_nearest_and_stays_on_the_grid(fmt, group):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 64, generator=generator) * 0.1
    mixing = torch.randn(64, 64, generator=generator)
    rows = torch.randn(256, 64, generator=generator) @ mixing  # correlated inputs, as real activations are
    nearest = quantize_weight(weight, fmt, Granularity.PER_GROUP, group, "mse")
    learned = learn_rounding(weight, nearest.scales, nearest, rows, rows, iterations=200)
    error = lambda packed: (rows @ dequantize(packed).T - rows @ weight.T).square().sum()
    assert error(learned) < 0.95 * error(nearest)
    from diffpress.kernels.reference import expand_scales
    scaled = dequantize(learned) / expand_scales(learned.scales, learned.granularity, group, (32, 64)) + offsets(learned)
    grid = grid_values(fmt)
    assert torch.isclose(scaled[..., None], grid).any(-1).all()
    assert torch.equal(learned.scales, nearest.scales)


def _correlated_layer(seed: int = 0, columns: int = 64):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(32, columns, generator=generator) * 0.1
    mixing = torch.randn(columns, columns, generator=generator)
    rows = torch.randn(512, columns, generator=generator) @ mixing  # correlated inputs, as real activations are
    return weight, rows


@pytest.mark.parametrize("fmt,granularity,group", [(QuantFormat.INT4, "per_group", 32), (QuantFormat.FP4_E2M1,
                                                   "per_group", 16), (QuantFormat.INT8, "per_channel", None),
                                                  (QuantFormat.FP8_E4M3, "per_channel", None),
                                                  (QuantFormat.UINT4, "per_group", 32)])
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_beats_nearest_and_stays_on_the_grid(fmt, granularity, group, act_order):
    from diffpress.compression.gptq import gptq_rounding, output_error
    from diffpress.kernels.reference import expand_scales

    weight, rows = _correlated_layer()
    nearest = quantize_weight(weight, fmt, granularity, group, "mse")
    gptq = gptq_rounding(weight, nearest.scales, nearest, rows, act_order=act_order, block_size=16)
    assert output_error(weight, dequantize(gptq), rows) < 0.7 * output_error(weight, dequantize(nearest), rows)
    scaled = dequantize(gptq) / expand_scales(gptq.scales, gptq.granularity, group, (32, 64)) + offsets(gptq)
    assert torch.isclose(scaled[..., None], grid_values(fmt)).any(-1).all()
    assert torch.equal(gptq.scales, nearest.scales) and gptq.layout == nearest.layout
    assert gptq.zero_points is nearest.zero_points


def offsets(packed):
    from diffpress.kernels.reference import zero_point_offsets

    return zero_point_offsets(packed)


def test_gptq_blocks_do_not_change_the_result_and_dead_inputs_get_zero_weights():
    from diffpress.compression.gptq import gptq_rounding

    weight, rows = _correlated_layer(1)
    rows[:, 5] = 0  # an input channel that is always zero
    nearest = quantize_weight(weight, QuantFormat.INT4, "per_group", 32, "absmax")
    one = dequantize(gptq_rounding(weight, nearest.scales, nearest, rows, block_size=64))
    assert torch.allclose(one, dequantize(gptq_rounding(weight, nearest.scales, nearest, rows, block_size=7)))
    assert torch.equal(one[:, 5], torch.zeros(32))


def test_gptq_on_wide_layers_works_in_float32_with_the_float64_quality(monkeypatch):
    from diffpress.compression import gptq

    weight, rows = _correlated_layer(2)
    nearest = quantize_weight(weight, QuantFormat.INT4, "per_group", 32, "mse")
    in_float64 = dequantize(gptq.gptq_rounding(weight, nearest.scales, nearest, rows))
    monkeypatch.setattr(gptq, "FLOAT64_COLUMNS", 16)  # this 64-column layer now counts as wide
    assert gptq.inverse_hessian_factor(rows, 0.01)[0].dtype == torch.float32
    in_float32 = dequantize(gptq.gptq_rounding(weight, nearest.scales, nearest, rows))
    error64, error32 = (gptq.output_error(weight, q, rows) for q in (in_float64, in_float32))
    assert error32 == pytest.approx(error64, rel=0.05)
    assert (in_float32 != in_float64).float().mean() < 0.02  # a few codes at rounding ties may differ


def test_static_scales_follow_the_bucket(pixart_calibrated):
    model, inputs, calibration = pixart_calibrated
    fqn = "transformer_blocks.0.ff.net.2"
    spec = QuantSpec(**W4A8, act_mode="static")
    scales = static_activation_scales(LayerContext(fqn, model.get_submodule(fqn), spec, calibration, None), None)
    expected = [calibration.stats[(fqn, b)].absmax / 127 for b in range(4)]
    assert scales.tolist() == pytest.approx(expected, rel=1e-6)
    quantized, _ = tiny_models.build("pixart")
    quantize_model(quantized, Recipe(spec), calibration)
    layer = quantized.get_submodule(fqn)
    seen = []
    layer.register_forward_pre_hook(lambda m, a: seen.append(m.timestep_tracker.bucket))
    tiny_models.timestep_loop(inputs, [950, 40])(quantized)
    assert seen == [3, 0]
    with pytest.raises(diffpress.DiffpressError, match="call it through its denoiser"):
        layer(torch.randn(2, 128))


@pytest.mark.parametrize("methods", [dict(smoothing="auto"), dict(low_rank=4), dict(rounding="learned"),
                                     dict(rounding="gptq", gptq_damping=0.05, gptq_act_order=False),
                                     dict(act_mode="static", smoothing=0.5, low_rank=2)],
                         ids=["smoothing", "low_rank", "learned_rounding", "gptq", "static+smooth+lowrank"])
def test_methods_save_and_load_bit_exact(pixart_calibrated, tmp_path, methods):
    _, inputs, calibration = pixart_calibrated
    model, _ = tiny_models.build("pixart")
    reference = tiny_models.run(model, {**inputs, "timestep": torch.tensor([300, 300])})
    report = quantize_model(model, Recipe(QuantSpec(**W4A8, **methods)), calibration,
                            rounding=RoundingOptions(iterations=20))
    run_inputs = {**inputs, "timestep": torch.tensor([300, 300])}
    expected = tiny_models.run(model, run_inputs)
    assert sqnr_db(reference, expected) > 10 and report.quantized
    diffpress.save(model, tmp_path / "out")
    loaded = diffpress.load(tmp_path / "out")
    assert torch.equal(tiny_models.run(loaded, run_inputs), expected)


def test_low_rank_improves_the_trained_denoiser():
    """Trained weights have outlier directions (random ones do not): the branch must pay off there, on average
    over calls across the trajectory (it helps most at low timesteps and costs a little at the highest)."""
    from diffpress.checkpoint import load_pipeline

    pipe = load_pipeline("builtin:digits")
    calibration = calibrate(pipe, list(range(10)), steps=5, num_samples=4, batch_size=4, buckets=2,
                            reservoir_size=2, progress=False)
    calls = [entry.call_kwargs() for entry in calibration.entries()]
    with torch.no_grad():
        references = [pipe.unet(**call).sample for call in calls]
    results = {}
    for rank in (0, 8):
        unet = load_pipeline("builtin:digits").unet
        quantize_model(unet, Recipe(QuantSpec(**W4A8, low_rank=rank)), calibration)
        with torch.no_grad():
            results[rank] = sum(sqnr_db(ref, unet(**call).sample) for ref, call in zip(references, calls)) / len(calls)
    # measured over 4 calls (t = 999, 799, 399, 199): 33.25 -> 34.28 dB
    assert results[8] > results[0] + 0.25


def test_captured_inputs_are_the_layer_inputs(pixart_calibrated):
    model, _, calibration = pixart_calibrated
    inputs = capture_layer_inputs(model, calibration, {"transformer_blocks.0.attn1.to_q", "pos_embed.proj"})
    assert inputs["transformer_blocks.0.attn1.to_q"].rows.shape[1] == 32
    assert inputs["pos_embed.proj"].rows.shape[1] == 4 * 2 * 2  # im2col rows of the 2x2 patch conv
    assert inputs["pos_embed.proj"].channels.shape[1] == 4


def test_methods_needing_data_without_calibration_are_a_clear_error(tmp_path):
    model, _ = tiny_models.build("pixart")
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "r.yaml").write_text("default: {weight_format: int4, granularity: per_group, group_size: 32, "
                                     "act_format: int8, smoothing: auto}")
    with pytest.raises(InputError, match="needs calibration data.*--calibration FILE"):
        compress(tmp_path / "m", tmp_path / "r.yaml", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_spec_validation_of_methods():
    with pytest.raises(ValueError, match="smoothing must be"):
        QuantSpec(**W4A8, smoothing=1.5)
    with pytest.raises(ValueError, match="needs act_format"):
        QuantSpec("int4", "per_group", 32, smoothing=0.5)
    with pytest.raises(ValueError, match="rounding 'stochastic' is not one of: nearest, learned, block, gptq"):
        QuantSpec(**W4A8, rounding="stochastic")
    with pytest.raises(ValueError, match=r"gptq_damping must be a number in \(0, 1\], got 0"):
        QuantSpec(**W4A8, rounding="gptq", gptq_damping=0)
    with pytest.raises(ValueError, match="gptq_act_order must be true or false"):
        QuantSpec(**W4A8, rounding="gptq", gptq_act_order="yes")
    assert "gptq_damping" not in QuantSpec(**W4A8).to_dict()
    assert QuantSpec(**W4A8, rounding="gptq").to_dict()["gptq_act_order"] is True


W4A4_INT = dict(weight_format="int4", granularity="per_group", group_size=64, act_format="int4", act_group_size=64)


def test_four_bit_activations_get_one_scale_per_group_of_a_token():
    from diffpress.kernels.reference import fake_quantize_per_token

    x = torch.randn(5, 128)
    x[:, 3] *= 50  # one outlier channel: grouping confines its damage to its own group
    grouped = fake_quantize_per_token(x, QuantFormat.INT4, 64)
    per_token = fake_quantize_per_token(x, QuantFormat.INT4)
    assert (grouped - x)[:, 64:].abs().max() < 0.2 * (per_token - x)[:, 64:].abs().max()
    codes = grouped[:, 64:] / (x[:, 64:].abs().amax(-1, keepdim=True) / 7)
    assert torch.allclose(codes, codes.round(), atol=1e-4)  # on the INT4 grid of its own group
    odd = torch.randn(3, 70)  # a partial last group
    assert fake_quantize_per_token(odd, QuantFormat.FP4_E2M1, 16).shape == odd.shape


def test_w4a4_methods_beat_round_to_nearest_and_save_bit_exact(pixart_calibrated, tmp_path):
    _, inputs, calibration = pixart_calibrated
    float_model, _ = tiny_models.build("pixart")
    reference = tiny_models.run(float_model, inputs)
    rtn, _ = tiny_models.build("pixart")
    quantize_model(rtn, Recipe(QuantSpec(**W4A4_INT)), calibration)
    full, _ = tiny_models.build("pixart")
    quantize_model(full, Recipe(QuantSpec(**W4A4_INT, scale_method="mse", smoothing="auto", low_rank=8,
                                          rounding="gptq")), calibration)
    assert sqnr_db(reference, tiny_models.run(full, inputs)) > sqnr_db(reference, tiny_models.run(rtn, inputs)) + 3
    diffpress.save(full, tmp_path / "w4a4")
    loaded = diffpress.load(tmp_path / "w4a4")
    assert torch.equal(tiny_models.run(loaded, inputs), tiny_models.run(full, inputs))
    assert loaded.transformer_blocks[0].attn1.to_q.spec.act_group_size == 64


def test_four_bit_activation_specs_are_checked():
    with pytest.raises(ValueError, match=r"int4 activations need act_group_size in \[32, 64, 128\], got None"):
        QuantSpec("int4", "per_group", 64, act_format="int4")
    with pytest.raises(ValueError, match="int8 activations have one scale per token"):
        QuantSpec("int4", "per_group", 64, act_format="int8", act_group_size=64)
    with pytest.raises(ValueError, match="act_mode static needs 8-bit activations"):
        QuantSpec(**W4A4_INT, act_mode="static")
    with pytest.raises(ValueError, match="needs act_format"):
        QuantSpec("int4", "per_group", 64, act_group_size=64)
    assert "act_group_size" not in QuantSpec(**W4A8).to_dict()
    assert QuantSpec.from_dict(QuantSpec(**W4A4_INT).to_dict()) == QuantSpec(**W4A4_INT)


def test_rounding_batches_and_early_stopping_still_beat_nearest(monkeypatch):
    from diffpress.compression import rounding as rounding_module
    from diffpress.compression.rounding import RoundingOptions
    from diffpress.kernels.reference import dequantize_weight

    torch.manual_seed(0)
    weight = torch.randn(24, 64)
    rows = torch.randn(512, 8) @ torch.randn(8, 64) + 0.1 * torch.randn(512, 64)  # correlated channels
    nearest = quantize_weight(weight, "int4", "per_group", 32, "mse")
    loss = lambda packed: float((rows @ dequantize_weight(packed).T - rows @ weight.T).square().mean())
    steps = []
    original = rounding_module.beta_schedule
    monkeypatch.setattr(rounding_module, "beta_schedule", lambda i, n: steps.append(i) or original(i, n))
    full = learn_rounding(weight, nearest.scales, nearest, rows, rows, options=RoundingOptions(iterations=400))
    assert len(steps) == 400
    steps.clear()
    kept = learn_rounding(weight, nearest.scales, nearest, rows, rows,
                          options=RoundingOptions(iterations=400, early_stop=True))
    assert len(steps) == 400  # codes still flip until the annealing ends here: no early stop
    assert loss(kept) <= loss(full)  # the best codes seen are kept
    steps.clear()
    stopped = learn_rounding(weight, nearest.scales, nearest, rows, rows,  # any change counts as settled
                             options=RoundingOptions(iterations=400, early_stop=True, tolerance=1.0, patience=2))
    assert len(steps) == 120  # warm-up to step 80, checks every 20 steps: settled at 100 and 120
    steps.clear()
    steps.clear()
    batched = learn_rounding(weight, nearest.scales, nearest, rows, rows,
                             options=RoundingOptions(iterations=400, batch_size=64))
    again = learn_rounding(weight, nearest.scales, nearest, rows, rows,
                           options=RoundingOptions(iterations=400, batch_size=64))
    assert torch.equal(batched.qdata, again.qdata)  # the batches come from a seeded generator
    for packed in (full, kept, batched):
        assert loss(packed) < 0.7 * loss(nearest)
    assert loss(stopped) < loss(nearest)


def test_rounding_options_are_checked():
    from diffpress.compression.rounding import RoundingOptions

    with pytest.raises(InputError, match="rounding iterations must be an integer >= 1"):
        RoundingOptions(iterations=0)
    with pytest.raises(InputError, match=r"rounding tolerance must be in \[0, 1\]"):
        RoundingOptions(tolerance=1.5)
    with pytest.raises(InputError, match="rounding batch_size must be an integer >= 1"):
        RoundingOptions(batch_size=0)
