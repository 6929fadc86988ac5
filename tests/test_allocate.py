"""Mixed-precision allocation (compress/allocate.py): optimum, brute force, budgets, errors, recipes, CLI."""
from __future__ import annotations

import itertools
import json
import random

import pytest

from diffpress.compression.allocate import (Budget, LayerChoices, LayerOption, allocate, choices_from_report,
                                         minimum_budget, uniform_allocation)
from diffpress.compression.sensitivity.report import LayerInfo, SensitivityReport
from diffpress.errors import DiffpressError, InputError
from diffpress.presets import SensitivityMethods, preset
from diffpress.plan import Plan
from diffpress.recipe import Recipe


def option(name: str, cost: float, bits: float, params: int = 100, latency: float | None = None,
           act_bits: float = 8) -> LayerOption:
    return LayerOption(name, cost, bits, int(bits * params / 8), latency if latency is not None else bits, act_bits)


def two_format_layers() -> list[LayerChoices]:
    # a is very sensitive to 4 bits, b a little, c not at all; equal sizes
    costs = {"a": (1e-4, 1e-1), "b": (1e-4, 1e-2), "c": (1e-4, 1e-3)}
    return [LayerChoices(name, 100, (option("w8a8-int8", hi, 8), option("w4a8-int", lo, 4)))
            for name, (hi, lo) in costs.items()]


def test_known_optimum_keeps_the_sensitive_layer_at_8_bits():
    result = allocate(two_format_layers(), Budget(avg_bits=16 / 3))  # room for exactly one 8-bit layer
    assert result.choice == {"a": "w8a8-int8", "b": "w4a8-int", "c": "w4a8-int"}
    assert result.avg_bits == pytest.approx(16 / 3)
    assert result.objective == pytest.approx(1e-4 + 1e-2 + 1e-3)
    assert result.counts == {"w8a8-int8": 1, "w4a8-int": 2}
    two = allocate(two_format_layers(), Budget(avg_bits=20 / 3))
    assert two.choice == {"a": "w8a8-int8", "b": "w8a8-int8", "c": "w4a8-int"}


def brute_force(layers, budget: Budget) -> float:
    total = sum(layer.params for layer in layers)
    best = float("inf")
    for picks in itertools.product(*(layer.options for layer in layers)):
        bits = sum(o.bits * l.params for o, l in zip(picks, layers)) / total
        nbytes = sum(o.nbytes for o in picks)
        latency = sum(o.latency for o in picks)
        if budget.avg_bits is not None and bits > budget.avg_bits + 1e-9:
            continue
        if budget.max_bytes is not None and nbytes > budget.max_bytes:
            continue
        if budget.max_latency is not None and latency > budget.max_latency + 1e-9:
            continue
        act_bits = sum(o.act_bits * l.params for o, l in zip(picks, layers)) / total
        if budget.avg_act_bits is not None and act_bits > budget.avg_act_bits + 1e-9:
            continue
        best = min(best, sum(l.weight * o.cost for o, l in zip(picks, layers)))
    return best


def random_layers(rng: random.Random, count: int) -> list[LayerChoices]:
    layers = []
    for index in range(count):
        params = rng.choice([64, 256, 1024])
        options = tuple(option(name, rng.uniform(0.1, 1) * 2 ** -bits, bits, params, rng.uniform(0.5, 2) * bits)
                        for name, bits in (("bf16", 16), ("w8a8-int8", 8), ("w4a8-int", 4)))
        layers.append(LayerChoices(f"layer{index}", params, options, rng.uniform(0.5, 2)))
    return layers


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_random_instances(seed):
    rng = random.Random(seed)
    layers = random_layers(rng, 6)
    budgets = [Budget(avg_bits=rng.uniform(4.5, 12)),
               Budget(max_bytes=int(sum(l.params for l in layers) * rng.uniform(0.6, 1.5))),
               Budget(avg_bits=rng.uniform(6, 12), max_latency=sum(rng.uniform(5, 10) for _ in layers))]
    for budget in budgets:
        expected = brute_force(layers, budget)
        if expected == float("inf"):
            with pytest.raises(DiffpressError):
                allocate(layers, budget, gap=0)
            continue
        assert allocate(layers, budget, gap=0).objective == pytest.approx(expected, rel=1e-9), budget


