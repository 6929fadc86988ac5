"""Depth pruning (diffpress/pruning/blocks.py, depth.py): removable blocks found structurally on every
architecture, pass-throughs that return what the next block expects, the one-shot choice, save and load."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch

import diffpress
import tiny_models
from diffpress.errors import InputError
from diffpress.pruning import PruneStage, apply_structure
from diffpress.pruning.blocks import Block, PassThrough, find_blocks, remove_blocks, without
from diffpress.pruning.depth import additivity, choose_oneshot, choose_random, removal_losses
from diffpress.pruning.slicing import with_removed_blocks
from diffpress.prune_stage import Cost, LearnOptions, Unit

EXPECTED = {"unet2d": {"ResnetBlock2D", "Attention"}, "unet2d_condition": {"ResnetBlock2D", "Transformer2DModel"},
            "pixart": {"BasicTransformerBlock"}, "flux": {"FluxTransformerBlock", "FluxSingleTransformerBlock"},
            "sd3": {"JointTransformerBlock"}}


def build(name: str):
    torch.manual_seed(0)
    model, inputs = tiny_models.tiny_unet2d() if name == "unet2d" else tiny_models.ARCHITECTURES[name]()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval(), inputs


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_blocks_are_found_by_structure_and_a_removed_one_passes_its_residual_inputs(name):
    model, inputs = build(name)
    call = lambda m: tiny_models.run(m, inputs)
    blocks = find_blocks(model, call)
    assert {b.kind for b in blocks} == EXPECTED[name]
    assert all(b.params == sum(p.numel() for p in model.get_submodule(b.name).parameters()) for b in blocks)
    block = blocks[-1]
    seen = {}
    handle = model.get_submodule(block.name).register_forward_hook(
        lambda m, a, k, o: seen.setdefault("call", (a, k, o)) and None, with_kwargs=True)
    with torch.no_grad():
        full = call(model)
    handle.remove()
    args, kwargs, output = seen["call"]
    passing = block.pass_through()
    passed = passing(*args, **kwargs)
    expected = dict(zip(block.parameters, args)) | kwargs
    flat = [passed] if isinstance(passed, torch.Tensor) else list(passed)
    assert len(flat) == len(block.returns)
    assert type(passed) is type(output)  # the container the next block expects
    for value, name_ in zip(flat, block.returns):
        assert (value is None) if name_ is None else value is expected[name_]
    with without(model, [block]), torch.no_grad():
        pruned = call(model)
    assert pruned.shape == full.shape and not torch.equal(pruned, full)


def test_an_sd3_context_pre_only_block_keeps_its_none_and_flux_blocks_pass_both_streams():
    model, inputs = build("sd3")
    blocks = find_blocks(model, lambda m: tiny_models.run(m, inputs))
    assert blocks[-1].returns == [None, "hidden_states"]
    assert blocks[0].returns == ["encoder_hidden_states", "hidden_states"]
    model, inputs = build("flux")
    for block in find_blocks(model, lambda m: tiny_models.run(m, inputs)):
        assert block.returns == ["encoder_hidden_states", "hidden_states"] and block.container == "tuple"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_structure_record_rebuilds_the_pruned_model_bit_exactly(name):
    model, inputs = build(name)
    call = lambda m: tiny_models.run(m, inputs)
    blocks = find_blocks(model, call)
    fresh = copy.deepcopy(model)
    structure = with_removed_blocks({"version": 1, "groups": {}}, remove_blocks(model, blocks[::2]))
    assert all(isinstance(model.get_submodule(b.name), PassThrough) for b in blocks[::2])
    apply_structure(fresh, structure)
    state = model.state_dict()
    assert set(fresh.state_dict()) == set(state)
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(call(fresh), call(model))


def _blocks(losses, params):
    return [Block(f"b{i}", "X", p, ["x"], ["x"], "tensor") for i, p in enumerate(params)]


def test_the_one_shot_choice_is_the_least_summed_loss_under_the_budget():
    losses = [0.5, 0.1, 0.3, 0.05, 0.2, 0.4]
    params = [10, 30, 20, 10, 40, 20]
    blocks = _blocks(losses, params)
    total = 200.0  # 70 parameters outside the blocks
    chosen = choose_oneshot(blocks, losses, total, Cost.PARAMS, target=0.6)
    kept = total - sum(b.params for b in chosen)
    assert kept <= 0.6 * total
    best = min((sum(losses[i] for i in s) for r in range(len(blocks) + 1) for s in itertools.combinations(range(6), r)
                if total - sum(params[i] for i in s) <= 0.6 * total))
    assert sum(losses[int(b.name[1:])] for b in chosen) == pytest.approx(best)
    two = choose_oneshot(blocks, losses, total, Cost.PARAMS, remove_blocks=2)
    assert [b.name for b in two] == ["b1", "b3"]
    assert len(choose_random(blocks, total, Cost.PARAMS, remove_blocks=3, seed=1)) == 3
    with pytest.raises(InputError, match="smallest reachable is"):
        choose_oneshot(blocks, losses, total, Cost.PARAMS, target=0.2)
    with pytest.raises(InputError, match="between 1 and 5"):
        choose_oneshot(blocks, losses, total, Cost.PARAMS, remove_blocks=6)


def test_additivity_compares_predicted_and_measured_set_losses():
    model, inputs = build("pixart")
    calibration = diffpress.calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [900, 500, 100]),
                                      buckets=3)
    blocks = find_blocks(model, lambda m: tiny_models.run(m, inputs))
    losses = removal_losses(model, blocks, calibration)
    assert all(loss > 0 for loss in losses)
    checked = additivity(model, blocks, losses, calibration, sets=3)
    assert checked.sizes == [2, 2, 2]  # two blocks: the only set is both
    assert checked.predicted[0] == pytest.approx(sum(losses))
    assert checked.measured[0] > 0 and checked.measured[0] != pytest.approx(checked.predicted[0], rel=1e-6)


def test_stage_resolves_the_unit_and_refuses_mixed_up_options():
    assert PruneStage(None, remove_blocks=2).unit is Unit.BLOCKS
    assert PruneStage(None, remove_blocks=2).method.value == "oneshot"
    assert PruneStage(0.8).unit is Unit.WIDTH and PruneStage(0.8).method.value == "learned"
    assert PruneStage(0.8, method="oneshot").unit is Unit.BLOCKS
    with pytest.raises(InputError, match="does not prune blocks"):
        PruneStage(None, method="taylor", remove_blocks=2)
    with pytest.raises(InputError, match="need unit blocks"):
        PruneStage(0.8, Cost.LATENCY, unit="width")
    stage = PruneStage.from_dict({"remove_blocks": 3, "method": "random"})
    assert stage.remove_blocks == 3 and PruneStage.from_dict(stage.to_dict()) == stage


def test_remove_blocks_of_the_digits_unet_saves_loads_everywhere_and_quantizes(tmp_path):
    from diffpress.zoo.digits import DigitsPipeline

    outcome = diffpress.prune("builtin:digits", None, tmp_path / "r2", remove_blocks=2)
    result = outcome.result
    assert len(result.removed) == 2 and result.params_after < result.params_before
    assert result.additivity is not None and len(result.additivity.measured) == 20
    losses = dict(zip([b.name for b in result.blocks], result.losses))
    assert sorted(losses.values())[:2] == sorted(losses[name] for name in result.removed)
    pruned = outcome.model.unet
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 7])
    with torch.no_grad():
        expected = pruned(noise, 500, class_labels=labels).sample
        for loaded in (diffpress.load(tmp_path / "r2").unet, DigitsPipeline.from_pretrained(tmp_path / "r2").unet):
            assert torch.equal(loaded(noise, 500, class_labels=labels).sample, expected)
    compressed = diffpress.compress(tmp_path / "r2", "w8a16-int8", tmp_path / "r2-w8")
    assert compressed.report.quantized
    with torch.no_grad():
        quantized = diffpress.load(tmp_path / "r2-w8").unet(noise, 500, class_labels=labels).sample
    assert torch.isfinite(quantized).all() and quantized.shape == expected.shape


def test_recovery_distills_the_pruned_model_toward_the_float_one():
    from diffpress.pruning.recover import distill, output_loss, record_teacher

    model, inputs = build("pixart")
    calibration = diffpress.calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [900, 500, 100]),
                                      buckets=3)
    blocks = find_blocks(model, lambda m: tiny_models.run(m, inputs))
    teacher = record_teacher(model, calibration, [blocks[1].name])
    assert output_loss(model, teacher) == 0.0  # the float model is its own teacher
    remove_blocks(model, blocks[:1])
    recovery = distill(model, teacher, steps=30, learning_rate=1e-3)
    assert len(recovery.losses) == 30
    assert recovery.output_loss_after < 0.5 * recovery.output_loss_before


def test_recovery_is_judged_on_calls_it_did_not_train_on():
    from diffpress.pruning.recover import distill, output_loss, record_teacher

    model, inputs = build("pixart")
    timesteps = [950, 900, 850, 800, 150, 100, 50, 20]  # 4 calls in each of 2 buckets
    calibration = diffpress.calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, timesteps), buckets=2,
                                      reservoir_size=4)
    blocks = find_blocks(model, lambda m: tiny_models.run(m, inputs))
    teacher = record_teacher(model, calibration, [blocks[1].name], per_bucket=2)
    trained_on = {float(e.call_kwargs()["timestep"][0]) for e in teacher.calls}
    judged_on = {float(e.call_kwargs()["timestep"][0]) for e in teacher.held_out_calls}
    assert len(trained_on) == len(judged_on) == 4 and not trained_on & judged_on
    remove_blocks(model, blocks[:1])
    before = output_loss(model, teacher, held_out=True)
    assert before != output_loss(model, teacher)
    recovery = distill(model, teacher, steps=20, learning_rate=1e-3)
    assert recovery.judged_on == "held-out calls" and recovery.output_loss_before == pytest.approx(before)
    now = output_loss(model, teacher, held_out=True)  # kept: the trained weights; else the pruned ones put back
    assert now == pytest.approx(recovery.output_loss_after if recovery.kept else before)
    assert recovery.kept == (recovery.output_loss_after < before)


def test_a_recovered_depth_pruned_model_saves_its_loss_curve(tmp_path):
    import json

    outcome = diffpress.prune("builtin:digits", None, tmp_path / "r1", remove_blocks=1, method="random",
                              recover_steps=3)
    curve = json.loads((tmp_path / "r1" / "recovery.json").read_text())
    assert curve[0]["steps"] == 3 and len(curve[0]["loss"]) == 3
    assert curve[0]["stage"]["recover_steps"] == 3 and curve[0]["stage"]["unit"] == "blocks"
    assert outcome.result.recovery.output_loss_after == pytest.approx(curve[0]["output_loss_after"])


def _pixart_with_an_identity_block(index: int):
    """A tiny PixArt whose block `index` adds nothing (removing it is free), its calibration and blocks."""
    model, inputs = build("pixart")
    identity = model.transformer_blocks[index]
    with torch.no_grad():
        for layer in (identity.attn1.to_out[0], identity.attn2.to_out[0], identity.ff.net[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
    calibration = diffpress.calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [900, 500, 100]),
                                      buckets=3)
    return model, calibration, find_blocks(model, lambda m: tiny_models.run(m, inputs))


def test_learned_depth_groups_spread_removals_and_learn_to_drop_an_identity_block():
    from diffpress.pruning.depth_learn import block_groups, learn_depth

    kinds = ["A"] * 4 + ["B"] * 8
    blocks = [Block(f"b{i}", kind, 1, ["x"], ["x"], "tensor") for i, kind in enumerate(kinds)]
    groups = block_groups(blocks, 6)
    assert [len(g.blocks) for g in groups] == [4, 4, 4] and [g.keep for g in groups] == [2, 2, 2]
    assert sum(len(g.blocks) - g.keep for g in block_groups(blocks, 4)) == 4
    with pytest.raises(InputError, match="1 to 9 blocks"):
        block_groups(blocks, 10)

    # the second combination (keep block 1): untrained logits pick the first
    model, calibration, found = _pixart_with_an_identity_block(0)
    options = LearnOptions(iterations=40, learning_rate=0.1, depth_pattern="nm")
    learned = learn_depth(model, found, 1, calibration, options)
    assert [b.name for b in learned.removed] == ["transformer_blocks.0"]
    assert learned.probabilities[0][1] > 0.5


def test_free_depth_gates_draw_exactly_the_removal_count_with_a_gradient():
    from diffpress.pruning.depth_learn import FreeDepthGates

    blocks = [Block(f"b{i}", "A", 1, ["x"], ["x"], "tensor") for i in range(6)]
    gates = FreeDepthGates(blocks, 2, torch.tensor([0.0, 3.0, 0.0, 2.0, 0.0, 0.0]))
    generator = torch.Generator().manual_seed(0)
    for tau in (4.0, 0.1):
        drawn = gates.sample(generator, tau)
        values = torch.stack([drawn[b.name] for b in blocks])
        assert sorted(values.detach().tolist()) == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # hard: 2 removed
        (values * torch.arange(6.0)).sum().backward()  # (a plain sum is R whatever the draw)
        assert gates.logits.grad is not None and gates.logits.grad.abs().sum() > 0
        gates.logits.grad = None
    assert [b.name for b in gates.chosen()] == ["b1", "b3"]
    with pytest.raises(InputError, match="removes 1 to 5"):
        FreeDepthGates(blocks, 6)


@pytest.mark.parametrize("init", ["uniform", "oneshot"])
def test_the_free_depth_mask_learns_to_drop_an_identity_block(init):
    from diffpress.pruning.depth_learn import learn_depth

    model, calibration, found = _pixart_with_an_identity_block(1)
    options = LearnOptions(iterations=40, learning_rate=0.1, depth_init=init)
    learned = learn_depth(model, found, 1, calibration, options)
    assert [b.name for b in learned.removed] == ["transformer_blocks.1"]
    assert learned.pattern == "free" and learned.objective == "replay"
    assert max(learned.probabilities[0]) == learned.probabilities[0][1]
    checks = learned.checks  # the most probable set, measured on held-out calls, at the start and every 4 steps
    assert [c["iteration"] for c in checks] == list(range(0, 41, 4))
    best = min(checks, key=lambda c: c["loss"])
    assert best["removed"] == ["transformer_blocks.1"] and best["loss"] < max(c["loss"] for c in checks) or \
        all(c["removed"] == ["transformer_blocks.1"] for c in checks)


def test_lora_co_training_leaves_the_model_as_it_was():
    from peft.tuners.tuners_utils import BaseTunerLayer

    from diffpress.pruning.depth_learn import learn_depth

    model, calibration, found = _pixart_with_an_identity_block(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    options = LearnOptions(iterations=12, learning_rate=0.1, lora_rank=2, lora_learning_rate=1e-2)
    learned = learn_depth(model, found, 1, calibration, options)
    assert len(learned.losses) == 12
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules()) and not hasattr(model, "peft_config")
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


def test_lora_co_training_without_peft_says_what_to_install(monkeypatch):
    import sys

    from diffpress.pruning.depth_learn import lora_adapters

    model, _, found = _pixart_with_an_identity_block(1)
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(InputError, match=r"needs peft: pip install 'diffpress\[lora\]'"):
        with lora_adapters(model, found, 2):
            pass


def test_lora_adapters_change_what_the_gated_model_computes():
    from diffpress.pruning.depth_learn import lora_adapters

    model, calibration, found = _pixart_with_an_identity_block(1)
    entry = calibration.entries(1)[0]
    with torch.no_grad():
        plain = model(**entry.call_kwargs()).sample
    with lora_adapters(model, found, 2) as adapters:
        assert adapters and all(p.requires_grad for p in adapters)
        with torch.no_grad():
            assert torch.equal(model(**entry.call_kwargs()).sample, plain)  # B starts at zero
            for p in adapters:
                p.add_(0.1)
            assert not torch.allclose(model(**entry.call_kwargs()).sample, plain)
    with torch.no_grad():
        assert torch.equal(model(**entry.call_kwargs()).sample, plain)


def test_learned_depth_on_the_sampling_trajectory():
    outcome = diffpress.prune("builtin:digits", None, None, remove_blocks=2, method="learned",
                              learn={"iterations": 3, "objective": "trajectory", "samples": 2, "batch_size": 2},
                              steps=3)
    learned = outcome.result.learned_depth
    assert learned.objective == "trajectory" and len(learned.losses) == 3
    assert all(l > 0 for l in learned.losses) and len(outcome.result.removed) == 2


def test_recovery_that_raises_the_output_error_puts_the_pruned_weights_back():
    from diffpress.pruning.recover import distill, record_teacher

    model, inputs = build("pixart")
    calibration = diffpress.calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [900, 500, 100]),
                                      buckets=3)
    blocks = find_blocks(model, lambda m: tiny_models.run(m, inputs))
    teacher = record_teacher(model, calibration, [blocks[1].name])
    remove_blocks(model, blocks[:1])
    pruned = {k: v.clone() for k, v in model.state_dict().items()}
    recovery = distill(model, teacher, steps=5, learning_rate=0.05)  # far too large: training makes it worse
    assert recovery.output_loss_after > recovery.output_loss_before and not recovery.kept
    assert all(torch.equal(model.state_dict()[k], v) for k, v in pruned.items())
    kept = distill(model, teacher, steps=30, learning_rate=1e-3)
    assert kept.kept and kept.output_loss_after < kept.output_loss_before
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in pruned.items())


def test_recovery_runs_after_structured_pruning_too():
    from diffpress.pruning import prune_denoiser

    model, inputs = build("pixart")
    calibration = diffpress.calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [900, 500, 100]),
                                      buckets=3)
    stage = PruneStage(0.7, method="magnitude", recover_steps=20, recover_learning_rate=1e-3)
    result = prune_denoiser(model, stage, calibration=calibration)
    assert result.params_after < result.params_before and result.structure["groups"]
    assert result.recovery is not None and len(result.recovery.losses) == 20
    assert result.recovery.output_loss_after < result.recovery.output_loss_before


def test_a_latency_budget_measures_each_block_and_removes_until_it_is_met():
    from diffpress.pruning import prune_denoiser

    model, inputs = build("flux")
    calibration = diffpress.calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [900, 500, 100]),
                                      buckets=3)
    result = prune_denoiser(model, PruneStage(0.95, Cost.LATENCY, method="random"), calibration=calibration)
    assert result.stage.unit is Unit.BLOCKS
    assert all(block.seconds > 0 for block in result.blocks)
    assert len(result.removed) == 1 and result.params_after < result.params_before
