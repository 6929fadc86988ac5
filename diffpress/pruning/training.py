"""What every optimization loop of the pruners shares (mask learning, learned depth, Taylor scores,
recovery): weights held frozen while something else trains, a guarded optimizer step, and the loop's
state as tensors plus JSON for the checkpoints of diffpress.resume."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..errors import DiffpressError


@contextlib.contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """Inside the block, `model`'s trainable parameters do not require grad (only gates or logits train)."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, where: str, remedy: str) -> None:
    """Backpropagate `loss` and step; DiffpressError naming `where` and `remedy` when the loss is not finite."""
    if not torch.isfinite(loss):
        raise DiffpressError(f"{where} diverged (loss {loss.item()}); {remedy}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


_SEP = "::"


def loop_state(module: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
               iteration: int, history: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimization loop after `iteration` iterations: the trained module, the optimizer's moments, the
    sampling generator, and `history` (JSON: loss curves), so that `restore_loop` continues it exactly."""
    tensors = {f"module{_SEP}{name}": t for name, t in module.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, fields in optimizer_state["state"].items():
        for name, value in fields.items():
            tensors[_SEP.join(("optimizer", str(index), name))] = torch.as_tensor(value)
    tensors["generator"] = generator.get_state()
    return tensors, {"iteration": iteration, "history": history, "param_groups": optimizer_state["param_groups"]}


def restore_loop(module: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                 tensors: dict[str, torch.Tensor], meta: dict) -> tuple[int, dict]:
    """Put a `loop_state` back; returns (iterations done, history)."""
    module.load_state_dict({key.split(_SEP, 1)[1]: t for key, t in tensors.items() if key.startswith("module" + _SEP)})
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        if key.startswith("optimizer" + _SEP):
            _, index, name = key.split(_SEP, 2)
            state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    generator.set_state(tensors["generator"])
    return int(meta["iteration"]), meta["history"]
