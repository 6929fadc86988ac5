"""Learnable depth (TinyFusion, generalized): which blocks to remove, learned end to end.

Each removable block's output becomes

    passed + m * (block(x) - passed)

where `passed` is what the block's pass-through returns (its residual inputs) and m in {0, 1} says
whether the drawn set keeps it (`BlockSite`); the gradient reaches the logits through a relaxed,
straight-through sample. Two patterns (`DepthPattern`):

- free (default): one logit per block; each step draws exactly R blocks to remove with Gumbel top-k
  (the hard set) and its continuous relaxation (Xie & Ermon 2019: R rounds of softmax, each masking
  what the previous took) as the straight-through gradient. Any set of R blocks can be drawn, so
  removals go where they cost least, across block classes (FLUX double- vs single-stream, UNet
  ResNets vs attention blocks).
- nm: TinyFusion's local N:M groups: the removable blocks of each class, in model order, in groups of
  `group_size` (M); each group keeps N_g of its M (removals spread as evenly as the count allows);
  one logit per keep-combination of a group, Gumbel-softmax with a straight-through one-hot.

The temperature anneals from 4 to 0.1. With `init` oneshot the free logits start from the blocks'
single-removal losses (standardized -log loss, x2: the one-shot set is the likeliest first draw,
others are explored); uniform starts at zero. The objective (`fit.py`) is the final latent of
whole sampling trajectories against the float model's (trajectory: the default where the model has a
pipeline) or the denoiser's output error on replayed calibration calls (replay: fast, needs no
pipeline). With `lora_rank` > 0, LoRA adapters (peft) on every Linear and Conv2d
inside the blocks train jointly with the logits (TinyFusion's recoverability: the search favours
sets that recover well, not those with the least immediate loss); the adapters are discarded after
the search (recovery distills the chosen model). The most probable set is measured without noise (and
without adapters) on held-out data (`fit.held_out`) where the logits start (with init oneshot: the one-shot set), every
iterations / `mask_checks` iterations and at the end; the set with the least held-out loss is removed.
"""
from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .. import resume
from ..calibration import CalibrationSet
from ..compression.sensitivity.output_metric import output_tensor
from ..compression.surgery import replace_module
from ..errors import InputError
from ..prune_stage import DepthInit, DepthPattern, LearnObjective, LearnOptions
from .blocks import Block
from .fit import fit_step, held_out, progress_bar
from .learn import objective_for, objective_kind
from .trajectory import Trajectory
from .training import frozen_weights, loop_state, restore_loop


@dataclass
class BlockGroup:
    blocks: list[Block]
    keep: int

    @property
    def combinations(self) -> list[tuple[int, ...]]:
        return list(itertools.combinations(range(len(self.blocks)), self.keep))


def block_groups(blocks: list[Block], remove: int, group_size: int = 4) -> list[BlockGroup]:
    """The blocks of each class, in model order, in local groups of at most `group_size` (a transformer's
    consecutive blocks; a UNet's ResNets and its attention blocks, each in order); `remove` removals spread
    evenly (each group keeps at least one block)."""
    by_kind: dict[str, list[Block]] = {}
    for block in blocks:
        by_kind.setdefault(block.kind, []).append(block)
    runs = [members[start:start + group_size] for members in by_kind.values()
            for start in range(0, len(members), group_size)]
    removable = sum(len(run) - 1 for run in runs)
    if not 0 < remove <= removable:
        raise InputError(f"the learned depth mask can remove 1 to {removable} blocks here (each group of up to "
                         f"{group_size} keeps one); asked for {remove}", "remove_blocks")
    removals = [0] * len(runs)
    order = sorted(range(len(runs)), key=lambda i: -len(runs[i]))
    left = remove
    while left:  # one more removal to the group with the most blocks per removal so far
        best = max((i for i in order if removals[i] < len(runs[i]) - 1),
                   key=lambda i: (len(runs[i]) / (removals[i] + 1), -i))
        removals[best] += 1
        left -= 1
    return [BlockGroup(run, len(run) - r) for run, r in zip(runs, removals)]