@pytest.mark.parametrize("seed", range(4))
def test_an_activation_budget_matches_brute_force(seed):
    rng = random.Random(100 + seed)
    layers = []
    for index in range(6):
        params = rng.choice([64, 256, 1024])
        options = tuple(option(name, rng.uniform(0.1, 1) * 2 ** -(bits + act / 2), bits, params, act_bits=act)
                        for name, bits, act in (("w8a8-int8", 8, 8), ("w4a8-int", 4, 8), ("w4a4-int", 4, 4)))
        layers.append(LayerChoices(f"layer{index}", params, options))
    for budget in (Budget(avg_bits=rng.uniform(4, 6), avg_act_bits=rng.uniform(4.5, 7.5)),
                   Budget(avg_bits=4, avg_act_bits=rng.uniform(4.5, 7.5))):
        result = allocate(layers, budget, gap=0)
        assert result.objective == pytest.approx(brute_force(layers, budget), rel=1e-9), budget
        assert result.avg_act_bits <= budget.avg_act_bits + 1e-9 and result.avg_act_bits < 8


def test_an_activation_budget_puts_the_least_sensitive_layers_at_4_bit_activations():
    layers = [LayerChoices(name, 100, (option("w4a8-int", 1e-4, 4, act_bits=8), option("w4a4-int", cost, 4, act_bits=4)))
              for name, cost in (("a", 1e-1), ("b", 1e-2), ("c", 1e-3))]
    unconstrained = allocate(layers, Budget(avg_bits=4))
    assert set(unconstrained.choice.values()) == {"w4a8-int"} and unconstrained.avg_act_bits == 8
    one = allocate(layers, Budget(avg_bits=4, avg_act_bits=20 / 3))  # room for one layer at 4-bit activations
    assert one.choice == {"a": "w4a8-int", "b": "w4a8-int", "c": "w4a4-int"}
    assert one.avg_act_bits == pytest.approx(20 / 3) and one.to_dict()["avg_act_bits"] == pytest.approx(20 / 3)
    with pytest.raises(DiffpressError, match=r"avg_act_bits 3 is infeasible: the smallest feasible average is 4 "):
        allocate(layers, Budget(avg_bits=4, avg_act_bits=3))
    from diffpress.plan import MixedPrecision

    with pytest.raises(InputError, match=r"avg_act_bits 6 is infeasible: the smallest feasible average is 8 bits"):
        MixedPrecision(Budget(avg_bits=5, avg_act_bits=6))  # the default candidates all have 8-bit activations
    plan = MixedPrecision(Budget(avg_bits=4, avg_act_bits=6), candidates=("w4a4-int", "w4a8-int"))
    assert MixedPrecision.from_dict(plan.to_dict()) == plan and plan.to_dict()["avg_act_bits"] == 6


def test_budgets_are_respected_and_deterministic():
    layers = random_layers(random.Random(7), 40)
    first = allocate(layers, Budget(avg_bits=6.0))
    assert first.avg_bits <= 6.0 + 1e-9
    assert all(allocate(layers, Budget(avg_bits=6.0)).choice == first.choice for _ in range(2))
    by_bytes = allocate(layers, Budget(max_bytes=first.total_bytes))
    assert by_bytes.total_bytes <= first.total_bytes
    tight = allocate(layers, Budget(avg_bits=16.0, max_latency=minimum_budget(layers)[2] * 1.2))
    assert tight.latency <= minimum_budget(layers)[2] * 1.2 + 1e-9


def test_dominated_options_are_dropped():
    from diffpress.compression.allocate import without_dominated

    layer = LayerChoices("x", 10, (option("bf16", 0.1, 16), option("w8a8-int8", 0.2, 8), option("w8a8-fp8", 0.3, 8),
                                   option("w4a8-int", 0.5, 4), option("w4a16-int4", 0.5, 4)))
    assert [o.candidate for o in without_dominated(layer).options] == ["bf16", "w8a8-int8", "w4a8-int"]


def test_tie_prefers_fewer_bits():
    layers = [LayerChoices("x", 10, (option("w8a8-int8", 0.5, 8), option("w4a8-int", 0.5, 4)))]
    assert allocate(layers, Budget(avg_bits=8)).choice == {"x": "w4a8-int"}


def test_infeasible_budget_names_the_smallest_feasible_one():
    layers = two_format_layers()
    with pytest.raises(DiffpressError, match=r"avg_bits 3\.5 is infeasible: the smallest feasible average is 4 bits"):
        allocate(layers, Budget(avg_bits=3.5))
    with pytest.raises(DiffpressError, match=r"smallest feasible size is 150 bytes"):
        allocate(layers, Budget(max_bytes=149))
    with pytest.raises(DiffpressError, match=r"smallest feasible latency is 12"):
        allocate(layers, Budget(avg_bits=8, max_latency=11))


def test_budget_validation_names_fields():
    with pytest.raises(InputError, match="exactly one size budget"):
        Budget()
    with pytest.raises(InputError, match="exactly one size budget"):
        Budget(avg_bits=5, max_bytes=10)
    with pytest.raises(InputError, match="avg_bits must be a positive number"):
        Budget(avg_bits=-1)


