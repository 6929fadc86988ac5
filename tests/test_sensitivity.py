"""Per-layer sensitivity (compression/sensitivity/): ranking, buckets, image metric, restore, determinism."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from diffpress.calibration import calibrate
from diffpress.compression.sensitivity.image_metric import image_metric_layers
from diffpress.compression.sensitivity.measure import SensitivityOptions, measure_sensitivity
from diffpress.compression.sensitivity.output_metric import per_bucket_sqnr
from diffpress.compression.sensitivity.report import SensitivityReport
from diffpress.presets import DEFAULT_SENSITIVITY_CANDIDATES, candidate
from diffpress.compression.swap import DEFAULT_SKIP
from diffpress.errors import DiffpressError, InputError
import tiny_models


class ToyDenoiser(nn.Module):
    """Residual stack; `loud` writes into the output with gain 1, the others with gain 0.02."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet_a, self.quiet_b, self.loud = (nn.Linear(64, 64) for _ in range(3))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        h = sample + 0.02 * self.quiet_a(sample)
        h = h + 0.02 * self.quiet_b(h * (1 + float(timestep.flatten()[0]) / 250))
        return h + self.loud(h)


def toy_calibration(model):
    inputs = {"sample": torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(1)),
              "timestep": torch.tensor([0, 0])}
    return calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [100, 400, 700, 900]), buckets=4,
                     reservoir_size=1, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on shared cores run several times faster on one thread than oversubscribed on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = ToyDenoiser().eval()
    return model, toy_calibration(model)


FAST = ("bf16", "w8a8-int8", "w4a8-int")


def test_candidate_table_bits_and_bytes():
    assert [candidate(n).weight_bits for n in DEFAULT_SENSITIVITY_CANDIDATES] == [16, 8, 8, 4, 4, 4]
    assert candidate("w4a16-int4").act_bits == 16 and candidate("w4a8-int").act_bits == 8
    # int4 g128 on (64, 256): 64*128 code bytes + 64*2 bf16 scales * 2 bytes
    assert candidate("w4a16-int4").packed_bytes((64, 256)) == 64 * 128 + 64 * 2 * 2
    assert candidate("w8a8-int8").packed_bytes((64, 256)) == 64 * 256 + 64 * 4
    assert candidate("bf16").packed_bytes((64, 256)) == 2 * 64 * 256
    w4a4 = candidate("w4a4-int")  # its rank-8 high-precision branch is stored too: 8 x (64 + 256) x 2 bytes
    without_branch = dataclasses.replace(w4a4, full=dataclasses.replace(w4a4.full, low_rank=0))
    assert w4a4.full.low_rank == 8
    assert w4a4.packed_bytes((64, 256)) == without_branch.packed_bytes((64, 256)) + 8 * (64 + 256) * 2
    with pytest.raises(InputError, match="allowed: bf16"):
        candidate("int3")


def test_loud_layer_ranked_most_sensitive_and_model_restored(toy):
    model, calibration = toy
    x = {"sample": torch.randn(2, 4, 64), "timestep": torch.tensor([300, 300])}
    before = model(**x)
    report = measure_sensitivity(model, calibration, SensitivityOptions(FAST, image_layers=0, progress=False))
    assert torch.equal(model(**x), before)
    assert all(isinstance(m, nn.Linear) for m in model.children())
    assert report.ranking("w4a8-int")[0] == "loud"
    assert report.buckets == [0, 1, 2, 3]
    for fqn in report.output_sqnr:
        per_format = [report.output_sqnr_db(fqn, n) for n in FAST]
        assert per_format == sorted(per_format, reverse=True), fqn  # bf16 > int8 > int4
        assert len(report.output_sqnr[fqn]["w4a8-int"]) == 4
    assert report.output_sqnr_db("loud", "w4a8-int") < report.output_sqnr_db("quiet_a", "w4a8-int") - 20