def _gumbel(shape, generator: torch.Generator) -> torch.Tensor:
    return -torch.log(-torch.log(torch.rand(shape, generator=generator).clamp(1e-9, 1 - 1e-9)))


class FreeDepthGates(nn.Module):
    """One removal logit per block; draws exactly `remove` blocks (Gumbel top-k, relaxed top-k gradient)."""

    def __init__(self, blocks: list[Block], remove: int, init: torch.Tensor | None = None) -> None:
        super().__init__()
        if not 0 < remove < len(blocks):
            raise InputError(f"the learned depth mask removes 1 to {len(blocks) - 1} of the {len(blocks)} blocks; "
                             f"asked for {remove}", "remove_blocks")
        self.blocks, self.remove = blocks, remove
        self.logits = nn.Parameter(torch.zeros(len(blocks)) if init is None else init.clone().float())

    def sample(self, generator: torch.Generator, tau: float) -> dict[str, torch.Tensor]:
        keys = self.logits + _gumbel(self.logits.shape, generator)
        hard = torch.zeros_like(keys)
        hard[keys.detach().topk(self.remove).indices] = 1.0
        soft, taken, relaxed = torch.zeros_like(keys), torch.zeros_like(keys), keys
        for _ in range(self.remove):  # relaxed top-k: each round a softmax over what is left
            relaxed = relaxed + torch.log((1.0 - taken).clamp_min(1e-20))
            taken = torch.softmax(relaxed / tau, dim=0)
            soft = soft + taken
        removal = hard + (soft - soft.detach())  # exactly 0 or 1 forward
        return {block.name: 1.0 - removal[i] for i, block in enumerate(self.blocks)}

    def chosen(self) -> list[Block]:
        picked = set(self.logits.detach().topk(self.remove).indices.tolist())
        return [b for i, b in enumerate(self.blocks) if i in picked]

    def probabilities(self) -> list[list[float]]:
        """Each block's share of the removal softmax (one list)."""
        return [[round(p, 4) for p in torch.softmax(self.logits.detach(), 0).tolist()]]


class GroupDepthGates(nn.Module):
    """TinyFusion's N:M groups: one logit per keep-combination of each group."""

    def __init__(self, blocks: list[Block], remove: int, group_size: int = 4) -> None:
        super().__init__()
        self.groups = block_groups(blocks, remove, group_size)
        self.logits = nn.ParameterList([nn.Parameter(torch.zeros(len(g.combinations))) for g in self.groups])

    def sample(self, generator: torch.Generator, tau: float) -> dict[str, torch.Tensor]:
        gates = {}
        for group, logit in zip(self.groups, self.logits):
            soft = torch.softmax((logit + _gumbel(logit.shape, generator)) / tau, dim=0)
            hard = torch.zeros_like(soft)
            hard[soft.detach().argmax()] = 1.0
            choice = hard + (soft - soft.detach())  # straight-through, exactly 0 or 1 forward
            for index, block in enumerate(group.blocks):
                keeps = [c for c, combo in enumerate(group.combinations) if index in combo]
                gates[block.name] = choice[keeps].sum()
        return gates

    def chosen(self) -> list[Block]:
        removed = []
        for group, logit in zip(self.groups, self.logits):
            kept = group.combinations[int(logit.detach().argmax())]
            removed += [b for i, b in enumerate(group.blocks) if i not in kept]
        return removed

    def probabilities(self) -> list[list[float]]:
        return [[round(p, 4) for p in torch.softmax(logit.detach(), 0).tolist()] for logit in self.logits]


def _mixing_hook(block: Block, site: "BlockSite"):
    passing = block.pass_through()

    def hook(module, args, kwargs, output):
        m = site.masks.get(block.name)
        if m is None:
            return None
        passed = passing(*args, **kwargs)
        if isinstance(output, torch.Tensor):
            return passed + m * (output - passed)
        if isinstance(output, tuple):
            return tuple(o if p is None or o is None else p + m * (o - p) for o, p in zip(output, passed))
        first = output_tensor(output)
        return type(output)(output_tensor(passed) + m * (first - output_tensor(passed)))

    return hook


