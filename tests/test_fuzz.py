"""Fuzzed readers of user files (tests/fuzz_targets.py): every mutated recipe, calibration set, compressed
model and pruning structure either loads or fails with a one-line DiffpressError, in bounded time, writing
nothing. bench/fuzz.py runs the same targets 10,000 times each."""
from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_targets

CASES = {"recipe": 200, "calibration": 150, "compressed-model": 150, "pruning-structure": 150}


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    return {t.name: t for t in fuzz_targets.targets(tmp_path_factory.mktemp("fuzz-seeds"))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_mutated_input_loads_or_fails_with_one_line(name, targets, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"fuzz-{name}")
    messages = set()

    @settings(max_examples=CASES[name], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, 2 ** 32 - 1))
    def case(seed):
        directory = fuzz_targets.fresh_case_dir(root, 0)
        try:
            messages.add(fuzz_targets.run_case(targets[name], directory, fuzz_targets.seeded(seed)))
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    case()
    assert len(messages) > 3, f"{name}: the mutations hardly reach the reader ({messages})"


def test_hostile_yaml_is_refused_not_executed_or_expanded(tmp_path):
    from diffpress import Plan
    from diffpress.errors import DiffpressError

    for index, text in enumerate(fuzz_targets.HOSTILE_YAML):
        path = tmp_path / f"r{index}.yaml"
        path.write_text(text)
        with pytest.raises(DiffpressError) as caught:
            Plan.load(path)
        assert "\n" not in str(caught.value)


def test_a_manifest_path_outside_the_directory_is_refused(targets, tmp_path):
    import json

    from diffpress import load
    from diffpress.errors import IntegrityError

    model = targets["compressed-model"].seed(tmp_path)
    manifest = json.loads((model / "diffpress_manifest.json").read_text())
    manifest["sha256"]["../outside.json"] = "0" * 64
    (model / "diffpress_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="outside the model directory"):
        load(model)


def test_a_config_declaring_a_huge_model_is_refused_fast(targets, tmp_path):
    import json
    import time

    from diffpress import load
    from diffpress.errors import InputError

    model = targets["compressed-model"].seed(tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["num_layers"] = 2 ** 62
    (model / "config.json").write_text(json.dumps(config))
    fuzz_targets._resign(model)
    started = time.perf_counter()
    with pytest.raises(InputError, match="far larger than its weights"):
        load(model)
    assert time.perf_counter() - started < 10