def test_deterministic_and_json_round_trip(toy, tmp_path):
    model, calibration = toy
    options = SensitivityOptions(FAST, image_layers=0, progress=False)
    first = measure_sensitivity(model, calibration, options).to_dict()
    second = measure_sensitivity(model, calibration, options).to_dict()
    for key in ("quantize_seconds", "output_seconds", "image_seconds"):
        first["info"].pop(key), second["info"].pop(key)
    assert first == second
    report = SensitivityReport.from_dict(first)
    path = report.save(tmp_path / "s.json")
    assert SensitivityReport.load(path).to_dict() == first


def test_image_metric_on_selected_layers(toy):
    model, calibration = toy
    noise = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(5))

    def probe(denoiser):
        x = noise.clone()
        for t in (900, 500, 100):
            x = x - 0.1 * denoiser(x, torch.tensor([t]))
        return x

    report = measure_sensitivity(model, calibration, SensitivityOptions(FAST, image_layers=2, progress=False), probe)
    assert len(report.image) == 2 and "loud" in report.image
    loud = report.image["loud"]
    assert loud["bf16"].psnr_db > loud["w8a8-int8"].psnr_db > loud["w4a8-int"].psnr_db
    assert image_metric_layers(report, 2) == list(report.image)
    # the allocator's cost: the image error where measured, the output error in image units elsewhere
    assert report.cost("loud", "w4a8-int") == loud["w4a8-int"].typical_error > 0
    unmeasured = next(f for f in report.output_sqnr if f not in report.image)
    factor = report.output_to_image
    assert factor != 1.0
    assert report.cost(unmeasured, "w4a8-int") == pytest.approx(factor * report.output_error(unmeasured, "w4a8-int"))

    everything = measure_sensitivity(model, calibration, SensitivityOptions(FAST, progress=False), probe)
    assert set(everything.image) == set(everything.output_sqnr)  # default: every layer gets the image metric
    assert everything.ranking("w4a8-int")[0] == "loud"


def test_full_methods_measure_the_modules_a_mixed_recipe_contains(toy):
    from diffpress.compression.ptq import quantize_model
    from diffpress.presets import preset
    from diffpress.recipe import Recipe, Rule

    model, calibration = toy
    names = ("w4a8-int", "w8a8-int8-learned")
    options = SensitivityOptions(names, image_layers=0, progress=False, methods="full")
    variants = options.variants(model, calibration)
    full = measure_sensitivity(model, calibration, options, variants=variants)
    rtn = measure_sensitivity(model, calibration, SensitivityOptions(names, image_layers=0, progress=False))
    assert full.info["methods"] == "full"
    # learned rounding and clipping search recover part of the loud layer's 4-bit error
    assert full.output_sqnr_db("loud", "w4a8-int") > rtn.output_sqnr_db("loud", "w4a8-int") + 0.5
    assert all(isinstance(m, nn.Linear) for m in model.children())  # float modules put back

    choice = {"quiet_a": "w8a8-int8-learned", "quiet_b": "w4a8-int", "loud": "w8a8-int8-learned"}
    ready = variants.full_modules(choice)
    recipe = Recipe(default=None, rules=tuple(Rule(f, preset(n)) for f, n in choice.items()))
    fresh = copy.deepcopy(model)
    quantize_model(fresh, recipe, calibration)  # quantized from scratch: the same modules, bit for bit
    for fqn in choice:
        assert torch.equal(fresh.get_submodule(fqn).qdata, ready[fqn].qdata), fqn
        assert torch.equal(fresh.get_submodule(fqn).scales, ready[fqn].scales), fqn
    assembled = copy.deepcopy(model)
    report = quantize_model(assembled, recipe, calibration, ready=ready)
    assert report.quantized == list(choice) and assembled.get_submodule("loud") is ready["loud"]
    swapped_plans = Recipe(default=None, rules=tuple(Rule(f, preset("w4a8-int")) for f in choice))
    with pytest.raises(ValueError, match="not the recipe's plan"):
        quantize_model(copy.deepcopy(model), swapped_plans, calibration, ready=ready)