def small_report() -> SensitivityReport:
    layers = [LayerInfo("down.conv", "Conv2d", (32, 288)), LayerInfo("mid.attn.to_q", "Linear", (64, 64)),
              LayerInfo("up.conv", "Conv2d", (32, 576))]
    sqnr = {"down.conv": {"bf16": [60, 60], "w8a8-int8": [40, 38], "w4a8-int": [10, 25]},
            "mid.attn.to_q": {"bf16": [60, 60], "w8a8-int8": [45, 45], "w4a8-int": [30, 31]},
            "up.conv": {"bf16": [60, 60], "w8a8-int8": [44, 44], "w4a8-int": [29, float("-inf")]}}
    return SensitivityReport(layers, ["bf16", "w8a8-int8", "w4a8-int"], [0, 1], sqnr)


def test_report_choices_drop_broken_formats_and_use_packed_bytes():
    choices = {c.fqn: c for c in choices_from_report(small_report())}
    assert [o.candidate for o in choices["up.conv"].options] == ["bf16", "w8a8-int8"]
    to_q = {o.candidate: o for o in choices["mid.attn.to_q"].options}
    assert to_q["w4a8-int"].nbytes == 64 * 32 + 64 * 1 * 2  # nibbles + one bf16 scale per row (K=64 < 128)
    assert to_q["w8a8-int8"].nbytes == 64 * 64 + 64 * 4
    with pytest.raises(InputError, match="was not measured"):
        choices_from_report(small_report(), ["w4a16-int4"])


def test_allocation_recipe_round_trips_and_names_exact_layers():
    report = small_report()
    allocation = allocate(choices_from_report(report), Budget(avg_bits=7.5))
    assert allocation.choice["down.conv"] != "w4a8-int"  # 10 dB at bucket 0: the most sensitive
    recipe = allocation.to_recipe()
    again = Plan.from_yaml(Plan(recipe).to_yaml()).recipe
    assert again.to_dict() == recipe.to_dict()
    for fqn, name in allocation.choice.items():
        assert again.plan_for(fqn) == (None if name == "bf16" else preset(name))
    assert again.plan_for("some.other.layer") is None
    fast = allocation.to_recipe(SensitivityMethods.RTN)
    assert all(rule.plan is None or rule.plan == preset(allocation.choice[rule.match] + "-rtn") for rule in fast.rules)
    assert uniform_allocation(choices_from_report(report), "w8a8-int8").avg_bits == 8