class BlockSite:
    """Mixing hooks on `blocks`; `masks` (block name -> keep gate m) says how much of each block acts."""

    def __init__(self, model: nn.Module, blocks: list[Block]) -> None:
        self.masks: dict[str, torch.Tensor] = {}
        self._handles = [model.get_submodule(b.name).register_forward_hook(_mixing_hook(b, self), with_kwargs=True)
                         for b in blocks]

    def __enter__(self) -> "BlockSite":
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self.masks = [], {}


@contextlib.contextmanager
def lora_adapters(model: nn.Module, blocks: list[Block], rank: int, seed: int = 0) -> Iterator[list[nn.Parameter]]:
    """LoRA adapters (peft, rank `rank`) on every Linear and Conv2d inside `blocks`, trainable, for the block;
    the original layers are put back (unmerged) at the end. Yields the adapters' parameters. Their random
    initialization is drawn from `seed` (the global generator is left as it was), so a run repeats."""
    if rank <= 0:
        yield []
        return
    try:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        raise InputError("LoRA co-training (lora_rank, --lora-rank) needs peft: pip install 'diffpress[lora]'") from None

    prefixes = tuple(b.name + "." for b in blocks)
    targets = [name for name, module in model.named_modules()
               if name.startswith(prefixes) and isinstance(module, (nn.Linear, nn.Conv2d))]
    if not targets:
        yield []
        return
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0),
                                model, adapter_name="diffpress-depth")
    try:
        yield [p for name, p in model.named_parameters() if "lora_" in name]
    finally:
        for name, module in list(model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                replace_module(model, name, module.get_base_layer())
        for name, parameter in model.named_parameters():  # peft froze everything but the adapters
            parameter.requires_grad_(name in trainable)
        if "peft_config" in vars(model):  # set by peft's tuner on the model it injected into
            del model.peft_config


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """Inside the block, every LoRA adapter of `model` is disabled (a no-op where there is none)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.disable_adapters]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


@dataclass
class LearnedDepth:
    removed: list[Block]
    losses: list[float]
    probabilities: list[list[float]]  # free: the removal softmax over blocks; nm: per group, over combinations
    seconds: float
    pattern: str = DepthPattern.FREE.value
    objective: str = LearnObjective.TRAJECTORY.value
    checks: list[dict] = field(default_factory=list)  # held-out loss of the most probable set, as it went


def _initial_logits(model: nn.Module, blocks: list[Block], calibration: CalibrationSet | None,
                    options: LearnOptions) -> torch.Tensor | None:
    if options.depth_init is not DepthInit.ONESHOT or options.depth_pattern is not DepthPattern.FREE:
        return None
    from .depth import removal_losses

    if calibration is None:
        raise InputError("starting the depth logits from single-removal losses needs a calibration set "
                         "(or learn depth_init: uniform)", "calibration")
    scores = -torch.tensor(removal_losses(model, blocks, calibration)).clamp_min(1e-12).log()
    spread = scores.std() if len(scores) > 1 and scores.std() > 0 else torch.tensor(1.0)
    return 2.0 * (scores - scores.mean()) / spread


def learn_depth(model: nn.Module, blocks: list[Block], remove: int, calibration: CalibrationSet | None,
                options: LearnOptions = LearnOptions(), *, pipe=None, items=None, trajectory: Trajectory | None = None,
                group_size: int = 4, progress: bool = False) -> LearnedDepth:
    started = time.perf_counter()
    kind = objective_kind(options, pipe, items)
    if options.depth_pattern is DepthPattern.NM:
        gates: FreeDepthGates | GroupDepthGates = GroupDepthGates(blocks, remove, group_size)
    else:
        gates = FreeDepthGates(blocks, remove, _initial_logits(model, blocks, calibration, options))
    objective = objective_for(options, pipe, items, trajectory or Trajectory(10), model, calibration)
    generator = torch.Generator().manual_seed(options.seed)
    every = max(1, options.iterations // options.mask_checks) if options.mask_checks else 0
    checker = _SetChecker(held_out(objective, model, calibration), model, blocks) if every else None
    losses: list[float] = []
    checkpoints = resume.stage("depth-learning")
    with frozen_weights(model), BlockSite(model, blocks) as site, \
            lora_adapters(model, blocks, options.lora_rank, options.seed) as adapters:
        groups = [{"params": list(gates.parameters()), "lr": options.learning_rate}]
        if adapters:
            groups.append({"params": adapters, "lr": options.lora_learning_rate})
        optimizer = torch.optim.Adam(groups)
        trained = _Trained(gates, adapters)
        start = 0
        if (snapshot := checkpoints.latest_snapshot()) is not None:
            start, history = restore_loop(trained, optimizer, generator, *snapshot)
            losses = history["losses"]
            if checker:
                checker.restore(history["checker"])
        elif checker:
            checker.check(site, gates.chosen(), 0)  # where the logits start (the one-shot set, by default)
        with progress_bar(start, options.iterations, "learn depth", progress) as bar:
            for iteration in bar:
                tau = 4.0 * (0.1 / 4.0) ** (iteration / max(1, options.iterations - 1))
                losses.append(fit_step(site, objective, model, optimizer, iteration, gates.sample(generator, tau)))
                if checker and ((iteration + 1) % every == 0 or iteration + 1 == options.iterations):
                    checker.check(site, gates.chosen(), iteration + 1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", tau=f"{tau:.2f}")
                if iteration + 1 < options.iterations and checkpoints.snapshot_due():
                    history = {"losses": losses, "checker": checker.state() if checker else None}
                    checkpoints.write_snapshot(*loop_state(trained, optimizer, generator, iteration + 1, history))
    removed = checker.best() if checker else gates.chosen()
    return LearnedDepth(removed, losses, gates.probabilities(), time.perf_counter() - started,
                        options.depth_pattern.value, kind.value, checker.checks if checker else [])


class _Trained(nn.Module):
    """What a depth-learning checkpoint holds besides the optimizer: the gates' logits and the LoRA adapters
    co-trained with them (the model's own parameters, held here only to be saved and put back)."""

    def __init__(self, gates: nn.Module, adapters: list[nn.Parameter]) -> None:
        super().__init__()
        self.gates = gates
        self.adapters = nn.ParameterList(adapters)


class _SetChecker:
    """The held-out loss of each distinct set of removed blocks the learner's most probable set passes
    through; `best` is the set with the least."""

    def __init__(self, objective, model: nn.Module, blocks: list[Block]) -> None:
        self.objective, self.model, self.blocks = objective, model, blocks
        self.losses: dict[frozenset, float] = {}
        self.sets: dict[frozenset, list[Block]] = {}
        self.checks: list[dict] = []

    def check(self, site: BlockSite, removed: list[Block], iteration: int) -> None:
        key = frozenset(b.name for b in removed)
        if key not in self.losses:
            site.masks = {b.name: torch.tensor(0.0 if b.name in key else 1.0) for b in self.blocks}
            try:
                with adapters_off(self.model):  # the model that will be cut has none
                    self.losses[key] = self.objective.evaluate(site, self.model)
            finally:
                site.masks = {}
            self.sets[key] = removed
        self.checks.append({"iteration": iteration, "loss": self.losses[key], "removed": sorted(key)})

    def best(self) -> list[Block]:
        return self.sets[min(self.losses, key=self.losses.get)]

    def state(self) -> dict:
        """JSON: every set measured with its loss, in the order measured, and the checks."""
        return {"measured": [{"removed": [b.name for b in self.sets[key]], "loss": loss}
                             for key, loss in self.losses.items()],
                "checks": self.checks}

    def restore(self, state: dict) -> None:
        by_name = {b.name: b for b in self.blocks}
        for entry in state["measured"]:
            key = frozenset(entry["removed"])
            self.losses[key] = entry["loss"]
            self.sets[key] = [by_name[name] for name in entry["removed"]]
        self.checks = list(state["checks"])
