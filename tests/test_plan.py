"""The one plan type (plan.py): what compress accepts, recipe files with prune and mixed sections."""
from __future__ import annotations

import pytest

from diffpress.errors import InputError
from diffpress.plan import Budget, MixedPrecision, Plan, as_plan
from diffpress.presets import PRESETS, SensitivityMethods, preset, preset_recipe
from diffpress.recipe import Recipe

MIXED_YAML = """\
mixed:
  avg_bits: 5
  candidates: [w4a8-int, w8a8-int8-learned]
  methods: rtn
  image_layers: 0
"""


def test_everything_compress_accepts_becomes_a_plan(tmp_path):
    assert as_plan("w8a8-int8") == Plan(preset_recipe("w8a8-int8"), name="w8a8-int8")
    assert as_plan("w8a8-int8").describe() == "preset w8a8-int8"
    recipe = Recipe(preset("w4a16-int4"))
    assert as_plan(recipe).recipe is recipe
    assert as_plan(Budget(avg_bits=5)).mixed == MixedPrecision(Budget(avg_bits=5))
    (tmp_path / "r.yaml").write_text(MIXED_YAML)
    from_file = as_plan(tmp_path / "r.yaml")
    assert from_file.mixed.methods is SensitivityMethods.RTN and from_file.mixed.image_layers == 0
    assert as_plan(str(tmp_path / "r.yaml")) == from_file
    assert Plan.from_yaml(from_file.to_yaml()) == from_file
    with pytest.raises(InputError, match="needs a budget"):
        as_plan("mixed")
    with pytest.raises(InputError, match="neither a preset"):
        as_plan("w9a9")
    with pytest.raises(InputError, match="a plan is a preset name"):
        as_plan(42)


def test_presets_are_typed_and_each_has_a_baseline():
    baselines = [p for p in PRESETS.values() if p.baseline_of is not None]
    assert len(baselines) == len(PRESETS) // 2
    for baseline in baselines:
        assert baseline.name == baseline.baseline_of + "-rtn"
        assert not baseline.spec.needs_calibration


def test_prune_section_parses_into_stages_and_round_trips():
    plan = Plan.from_yaml("prune: [{method: taylor, target_params: 0.8}]\ndefault: {weight_format: int8, "
                          "granularity: per_channel}\n")
    assert [(s.method.value, s.cost.value, s.target) for s in plan.prune] == [("taylor", "params", 0.8)]
    assert Plan.from_yaml(plan.to_yaml()) == plan
    for bad, message in [("{method: learned}", "exactly one of target_params, target_macs"),
                         ("{target_params: 1.5}", "must be a fraction in \\(0, 1\\]"),
                         ("{target_params: 0.8, method: obs}", "method 'obs' is not one of"),
                         ("{target_params: 0.8, learn: {iterations: 0}}", "iterations"),
                         ("{target_macs: 0.8, depth: 3}", "unknown key 'depth'")]:
        with pytest.raises(InputError, match=message):
            Plan.from_yaml(f"prune: [{bad}]\ndefault: skip\n")
    with pytest.raises(InputError, match="expected a list of prune stages"):
        Plan.from_yaml("prune: learned\n")
    assert Plan.from_yaml("prune: []\ndefault: skip\n").prune == ()


@pytest.mark.parametrize("text,message", [
    ("mixed: {avg_bits: 5}\ndefault: {weight_format: int8, granularity: per_channel}\n", "remove 'default'"),
    ("mixed: {avg_bits: 5, budget: 3}\n", "unknown key 'budget'"),
    ("mixed: {candidates: [w4a8-int]}\n", "exactly one size budget"),
    ("mixed: {avg_bits: 3}\n", "smallest feasible average is 4"),
    ("mixed: {avg_bits: 5, methods: exact}\n", "methods 'exact' is not one of"),
    ("mixed: {avg_bits: 5, image_layers: -1}\n", "image_layers must be an integer >= 0"),
    ("mixed: {avg_bits: 5, candidates: [int3]}\n", "unknown candidate format 'int3'"),
    ("quantize: {}\n", "unknown key 'quantize'"),
    ("keep_default_skips: perhaps\n", "keep_default_skips must be true or false"),
    ("rules: {match: x}\n", "rules must be a list"),
    ("!!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
])
def test_bad_plans_name_the_problem(text, message):
    with pytest.raises(InputError, match=message):
        Plan.from_yaml(text)
