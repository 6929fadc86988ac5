"""What every optimization loop of the pruners shares (mask learning, learned depth, Taylor scores,
recovery): weights held frozen while something else trains, and a guarded optimizer step."""
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
