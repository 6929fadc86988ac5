"""Structured pruning (diffpress/pruning): units found by module type on every architecture, gates that are
exactly removal, slicing that reproduces the gated model, budgets, the trajectory gradient, save and load."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import diffpress
import tiny_models
from diffpress.errors import InputError
from diffpress.prune_stage import LearnOptions
from diffpress.pruning import PruneStage, UnitKind, apply_structure, find_groups
from diffpress.pruning.gates import Gates, GateSite, column_masks, gated
from diffpress.pruning.select import PruneBudget, select, smallest_reachable
from diffpress.pruning.slicing import materialize
from diffpress.pruning.trajectory import Trajectory, final_latents

ARCHITECTURES = ["unet2d", "unet2d_condition", "pixart", "flux", "sd3"]


def build(name: str):
    torch.manual_seed(0)
    model, inputs = tiny_models.tiny_unet2d() if name == "unet2d" else tiny_models.ARCHITECTURES[name]()
    with torch.no_grad():  # diffusers zero-initializes some output layers; make every unit matter
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval(), inputs


def half_kept(groups, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(g.count, generator=generator)[:max(g.min_kept, g.count // 2)].sort().values for g in groups]


def binary(groups, kept) -> list[torch.Tensor]:
    values = []
    for group, keep in zip(groups, kept):
        value = torch.zeros(group.count)
        value[keep] = 1.0
        values.append(value)
    return values


EXPECTED_KINDS = {"unet2d": {UnitKind.HEAD, UnitKind.CHANNELS},
                  "unet2d_condition": {UnitKind.HEAD, UnitKind.NEURON, UnitKind.CHANNELS},
                  "pixart": {UnitKind.HEAD, UnitKind.NEURON}, "flux": {UnitKind.HEAD, UnitKind.NEURON},
                  "sd3": {UnitKind.HEAD, UnitKind.NEURON}}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_sliced_model_matches_the_gated_one_and_counts_its_parameters(name):
    model, inputs = build(name)
    groups = find_groups(model)
    assert {g.kind for g in groups} == EXPECTED_KINDS[name]
    kept = half_kept(groups)
    with gated(model, column_masks(model, groups, binary(groups, kept))):
        reference = tiny_models.run(model, inputs)
    assert not torch.allclose(reference, tiny_models.run(model, inputs), atol=1e-3)  # the gates did something
    pruned = copy.deepcopy(model)
    structure = materialize(pruned, groups, kept)
    assert torch.allclose(tiny_models.run(pruned, inputs), reference, atol=1e-5, rtol=1e-5)
    removed = sum((g.count - k.numel()) * g.params_per_unit for g, k in zip(groups, kept))
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in pruned.parameters()) == removed
    skeleton = type(model).from_config(model.config).to("meta")
    apply_structure(skeleton, structure)
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}


def test_flux_joint_and_single_stream_units():
    model, _ = build("flux")
    groups = {g.name: g for g in find_groups(model)}
    joint = groups["transformer_blocks.0.attn"]
    assert [s.module.rsplit(".", 1)[-1] for s in joint.producers] == ["to_q", "to_k", "to_v", "add_q_proj",
                                                                      "add_k_proj", "add_v_proj"]
    assert [s.module for s in joint.consumers] == ["transformer_blocks.0.attn.to_out.0",
                                                   "transformer_blocks.0.attn.to_add_out"]
    single_heads, single_mlp = groups["single_transformer_blocks.0.attn"], groups["single_transformer_blocks.0.proj_mlp"]
    assert single_heads.consumers[0].module == single_mlp.consumers[0].module == "single_transformer_blocks.0.proj_out"
    assert single_mlp.consumers[0].offset == single_heads.count * single_heads.width


def test_gates_values_and_open_probabilities():
    model, _ = build("unet2d")
    gates = Gates(find_groups(model), init=3.0)
    with torch.no_grad():
        assert all(float(v.min()) == 1.0 for v in gates.deterministic())  # stretched sigmoid(3) clamps to 1
    with torch.no_grad():
        gates.logits[0].fill_(-10.0)
        assert float(gates.deterministic()[0].max()) == 0.0
        assert float(gates.open_probability()[0].max()) < 1e-3 < float(gates.open_probability()[1].min())
        samples = gates.sample(torch.Generator().manual_seed(0))
    assert all(((v >= 0) & (v <= 1)).all() for v in samples)


def test_gates_drawn_at_the_budget_are_hard_fit_it_and_carry_a_gradient():
    model, _ = build("unet2d")
    groups = find_groups(model)
    for group in groups:
        group.params_per_unit = 10 if group.kind is UnitKind.HEAD else 3
    gates = Gates(groups, init=0.0)
    with torch.no_grad():
        for logit in gates.logits:
            logit.copy_(torch.randn(logit.shape, generator=torch.Generator().manual_seed(logit.numel())))
    costs = torch.cat([torch.full((g.count,), float(g.params_per_unit)) for g in groups])
    total = float(costs.sum())
    allowed = 0.6 * total
    values = gates.sample_at_budget(torch.Generator().manual_seed(0), PruneBudget(0.6), total, temperature=1e-6)
    flat = torch.cat(values)
    assert set(flat.detach().unique().tolist()) <= {0.0, 1.0}
    assert float((flat.detach() * costs).sum()) <= allowed
    assert float((flat.detach() * costs).sum()) > allowed - float(costs.max())  # filled up to one unit
    logits = torch.cat([l.detach() for l in gates.logits])
    assert logits[flat.detach() == 1].min() >= logits[flat.detach() == 0].max()  # no noise: the top logits
    noisy = torch.cat(gates.sample_at_budget(torch.Generator().manual_seed(0), PruneBudget(0.6), total, temperature=1.0))
    (noisy * torch.arange(len(noisy), dtype=torch.float32)).sum().backward()
    assert all(l.grad is not None and l.grad.abs().sum() > 0 for l in gates.logits)


def test_gates_drawn_at_the_budget_keep_each_groups_floor_and_the_per_layer_scope():
    model, _ = build("unet2d")
    groups = find_groups(model)
    for group in groups:
        group.params_per_unit = 10 if group.kind is UnitKind.HEAD else 3
    total = float(sum(g.count * g.params_per_unit for g in groups))
    gates = Gates(groups, init=0.0)
    heads = next(i for i, g in enumerate(groups) if g.kind is UnitKind.HEAD and g.count > 1)
    with torch.no_grad():
        for i, logit in enumerate(gates.logits):
            logit.copy_(torch.randn(logit.shape, generator=torch.Generator().manual_seed(i)))
        gates.logits[heads].fill_(-50.0)  # global order alone would drop every head of this attention
    budget = PruneBudget(0.7)
    logits = [l.detach().clone() for l in gates.logits]
    drawn = {}
    for scope in ("global", "per_layer"):
        values = gates.sample_at_budget(torch.Generator().manual_seed(0), budget, total, 1e-6, scope)
        drawn[scope] = [v.detach().nonzero().reshape(-1) for v in values]
        assert all(torch.equal(a, b) for a, b in zip(drawn[scope], select(groups, logits, total, budget, scope)))
    assert len(drawn["global"][heads]) == groups[heads].min_kept == 1  # the floor, not zero heads
    assert len(drawn["per_layer"][heads]) > 1  # per layer: its share of the budget, whatever its logits
    noisy = gates.sample_at_budget(torch.Generator().manual_seed(0), budget, total, 1.0, "per_layer")
    sum((v * torch.arange(len(v), dtype=torch.float32)).sum() for v in noisy).backward()
    assert all(l.grad is not None and l.grad.abs().sum() > 0 for l in gates.logits)


def test_budget_selection_meets_the_target_keeps_one_unit_and_refuses_the_unreachable():
    model, _ = build("unet2d_condition")
    groups = find_groups(model)
    total = sum(p.numel() for p in model.parameters())
    scores = [torch.arange(g.count, dtype=torch.float) for g in groups]
    kept = select(groups, scores, total, PruneBudget(0.7))
    removed = sum((g.count - k.numel()) * g.params_per_unit for g, k in zip(groups, kept))
    assert removed >= 0.3 * total and removed - max(g.params_per_unit for g in groups) < 0.3 * total
    assert all(k.numel() >= g.min_kept for g, k in zip(groups, kept)) and any(g.min_kept == 0 for g in groups)
    assert all(k.tolist() == list(range(g.count - k.numel(), g.count)) for g, k in zip(groups, kept)
               if k.numel() > 1)  # the highest scores stay
    floor = smallest_reachable(groups, total, PruneBudget(0.5).cost)
    with pytest.raises(InputError, match=f"smallest reachable is {floor:.3f}"):
        select(groups, scores, total, PruneBudget(floor / 2))
    with pytest.raises(InputError, match="no prunable unit"):
        select([], [], 10, PruneBudget(0.5))


def test_trajectory_gradient_is_the_same_with_timestep_checkpointing():
    pipe = diffpress.checkpoint.load_pipeline("builtin:digits")
    groups = find_groups(pipe.unet)
    trajectory = Trajectory(steps=3)
    gradients = []
    for checkpointed in (True, False):
        values = [torch.full((g.count,), 0.9, requires_grad=True) for g in groups]
        with GateSite(pipe.unet, groups) as site:
            site.set(values)
            latent = final_latents(pipe, [3, 7], seed=0, trajectory=trajectory, grad=True, site=site,
                                   checkpoint_steps=checkpointed)
            latent.square().mean().backward()
        gradients.append(torch.cat([v.grad for v in values]))
    assert gradients[0].abs().sum() > 0
    assert torch.allclose(gradients[0], gradients[1], rtol=1e-4, atol=1e-7)


def test_a_recomputed_step_frees_its_graph_after_backward():
    """Stepwise checkpointing keeps only the step inputs: nothing saved by a step's recomputation in backward may
    live on while the sampled latent (and so the outer graph) does, or memory grows with the number of steps."""
    import gc
    import weakref

    pipe = diffpress.checkpoint.load_pipeline("builtin:digits")
    groups = find_groups(pipe.unet)
    values = [torch.full((g.count,), 0.9, requires_grad=True) for g in groups]
    in_backward, alive = [False], []
    weights = {p.data_ptr() for p in pipe.unet.parameters()}
    pipe.unet.requires_grad_(False)  # as mask learning runs it: only the gates train

    def pack(tensor):
        if in_backward[0] and tensor.data_ptr() not in weights:
            alive.append(weakref.ref(tensor))
        return tensor

    with GateSite(pipe.unet, groups) as site, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        site.set(values)
        latent = final_latents(pipe, [3, 7], seed=0, trajectory=Trajectory(steps=3), grad=True, site=site)
        loss = latent.square().mean()
        in_backward[0] = True
        loss.backward()
    gc.collect()
    assert alive, "the backward recomputed no step"
    assert latent.grad_fn is not None
    assert sum(ref() is not None for ref in alive) == 0


def test_prune_saves_a_checkpoint_that_loads_bit_exactly_everywhere_and_quantizes(tmp_path):
    from diffpress.zoo.digits import DigitsPipeline

    outcome = diffpress.prune("builtin:digits", 0.8, tmp_path / "p80", method="magnitude")
    result = outcome.result
    assert result.params_after <= 0.8 * result.params_before and result.macs_after < result.macs_before
    noise = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    sample = lambda pipe: pipe([1, 2, 3], 4, noise=noise)
    expected = sample(outcome.model)
    assert torch.equal(sample(diffpress.load(tmp_path / "p80")), expected)
    assert torch.equal(sample(DigitsPipeline.from_pretrained(tmp_path / "p80")), expected)
    unet = diffpress.load(tmp_path / "p80").unet
    assert sum(p.numel() for p in unet.parameters()) == result.params_after
    compressed = diffpress.compress(tmp_path / "p80", "w8a16-int8", tmp_path / "p80-int8")
    reloaded = diffpress.load(compressed.out)
    assert type(reloaded.unet.down_blocks[0].resnets[0].conv1).__name__ == "QuantConv2d"
    assert reloaded.unet.down_blocks[0].resnets[0].conv1.kernel_shape[0] == unet.down_blocks[0].resnets[0].conv1.out_channels
    assert torch.equal(sample(DigitsPipeline.from_pretrained(compressed.out)), sample(reloaded))


def test_a_recipe_prunes_then_quantizes_in_one_run(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("prune: [{target_params: 0.85, method: random}]\n"
                      "default: {weight_format: int8, granularity: per_channel}\n")
    result = diffpress.compress("builtin:digits", recipe, tmp_path / "out")
    assert result.pruned[0].params_after <= 0.85 * result.pruned[0].params_before
    loaded = diffpress.load(tmp_path / "out")
    assert sum(p.numel() for p in loaded.unet.parameters()) < result.pruned[0].params_before
    assert "prune:" in (tmp_path / "out" / "recipe.yaml").read_text()


def test_projected_mask_learning_holds_the_scheduled_budget_at_every_iteration():
    learn = dict(iterations=6, samples=2, batch_size=2, learning_rate=0.5, warmup=0.5, control="projected")
    outcome = diffpress.prune("builtin:digits", 0.7, None, steps=3, learn=learn)
    result = outcome.result
    kept = result.learned.kept_fraction
    # warm-up over 3 iterations, cubic from 1 to 0.7, then exactly the target
    expected = [0.7 + 0.3 * (1 - min(1, (i + 1) / 3)) ** 3 for i in range(6)]
    assert kept == pytest.approx(expected, abs=1e-4)
    assert result.params_after <= 0.7 * result.params_before


def test_the_per_step_loss_replays_the_float_trajectory_and_adds_its_gradient():
    from diffpress.pruning.fit import TrajectoryObjective

    pipe = diffpress.checkpoint.load_pipeline("builtin:digits")
    groups = find_groups(pipe.unet)
    trajectory = Trajectory(steps=3)
    with_steps = TrajectoryObjective(pipe, [3, 7], trajectory, samples=2, batch_size=2, seed=0, step_loss=1.0)
    assert len(with_steps.calls[0]) == 3  # one recorded call per step
    with torch.no_grad():  # replayed without gates, a recorded call gives its recorded output
        assert torch.equal(with_steps.calls[0][1].replay(pipe.unet), with_steps.calls[0][1].output)
    gradients = []
    for step_loss in (0.0, 1.0):
        objective = TrajectoryObjective(pipe, [3, 7], trajectory, samples=2, batch_size=2, seed=0, step_loss=step_loss)
        values = [torch.full((g.count,), 0.8) for g in groups]
        with GateSite(pipe.unet, groups) as site:
            site.masks = {k: m.requires_grad_() for k, m in column_masks(pipe.unet, groups, values).items()}
            objective.backward(0, site, pipe.unet)
            gradients.append(torch.cat([m.grad.flatten() for m in site.masks.values() if m.grad is not None]))
    assert gradients[0].abs().sum() > 0
    assert not torch.allclose(gradients[0], gradients[1])


def test_a_trainable_parameter_gets_the_same_gradient_through_checkpointed_steps():
    pipe = diffpress.checkpoint.load_pipeline("builtin:digits")
    groups = find_groups(pipe.unet)
    pipe.unet.requires_grad_(False)
    weight = pipe.unet.conv_out.weight
    weight.requires_grad_(True)  # as a LoRA adapter co-trained with a mask would be
    gradients = []
    for checkpointed in (True, False):
        weight.grad = None
        with GateSite(pipe.unet, groups) as site:
            # the gates require grad, as in learning (a checkpointed step with no input that does has no graph)
            site.set([torch.full((g.count,), 0.9, requires_grad=True) for g in groups])
            latent = final_latents(pipe, [3, 7], seed=0, trajectory=Trajectory(steps=3), grad=True, site=site,
                                   checkpoint_steps=checkpointed)
            latent.square().mean().backward()
        gradients.append(weight.grad.clone())
    assert gradients[0].abs().sum() > 0
    assert torch.allclose(gradients[0], gradients[1], rtol=1e-4, atol=1e-7)


def test_topk_mask_learning_draws_masks_at_the_scheduled_budget():
    learn = dict(iterations=4, samples=2, batch_size=2, learning_rate=0.5, warmup=0.5, control="topk")
    outcome = diffpress.prune("builtin:digits", 0.75, None, steps=3, learn=learn)
    kept = outcome.result.learned.kept_fraction
    expected = [0.75 + 0.25 * (1 - min(1, (i + 1) / 2)) ** 3 for i in range(4)]
    assert all(e - 0.01 <= k <= e + 1e-6 for k, e in zip(kept, expected))  # within one unit below the budget
    assert outcome.result.params_after <= 0.75 * outcome.result.params_before


def test_mask_learning_keeps_the_logits_of_the_best_binarized_cut():
    learn = dict(iterations=6, samples=2, batch_size=2, learning_rate=0.5, penalty=20.0, mask_checks=3)
    learned = diffpress.prune("builtin:digits", 0.7, None, steps=3, learn=learn).result.learned
    assert [c["iteration"] for c in learned.checks] == [0, 0, 0, 2, 4, 6]  # 0: the one-shot rankings' cuts
    assert [c["ranking"] for c in learned.checks] == ["taylor", "activation", "magnitude"] + ["learned"] * 3
    losses = [c["loss"] for c in learned.checks]
    assert all(loss > 0 for loss in losses) and len(set(losses[:3])) == 3  # three different cuts
    assert learned.best_iteration == learned.checks[losses.index(min(losses))]["iteration"]
    assert learned.kept_check["loss"] == min(losses)
    expected = learned.best if learned.best_iteration != 6 else list(learned.gates.logits)
    assert all(torch.equal(a, b.detach()) for a, b in zip(learned.scores(), expected))
    unchecked = diffpress.prune("builtin:digits", 0.7, None, steps=3, learn={**learn, "mask_checks": 0})
    assert unchecked.result.learned.checks == [] and unchecked.result.learned.best is None


def test_the_taylor_candidate_is_measured_first_while_the_logits_start_equal():
    learn = dict(iterations=1, samples=2, batch_size=2, learning_rate=1e-6, mask_checks=1)
    candidate = diffpress.prune("builtin:digits", 0.8, None, steps=3, learn={**learn, "warm_start": "candidate"})
    taylor = diffpress.prune("builtin:digits", 0.8, None, steps=3, learn={**learn, "warm_start": "taylor"})
    candidate, taylor = candidate.result.learned, taylor.result.learned
    init = LearnOptions().init_logit
    assert all(torch.allclose(logit.detach(), torch.full_like(logit, init), atol=1e-4) for logit in candidate.gates.logits)
    assert not all(torch.allclose(logit.detach(), torch.full_like(logit, init), atol=1e-2) for logit in taylor.gates.logits)
    assert [(c["iteration"], c["ranking"]) for c in candidate.checks] == [
        (0, "taylor"), (0, "activation"), (0, "magnitude"), (1, "learned")]
    assert [(c["iteration"], c["ranking"]) for c in taylor.checks] == [(0, "taylor"), (1, "learned")]
    assert candidate.checks[0]["loss"] == pytest.approx(taylor.checks[0]["loss"], rel=1e-4)  # the same taylor cut
    assert all(type(m.seconds) is float and m.seconds > 0 for m in (candidate, taylor))
    none = diffpress.prune("builtin:digits", 0.8, None, steps=3, learn={**learn, "warm_start": "none"})
    assert [c["iteration"] for c in none.result.learned.checks] == [1]


def test_activation_scores_on_replayed_calls_equal_the_calibration_statistics():
    from diffpress.calibration import CalibrationOptions
    from diffpress.pruning.importance import activation_scores, activation_scores_on

    options = CalibrationOptions(num_samples=2, steps=3, buckets=3, reservoir_size=4, batch_size=2)
    calibration = diffpress.calibrate("builtin:digits", options=options)
    entries = calibration.entries()
    assert len(entries) == 3  # every call of the run is in the reservoir, so the statistics cover the same inputs
    from diffusers import UNet2DModel
    from diffpress.zoo import BUILTINS

    denoiser = UNet2DModel.from_pretrained(BUILTINS["digits"].path / "unet").eval()
    groups = find_groups(denoiser)
    on_calls = activation_scores_on(denoiser, groups, [lambda e=e: denoiser(**e.call_kwargs()) for e in entries])
    from_statistics = activation_scores(denoiser, groups, calibration)
    assert {g.kind for g in groups} >= {UnitKind.HEAD, UnitKind.CHANNELS}  # linear and convolution consumers
    for mine, theirs in zip(on_calls, from_statistics):
        assert torch.allclose(mine, theirs, rtol=1e-4)


def test_a_taylor_warm_start_orders_the_logits_as_the_scores():
    from diffpress.pruning.learn import warm_logits

    model, _ = build("unet2d")
    groups = find_groups(model)
    gates = Gates(groups, init=3.0)
    scores = [torch.rand(g.count, generator=torch.Generator().manual_seed(i)) + 0.01 for i, g in enumerate(groups)]
    logits = torch.cat(warm_logits(gates, scores))
    assert logits.mean() == pytest.approx(3.0, abs=1e-5)
    assert torch.equal(logits.argsort(), torch.cat(scores).argsort())
    assert logits.std() == pytest.approx(1.0, rel=1e-3)  # spread 1: one standard deviation of log score


def test_penalty_mask_learning_moves_the_gates_toward_the_budget(tmp_path):
    learn = dict(iterations=6, samples=2, batch_size=2, learning_rate=0.5, penalty=20.0, warmup=0.1,
                 control="penalty")
    outcome = diffpress.prune("builtin:digits", 0.7, None, steps=3, learn=learn)
    learned = outcome.result.learned
    assert len(learned.losses) == 6 and all(torch.isfinite(torch.tensor(learned.losses)))
    assert learned.kept_fraction[-1] < learned.kept_fraction[0]
    assert outcome.result.params_after <= 0.7 * outcome.result.params_before


def test_an_interrupted_prune_leaves_no_output(tmp_path, monkeypatch):
    import diffpress.io

    def interrupted(*args, **kwargs):  # the weights are written; the run stops before publishing them
        raise KeyboardInterrupt

    monkeypatch.setattr(diffpress.io, "write_manifest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        diffpress.prune("builtin:digits", 0.8, tmp_path / "p", method="magnitude")
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_prunable_units_says_so():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    assert find_groups(Plain()) == []
    with pytest.raises(InputError, match="already pruned"):
        model, _ = build("unet2d")
        model.diffpress_structure = {"version": 1, "groups": {}}
        from diffpress.pruning import prune_denoiser

        prune_denoiser(model, PruneStage(0.8, method="magnitude"))


def test_the_prune_command_says_which_cut_it_kept_and_saves(tmp_path, capsys):
    from diffpress.cli.main import main

    assert main(["prune", "builtin:digits", "--target-params", "0.8", "--iterations", "2", "--learn-samples", "2",
                 "--batch-size", "2", "--steps", "2", "--mask-checks", "1", "--out", str(tmp_path / "p"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "mask learned in" in out and "of 4 cuts measured" in out
    assert re.search(r"kept (the cut of iteration 2|the (taylor|activation|magnitude) ranking's cut): held-out", out)
    assert (tmp_path / "p" / "recipe.yaml").exists() and "warm_start: candidate" in (tmp_path / "p" / "recipe.yaml").read_text()


def test_inspect_lists_prunable_units_without_weights(capsys):
    from diffpress.cli.main import main

    assert main(["inspect", "builtin:digits", "--prunable"]) == 0
    out = capsys.readouterr().out
    assert "mid_block.attentions.0" in out and "channel-groups" in out and "prunable groups" in out


def test_a_fully_pruned_feed_forward_passes_the_residual_and_quantizes_around_it():
    model, inputs = build("pixart")
    groups = find_groups(model)
    emptied = next(g for g in groups if g.kind is UnitKind.NEURON)
    kept = [torch.arange(0) if g is emptied else torch.arange(g.count) for g in groups]
    with gated(model, column_masks(model, groups, binary(groups, kept))):
        reference = tiny_models.run(model, inputs)
    materialize(model, groups, kept)
    assert model.get_submodule(emptied.consumers[0].module).in_features == 0
    assert torch.allclose(tiny_models.run(model, inputs), reference, atol=1e-5, rtol=1e-5)
    from diffpress.pruning.macs import count_macs, record_positions

    positions = record_positions(model, lambda m: tiny_models.run(m, inputs))  # a layer with no outputs counts
    assert positions[emptied.producers[0].module] > 0 and count_macs(model, positions) > 0
    from diffpress.compression.surgery import compressible_layers

    assert emptied.consumers[0].module not in dict(compressible_layers(model))
    diffpress.quantize_(model, diffpress.QuantSpec("int8", "per_channel"))
    assert torch.isfinite(tiny_models.run(model, inputs)).all()
