import pytest

import tiny_models
from diffpress.api import compress, inspect as inspect_recipe
from diffpress.compression.swap import quantize_
from diffpress.errors import InputError
from diffpress.formats import QuantFormat
from diffpress.presets import PRESETS, preset
from diffpress.plan import Plan
from diffpress.recipe import Recipe, Rule

RECIPE = """
default: {weight_format: int4, granularity: per_group, group_size: 32, act_format: int8, scale_method: mse}
rules:
  - {match: "transformer_blocks.0.ff.net.2", plan: {weight_format: int8, granularity: per_channel}}
  - {match: "transformer_blocks.*.ff.*", plan: {weight_format: fp8_e4m3, granularity: per_channel}}
  - {match: 're:.*attn2\\.to_(k|v)$', plan: skip}
"""


def test_exact_glob_regex_and_first_match_wins():
    recipe = Plan.from_yaml(RECIPE).recipe
    assert recipe.plan_for("transformer_blocks.0.ff.net.2").weight_format is QuantFormat.INT8  # exact beats the glob below
    assert recipe.plan_for("transformer_blocks.1.ff.net.2").weight_format is QuantFormat.FP8_E4M3
    assert recipe.plan_for("transformer_blocks.1.attn2.to_k") is None
    assert recipe.plan_for("transformer_blocks.1.attn2.to_q").weight_format is QuantFormat.INT4
    assert recipe.plan_for("transformer_blocks.1.ff.net.2").act_format is QuantFormat.INT8  # inherited from default
    assert Rule("re:a.b", None).matches("a.b") and not Rule("re:a", None).matches("ab")  # regex must match fully


def test_yaml_round_trip():
    recipe = Plan.from_yaml(RECIPE).recipe
    assert Plan.from_yaml(Plan(recipe).to_yaml()).recipe == recipe


@pytest.mark.parametrize("text,message", [
    ("default: {weight_format: int4, granularity: per_group, group_size: 32, bits: 3}", "unknown key 'bits'"),
    ("defaults: {}", "unknown key 'defaults'"),
    ("rules: [{match: x, plan: skip, when: always}]", "rules\\[0\\]: unknown key 'when'"),
    ("default: {weight_format: int5, granularity: per_channel}", "weight_format 'int5' is not one of: int8, int4"),
    ("default: {weight_format: int4, granularity: per_group, group_size: 48}", "group size 48"),
    ("rules: [{match: 're:(', plan: skip}]", "bad regex"),
    ("default: [1, 2", "not valid YAML"),
])
def test_bad_recipes_name_the_problem(text, message):
    with pytest.raises(InputError, match=message):
        Plan.from_yaml(text).recipe


def test_quantize_with_a_recipe_reports_rule_skips():
    model, _ = tiny_models.build("pixart")
    report = quantize_(model, Plan.from_yaml(RECIPE).recipe)
    assert report.skipped["transformer_blocks.0.attn2.to_k"] == "recipe rule 're:.*attn2\\\\.to_(k|v)$'"
    assert report.skipped["proj_out"] == "final output projection"
    assert model.transformer_blocks[0].ff.net[2].spec.weight_format is QuantFormat.INT8
    assert model.transformer_blocks[1].ff.net[2].spec.weight_format is QuantFormat.FP8_E4M3


def test_inspect_matches_what_quantize_does(tmp_path):
    model, _ = tiny_models.build("pixart")
    model.save_pretrained(tmp_path / "m")
    recipe = Plan.from_yaml(RECIPE).recipe
    rows = {row.fqn: row for row in inspect_recipe(tmp_path / "m", recipe)}
    report = quantize_(model, recipe)
    assert {fqn for fqn, row in rows.items() if row.plan == "high precision"} == set(report.skipped)
    assert rows["transformer_blocks.1.ff.net.2"].rule == "rule 'transformer_blocks.*.ff.*'"


def test_compress_with_recipe_saves_it_beside_the_output(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    model, _ = tiny_models.build("pixart")
    model.save_pretrained(tmp_path / "m")
    result = compress(tmp_path / "m", tmp_path / "r.yaml", tmp_path / "out")
    assert Plan.load(tmp_path / "out" / "recipe.yaml").recipe == Plan.from_yaml(RECIPE).recipe
    assert "transformer_blocks.0.attn2.to_v" in result.report.skipped
    import diffpress

    assert diffpress.load(tmp_path / "out").transformer_blocks[0].ff.net[2].spec == Plan.from_yaml(RECIPE).recipe.plan_for(
        "transformer_blocks.0.ff.net.2")


def test_rtn_variants_exist_for_every_preset():
    for name in [n for n in PRESETS if not n.endswith("-rtn")]:
        rtn = preset(name + "-rtn")
        assert rtn.scale_method.value == "absmax"
        assert (rtn.weight_format, rtn.act_format) == (preset(name).weight_format, preset(name).act_format)
