"""Timestep-aware calibration on tiny SD, DiT and FLUX pipelines, a bare denoiser and the built-in model."""
import pytest
import torch
from torch import nn

import tiny_models
import tiny_pipelines
import diffpress
from diffpress.calibration import (ActStats, CalibrationError, CalibrationSet, Strategy, TimestepBuckets,
                                   calibrate, collect)
from diffpress.calibration.strategies import eda_select


def _hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in module.modules())


def test_sd_timesteps_with_cfg_equal_the_scheduler(tmp_path):
    pipe = tiny_pipelines.tiny_sd_pipeline(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    with collect(pipe, buckets=4) as calib:
        pipe(prompt=["a cat"], num_inference_steps=5, guidance_scale=3.0, output_type="latent", height=8, width=8)
    assert calib.result.timesteps == [float(t) for t in pipe.scheduler.timesteps]
    assert calib.result.buckets.timestep_range == 1000
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in calib.result.layers
    assert _hook_count(pipe.unet) == 0


def test_dit_timesteps_equal_the_scheduler():
    pipe = tiny_pipelines.tiny_dit_pipeline()
    pipe.set_progress_bar_config(disable=True)
    with collect(pipe, buckets=4) as calib:
        pipe(class_labels=[1, 2], num_inference_steps=4, output_type="np")
    assert calib.result.timesteps == [float(t) for t in pipe.scheduler.timesteps]


def test_flux_scaled_timesteps_and_true_cfg_double_calls():
    pipe = tiny_pipelines.tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    negative = tiny_pipelines.flux_prompt_embeds(seed=1)
    with collect(pipe, buckets=4) as calib:
        pipe(**tiny_pipelines.flux_prompt_embeds(), negative_prompt_embeds=negative["prompt_embeds"],
             negative_pooled_prompt_embeds=negative["pooled_prompt_embeds"], true_cfg_scale=2.0,
             num_inference_steps=3, height=32, width=32, output_type="latent")
    expected = [float(t) for t in (pipe.scheduler.timesteps / 1000) for _ in range(2)]
    assert calib.result.timesteps == pytest.approx(expected, abs=1e-7)
    assert calib.result.buckets.timestep_range == 1.0  # FLUX sees t / 1000: buckets span [0, 1]
    assert {calib.result.buckets.bucket_of(t) for t in expected} == {1, 2, 3}


def _capture_inputs(model, layer_name):
    captured = []
    handle = model.get_submodule(layer_name).register_forward_pre_hook(lambda m, a: captured.append(a[0].clone()))
    return captured, handle




def test_bucket_statistics_equal_direct_computation():
    model, inputs = tiny_models.build("unet2d_condition")
    layer = "down_blocks.0.resnets.0.conv1"
    captured, handle = _capture_inputs(model, layer)
    calibration = calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [900, 880, 100]), buckets=4)
    handle.remove()
    high = torch.cat([x.movedim(1, -1).reshape(-1, x.shape[1]) for x in captured[:2]])  # the two bucket-3 calls
    stats = calibration.stats[(layer, 3)]
    assert torch.equal(stats.channel_absmax, high.abs().amax(0))
    assert torch.allclose(stats.channel_sumsq, high.double().square().sum(0), rtol=1e-6)  # float32 squares
    assert stats.tensor_min == high.min() and stats.tensor_max == high.max()
    assert int(stats.tokens) == high.shape[0] and int(stats.abs_log2_hist.sum()) == high.numel()
    assert set(calibration.layer_stats(layer)) == {0, 3}
    assert stats.abs_quantile(1.0) == pytest.approx(float(high.abs().max()), rel=0.2)


def test_linear_statistics_use_the_last_dimension():
    x = torch.randn(3, 5, 7)
    stats = ActStats.from_input(x, channel_dim=-1)
    assert stats.channel_absmax.shape == (7,) and int(stats.tokens) == 15


def test_merged_partial_runs_equal_one_full_run():
    model, inputs = tiny_models.build("pixart")
    timesteps = [950, 700, 420, 130, 20]
    full = calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, timesteps), buckets=4, reservoir_size=0)
    first = calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, timesteps[:2]), buckets=4, reservoir_size=0)
    second = calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, timesteps[2:4]), buckets=4, reservoir_size=0)
    third = calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, timesteps[4:]), buckets=4, reservoir_size=0)
    for merged in (first.merge(second).merge(third), first.merge(second.merge(third))):
        assert merged.timesteps == full.timesteps and set(merged.stats) == set(full.stats)
        for key, stats in full.stats.items():
            other = merged.stats[key]
            assert torch.equal(stats.channel_absmax, other.channel_absmax)
            assert torch.equal(stats.abs_log2_hist, other.abs_log2_hist) and torch.equal(stats.tokens, other.tokens)
            assert torch.allclose(stats.channel_sumsq, other.channel_sumsq, rtol=1e-12)


@pytest.fixture(scope="module")
def digits_pipe():
    from diffpress.evaluation import load_reference_pipeline

    return load_reference_pipeline("builtin:digits")[0]