@pytest.fixture
def one_thread():
    """The digits UNet on shared cores runs several times faster on one thread than oversubscribed on two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_cli_compress_mixed_end_to_end(tmp_path, capsys, one_thread):
    from diffpress.cli.main import main

    out = tmp_path / "mixed"
    code = main(["compress", "builtin:digits", "--preset", "mixed", "--avg-bits", "5", "--methods", "rtn",
                 "--calib-samples", "2", "--calib-steps", "1", "--calls-per-bucket", "1", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "allocation: " in printed and "w8a8-int8" in printed
    assert "allocation chosen by measurement on 16 held-out samples" in printed
    allocation = json.loads((out / "allocation.json").read_text())
    chosen, typical = allocation["selection"]["chosen"], allocation["selection"]["typical_error"]
    assert chosen in allocation["selection"]["psnr_db"] and typical[chosen] == min(typical.values())
    assert "typical sample" in printed  # the per-sample SNR the choice was made by, beside each PSNR
    assert allocation["avg_bits"] <= 5 + 1e-9 and len(allocation["choice"]) == 72
    recipe = Plan.load(out / "recipe.yaml").recipe
    assert {rule.match for rule in recipe.rules} == set(allocation["choice"])
    assert main(["inspect", "builtin:digits", "--recipe", str(out / "recipe.yaml")]) == 0
    assert main(["compress", "builtin:digits", "--preset", "mixed", "--out", str(tmp_path / "x")]) == 2
    assert "needs a budget" in capsys.readouterr().err


def test_cli_compress_mixed_with_an_activation_budget_saves_4_bit_activations(tmp_path, capsys, one_thread):
    from diffpress.cli.main import main

    out = tmp_path / "w4a6"
    code = main(["compress", "builtin:digits", "--preset", "mixed", "--candidates", "w4a4-int", "w4a8-int",
                 "--avg-bits", "4", "--avg-act-bits", "6", "--methods", "rtn", "--image-layers", "0",
                 "--validation-samples", "0", "--calib-samples", "2", "--calib-steps", "1", "--calls-per-bucket", "1",
                 "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "average activation bits" in capsys.readouterr().out
    allocation = json.loads((out / "allocation.json").read_text())
    assert 4 <= allocation["avg_act_bits"] <= 6 + 1e-9 and allocation["budget"]["avg_act_bits"] == 6
    assert set(allocation["choice"].values()) == {"w4a4-int", "w4a8-int"}
    recipe = Plan.load(out / "recipe.yaml").recipe
    act_formats = {rule.plan.act_format for rule in recipe.rules}
    assert {"int4", "int8"} <= {str(getattr(f, "value", f)) for f in act_formats}


def test_latency_table_from_a_kernel_benchmark_result(tmp_path):
    from diffpress.compression.allocate import load_latency_table

    def rows(fmt, shape, ms_by_mode, bf16_ms):
        return [{"shape": list(shape), "format": fmt, "act_quant": mode, "ms": ms, "baseline": base,
                 "baseline_ms": base_ms} for mode, ms in ms_by_mode.items()
                for base, base_ms in (("bf16", bf16_ms), ("int_mm_scaled", 9.0))]

    result = {"device": "test", "rows": rows("w8a8-int8", (64, 256, 256), {"separate": 2.0, "prologue": 1.5}, 3.0)
              + rows("w8a8-int8", (64, 512, 256), {"separate": 3.0, "prologue": 3.5}, 5.0)
              + rows("w4a8-int", (64, 256, 256), {"separate": 1.0}, 3.0)}
    path = tmp_path / "kernels-test.json"
    path.write_text(json.dumps(result))
    table = load_latency_table(path, ["bf16", "w8a8-int8-learned", "w4a8-int"])
    elements = 256 * 256 + 512 * 256
    # fastest mode per shape (1.5 and 3.0 ms); w8a8-int8-learned runs on the w8a8-int8 kernel
    assert table["w8a8-int8-learned"] == pytest.approx((1.5 + 3.0) / elements)
    assert table["w4a8-int"] == pytest.approx(1.0 / (256 * 256))
    assert table["bf16"] == pytest.approx((3.0 + 5.0) / elements)
    with pytest.raises(InputError, match="no kernel timings for candidate 'w4a8-fp4'"):
        load_latency_table(path, ["w4a8-fp4"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable JSON"):
        load_latency_table(tmp_path / "bad.json")


def test_allocation_chosen_by_measurement_overrules_a_misleading_image_metric():
    import copy

    import torch
    from torch import nn

    from diffpress.compression import selection
    from diffpress.compression.sensitivity.report import ImageScore, LayerInfo, SensitivityReport

    torch.manual_seed(0)
    denoiser = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    names = ("w4a8-int", "w8a8-int8")
    # the image metric (few samples) calls layer 0 the sensitive one; the output metric, layer 1
    image = {"0": {"w4a8-int": ImageScore(20.0, None, 1e-2), "w8a8-int8": ImageScore(40.0, None, 1e-4)},
             "1": {"w4a8-int": ImageScore(30.0, None, 1e-3), "w8a8-int8": ImageScore(40.0, None, 1e-4)}}
    output = {"0": {"w4a8-int": [30.0], "w8a8-int8": [50.0]}, "1": {"w4a8-int": [15.0], "w8a8-int8": [50.0]}}
    report = SensitivityReport([LayerInfo("0", "Linear", (8, 8)), LayerInfo("1", "Linear", (8, 8))], list(names),
                               [0], output, image)

    class Variants:  # in truth layer 1 breaks at 4 bits, layer 0 barely moves
        def module(self, fqn, name):
            layer = copy.deepcopy(denoiser.get_submodule(fqn))
            if name == "w4a8-int":
                with torch.no_grad():
                    layer.weight.mul_(0.0 if fqn == "1" else 0.99)
            return layer

    x = torch.randn(16, 8)
    probe = lambda model: model(x)
    allocations = selection.contenders(report, Budget(avg_bits=6))
    assert allocations[selection.IMAGE_METRIC].choice == {"0": "w8a8-int8", "1": "w4a8-int"}
    assert allocations[selection.OUTPUT_METRIC].choice == {"0": "w4a8-int", "1": "w8a8-int8"}
    chosen, measured = selection.select(denoiser, allocations, Variants(), probe, 16)
    assert measured.chosen == selection.OUTPUT_METRIC and chosen.choice["1"] == "w8a8-int8"
    assert measured.scores[selection.OUTPUT_METRIC].relative_error < measured.scores[selection.IMAGE_METRIC].relative_error
    assert set(measured.same_as) | set(measured.scores) == set(allocations)  # every contender measured or matched
    assert torch.equal(denoiser(x), probe(denoiser))  # the float modules are back
    assert chosen.avg_bits <= 6 + 1e-9