def test_per_bucket_sqnr_sums_power_and_flags_non_finite():
    ref = [torch.ones(4), torch.ones(4), torch.ones(4)]
    out = [torch.ones(4) * 1.1, torch.ones(4) * 1.1, torch.full((4,), math.nan)]
    values = per_bucket_sqnr(ref, out, [0, 0, 1])
    assert values[0] == pytest.approx(20.0)  # noise 0.01 of signal power
    assert values[1] == -math.inf


def test_nan_in_float_model_is_rejected(toy):
    model, calibration = toy
    broken = ToyDenoiser().eval()
    with torch.no_grad():
        broken.loud.bias.fill_(math.nan)
    with pytest.raises(DiffpressError, match="not finite"):
        measure_sensitivity(broken, calibration, SensitivityOptions(("w8a8-int8",), image_layers=0, progress=False))


def test_bad_options_name_the_field():
    with pytest.raises(InputError, match="calls_per_bucket"):
        SensitivityOptions(calls_per_bucket=0)
    with pytest.raises(InputError, match="name the preset"):
        SensitivityOptions(candidates=("w4a8-int-rtn",))
    with pytest.raises(InputError, match="methods"):
        SensitivityOptions(methods="learned")


def test_diffusers_unet_every_layer_measured_skips_respected():
    model, inputs = tiny_models.tiny_unet2d()
    model.eval()
    calibration = calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [50, 600]), buckets=2,
                            reservoir_size=1, progress=False)
    skip = DEFAULT_SKIP + (r"^up_blocks",)
    report = measure_sensitivity(model, calibration, SensitivityOptions(("w4a16-int4",), image_layers=0, skip=skip,
                                                                        progress=False))
    names = [layer.fqn for layer in report.layers]
    assert "conv_in" not in names and "conv_out" not in names and not any("time_embedding" in n for n in names)
    assert not any(n.startswith("up_blocks") for n in names)
    assert len(names) > 8 and report.buckets == [0, 1]
    assert all(math.isfinite(report.output_sqnr_db(n, "w4a16-int4")) for n in names)
    assert set(report.activation_absmax) == set(names)


def test_the_image_cost_is_the_typical_sample_error_not_one_flipped_sample():
    from diffpress.compression.sensitivity.image_metric import image_score
    from diffpress.compression.sensitivity.report import ImageScore

    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(16, 3, 12, 12, generator=generator)
    slight = reference + 0.03 * torch.randn(reference.shape, generator=generator)
    flipped = reference + 1e-3 * torch.randn(reference.shape, generator=generator)
    flipped[0] = torch.randn(reference[0].shape, generator=generator)  # one sample went to another mode
    one, every = image_score(reference, flipped), image_score(reference, slight)
    assert one.relative_error > every.relative_error  # pooled, the flipped sample dominates
    assert one.typical_error < every.typical_error  # typically, every sample of `slight` moved more
    per_sample = [float((reference[i] - slight[i]).square().sum() / reference[i].square().sum()) for i in range(16)]
    assert every.typical_error == pytest.approx(math.exp(sum(map(math.log, per_sample)) / 16), rel=1e-6)
    assert one.cost == one.typical_error
    assert image_score(reference, reference.clone()).typical_error == pytest.approx(1e-20)
    assert image_score(reference, flipped * float("nan")).cost == math.inf
    # a report written before the typical error: its pooled error is the cost
    old = SensitivityReport.from_dict({"layers": [], "candidates": ["c"], "buckets": [0], "output_sqnr_db": {},
                                       "image": {"x": {"c": {"psnr_db": 30.0, "ssim": None, "relative_error": 0.01}}}})
    assert old.image["x"]["c"] == ImageScore(30.0, None, 0.01) and old.image["x"]["c"].cost == 0.01