@pytest.mark.parametrize("strategy", ["uniform", "ndtc", "eda"])
def test_same_seed_identical_set_and_exact_save_load(digits_pipe, tmp_path, strategy):
    kwargs = dict(steps=6, num_samples=6, batch_size=3, seed=3, buckets=3, reservoir_size=2,
                  strategy=strategy, progress=False)
    first = calibrate(digits_pipe, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], **kwargs)
    second = calibrate(digits_pipe, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], **kwargs)
    assert first.equal(second)
    assert sum(len(v) for v in first.reservoir.values()) > 0
    first.save(tmp_path / "calib.safetensors")
    loaded = CalibrationSet.load(tmp_path / "calib.safetensors")
    assert loaded.equal(first)
    entry = next(iter(loaded.reservoir.values()))[0]
    assert digits_pipe.unet(**entry.call_kwargs()).sample.shape == entry.tensors["sample"].shape  # replayable
    different = calibrate(digits_pipe, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], **{**kwargs, "seed": 4})
    assert not different.equal(first)


def test_reservoir_is_bounded_per_bucket_and_ndtc_prefers_its_mean():
    model, inputs = tiny_models.build("pixart")
    timesteps = list(range(999, 0, -37))
    uniform = calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, timesteps), buckets=4, reservoir_size=2)
    assert all(len(entries) == 2 for entries in uniform.reservoir.values()) and len(uniform.reservoir) == 4
    ndtc = calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, timesteps * 4), buckets=4, reservoir_size=50,
                     strategy=Strategy("ndtc", ndtc_mean=0.2, ndtc_std=0.1))
    counts = {bucket: len(entries) for bucket, entries in ndtc.reservoir.items()}
    assert counts.get(0, 0) > counts.get(3, 0)


def test_eda_picks_dense_and_diverse_points():
    cluster = torch.randn(20, 4, generator=torch.Generator().manual_seed(0)) * 0.01 + torch.tensor([1.0, 0, 0, 0])
    outlier = torch.tensor([[0.0, 0, 0, 1.0]])
    other = torch.randn(10, 4, generator=torch.Generator().manual_seed(1)) * 0.01 + torch.tensor([0, 1.0, 0, 0])
    chosen = eda_select(torch.cat([cluster, outlier, other]), 2, neighbors=5, diversity_weight=0.5)
    assert any(i < 20 for i in chosen) and any(i > 20 for i in chosen)  # one from each dense cluster


def test_spill_to_disk(tmp_path):
    model, inputs = tiny_models.build("pixart")
    with collect(model, buckets=2, reservoir_size=1, spill_dir=tmp_path / "spill") as calib:
        tiny_models.timestep_loop(inputs, [900, 800, 100])(model)
    files = list((tmp_path / "spill").glob("*.safetensors"))
    assert len(files) == 2  # one kept call per bucket; evicted calls are deleted
    assert all(not e.tensors and e.path for es in calib.result.reservoir.values() for e in es)
    calib.result.save(tmp_path / "c.safetensors")
    assert CalibrationSet.load(tmp_path / "c.safetensors").equal(calib.result)


def test_no_hook_left_after_an_exception():
    model, inputs = tiny_models.build("unet2d_condition")
    before = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with collect(model):
            tiny_models.timestep_loop(inputs, [500])(model)
            raise RuntimeError("boom")
    assert _hook_count(model) == before


def test_non_finite_input_names_layer_and_timestep():
    model, inputs = tiny_models.build("pixart")
    with torch.no_grad():
        model.transformer_blocks[1].ff.net[0].proj.weight[0, 0] = float("nan")
    with pytest.raises(CalibrationError, match=r"transformer_blocks\.1\.ff\.net\.2.*timestep 500"):
        calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [500]))
    assert _hook_count(model) == 0


def test_clear_errors_for_empty_prompts_missing_denoiser_and_mixed_timesteps(digits_pipe):
    with pytest.raises(CalibrationError, match="prompts_or_labels is empty"):
        calibrate(digits_pipe, [], progress=False)
    with pytest.raises(CalibrationError, match="has no denoiser"):
        calibrate(object(), ["a cat"])
    model, inputs = tiny_models.build("pixart")
    with pytest.raises(CalibrationError, match="one timestep per denoiser call"):
        with collect(model):
            model(**{**inputs, "timestep": torch.tensor([1, 999])})


def test_buckets():
    buckets = TimestepBuckets(4, 1000)
    assert [buckets.bucket_of(t) for t in (0, 249, 250, 999, 1000, 5000)] == [0, 0, 1, 3, 3, 3]
    with pytest.raises(ValueError, match="buckets must be an integer >= 1"):
        TimestepBuckets(0)
    with pytest.raises(ValueError, match="strategy 'best' is not one of"):
        Strategy("best")


def test_top_level_api_is_exposed():
    from diffpress import api

    assert diffpress.calibrate is api.calibrate and diffpress.calibration.collect is collect


def test_a_non_finite_layer_input_stops_calibration_naming_the_layer():
    model, inputs = tiny_models.build("pixart")
    first = model.transformer_blocks[0].attn1.to_q
    with torch.no_grad():
        first.weight[0, 0] = float("nan")  # NaN reaches the inputs of the layers after it
    with pytest.raises(CalibrationError, match=r"non-finite values \(NaN/Inf\) in the input of layer"):
        calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [900]), buckets=2)
