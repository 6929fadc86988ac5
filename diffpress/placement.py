"""Where compression computes: a device and a compute dtype, with the model offloaded block by block.

The model a verb works on stays where it was loaded (the CPU, in its stored dtype) for the whole run;
that copy is the one quantized and saved, and nothing in it is cast. Inside `placed(denoiser,
placement)` every denoiser call runs on `placement.device` in `placement.compute_dtype`:

- the call's tensor arguments move to the device (floating ones cast), and its outputs come back to
  the device and dtype of the call's first floating argument, so a pipeline driving the denoiser
  (its scheduler, text encoder and VAE where they are) never sees the difference;
- each offload unit -- the innermost entry of a block list (`offload_units`: a UNet resnet, transformer
  block or sampler, a DiT/FLUX transformer block) -- has its parameters and buffers copied
  to the device when it is called and dropped when it returns; the modules outside every unit (embedders,
  norms, in/out projections) are copied for the duration of each denoiser call.

Peak device memory is therefore one unit's weights plus the modules outside the units, and the
activations of one call: the block-sequential layout of llm-compressor's pipeline,
found without layer-name lists. The per-layer work of quantization (smoothing search, learned
rounding, GPTQ) moves one layer and its captured inputs to the device at a time (`to_device`).

Copies are made by swapping each tensor's `.data` and swapped back on return, so the model's own
tensors are never modified. Work that needs gradients through a unit's weights (block reconstruction)
holds the unit on the device for its whole duration with `materialized`; a call of a unit already
materialized moves nothing. On the CPU in the stored dtype (the default without CUDA) nothing is
installed and every path is the plain one.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .errors import InputError

COMPUTE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                  "float64": torch.float64}


def default_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def parse_device(device) -> torch.device:
    """A torch.device from a name ("cpu", "cuda", "cuda:1") or None (the default); InputError when unusable."""
    if device is None or device == "auto":
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device {device!r} is not a device name (cpu, cuda, cuda:N)", "device") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: this torch has no CUDA device (torch.cuda.is_available() is "
                             "False); use --device cpu", "device")
        index = resolved.index or 0
        if index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)", "device")
        resolved = torch.device("cuda", index)
    elif resolved.type != "cpu":
        raise InputError(f"device {device!r}: diffpress computes on cpu or cuda devices", "device")
    return resolved


def parse_compute_dtype(dtype) -> torch.dtype | None:
    """A compute dtype from a name or torch.dtype; None (or "stored"): each tensor's stored dtype."""
    if dtype is None or dtype == "stored":
        return None
    if isinstance(dtype, torch.dtype) and dtype in COMPUTE_DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in COMPUTE_DTYPES:
        return COMPUTE_DTYPES[dtype]
    raise InputError(f"compute dtype {dtype!r} is not one of stored, {', '.join(COMPUTE_DTYPES)}", "compute_dtype")


@dataclass(frozen=True)
class Placement:
    """device: where denoiser calls and per-layer work run. compute_dtype: the dtype of denoiser calls (None:
    the stored one); per-layer quantization math is float32 (float64 for GPTQ's Hessian) whatever it is."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    compute_dtype: torch.dtype | None = None

    @classmethod
    def resolve(cls, device=None, compute_dtype=None) -> "Placement":
        """From user input: device None -> the first CUDA device if any, else the CPU."""
        return cls(parse_device(device), parse_compute_dtype(compute_dtype))

    @property
    def trivial(self) -> bool:
        """On the CPU in the stored dtype: nothing to move or cast."""
        return self.device.type == "cpu" and self.compute_dtype is None

    def describe(self) -> str:
        dtype = str(self.compute_dtype).removeprefix("torch.") if self.compute_dtype else "stored dtype"
        return f"{self.device} ({dtype})"

    def cast(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on the device; floating tensors in the compute dtype."""
        dtype = self.compute_dtype if self.compute_dtype is not None and tensor.is_floating_point() else None
        return tensor.to(device=self.device, dtype=dtype)


CPU = Placement()
_CURRENT: ContextVar[Placement] = ContextVar("diffpress_placement", default=CPU)


def current() -> Placement:
    """The placement of the verb running now (the CPU, stored dtype, outside `placed`)."""
    return _CURRENT.get()


def to_device(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A per-layer work tensor on the current device (dtype unchanged)."""
    return None if tensor is None else tensor.to(current().device)


def offload_units(denoiser: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(units moved with everything inside them: the innermost entries of block lists; modules outside every
    unit that hold tensors of their own). A block list is a ModuleList of modules of one class that all have
    submodules -- resnets, transformer blocks, samplers --, not an attention's `to_out` [Linear, Dropout] or a
    feed-forward's `net` [GELU, Dropout, Linear]."""
    entries = [child for module in denoiser.modules() if _is_block_list(module) for child in module]
    entry_ids = {id(entry) for entry in entries}
    units = [entry for entry in entries if not any(id(m) in entry_ids for m in entry.modules() if m is not entry)]
    unit_ids = {id(m) for unit in units for m in unit.modules()}
    loose = [m for m in denoiser.modules() if id(m) not in unit_ids and _holds_tensors(m)]
    return units, loose


def _is_block_list(module: nn.Module) -> bool:
    return isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1 \
        and all(next(m.children(), None) is not None for m in module)


def _holds_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or \
        any(b is not None for b in module.buffers(recurse=False))


class Materialized:
    """Tensors of modules swapped onto the device; `release` swaps the stored ones back."""

    def __init__(self, placement: Placement, modules: list[nn.Module], recurse: bool, tracker=None) -> None:
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.tracker = tracker
        seen = set()
        for module in modules:
            tensors = list(module.parameters(recurse=recurse)) + [b for b in module.buffers(recurse=recurse)
                                                                  if b is not None]
            for tensor in tensors:
                if id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                moved = placement.cast(tensor.data)
                if moved is not tensor.data:
                    self.saved.append((tensor, tensor.data))
                    tensor.data = moved
        self.bytes = sum(t.data.numel() * t.data.element_size() for t, _ in self.saved)
        if tracker is not None:
            tracker.add(self.bytes)

    def release(self) -> None:
        for tensor, stored in reversed(self.saved):
            tensor.data = stored
        self.saved.clear()
        if self.tracker is not None:
            self.tracker.add(-self.bytes)


@dataclass
class ResidentBytes:
    """Bytes of model tensors on the device now and at most (the offload's share of device memory)."""

    now: int = 0
    peak: int = 0

    def add(self, amount: int) -> None:
        self.now += amount
        self.peak = max(self.peak, self.now)


@contextlib.contextmanager
def materialized(module: nn.Module, placement: Placement | None = None) -> Iterator[nn.Module]:
    """`module` (everything inside it) on the device for the block's duration, then back as it was."""
    placement = placement or current()
    held = Materialized(placement, [module], recurse=True, tracker=_TRACKER.get())
    try:
        yield module
    finally:
        held.release()


_TRACKER: ContextVar[ResidentBytes | None] = ContextVar("diffpress_resident_bytes", default=None)


def _moved(value, placement: Placement):
    if isinstance(value, torch.Tensor):
        return placement.cast(value)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_moved(v, placement) for v in value)
    if isinstance(value, dict):
        moved = {k: _moved(v, placement) for k, v in value.items()}
        return type(value)(**moved) if type(value) is not dict else moved
    return value


def _first_floating(args, kwargs) -> torch.Tensor | None:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    return None


@contextlib.contextmanager
def placed(denoiser: nn.Module, placement: Placement, tracker: ResidentBytes | None = None) -> Iterator[Placement]:
    """Run every call of `denoiser` inside the block on `placement` (see the module docstring); `tracker`
    counts the model bytes on the device. Hooks are removed on exit, also when the block raises."""
    token, tracker_token = _CURRENT.set(placement), _TRACKER.set(tracker)
    handles = [] if placement.trivial and tracker is None else _install(denoiser, placement, tracker)
    try:
        yield placement
    finally:
        for handle in handles:
            handle.remove()
        _CURRENT.reset(token)
        _TRACKER.reset(tracker_token)


def _install(denoiser: nn.Module, placement: Placement, tracker: ResidentBytes | None) -> list:
    units, _ = offload_units(denoiser)
    unit_ids = {id(m) for unit in units for m in unit.modules()}
    calls: list[tuple[tuple[torch.device, torch.dtype] | None, Materialized]] = []

    def on_call(module, args, kwargs):
        first = _first_floating(args, kwargs)
        # the modules outside every unit, found at each call: a layer swapped in since (sensitivity) moves too
        loose = [m for m in denoiser.modules() if id(m) not in unit_ids and _holds_tensors(m)]
        calls.append(((first.device, first.dtype) if first is not None else None,
                      Materialized(placement, loose, recurse=False, tracker=tracker)))
        return _moved(args, placement), _moved(kwargs, placement)

    def on_return(module, args, output):
        if not calls:
            return output
        back, held = calls.pop()
        held.release()
        return _moved(output, Placement(back[0], back[1])) if back is not None else output

    # prepended: every other hook on the denoiser (calibration's collector) sees the arguments as it runs on them
    handles = [denoiser.register_forward_pre_hook(on_call, with_kwargs=True, prepend=True),
               denoiser.register_forward_hook(on_return), _Release(calls, lambda call: call[1])]
    for module in units:
        handles += _unit_hooks(module, placement, tracker)
    return handles


def _unit_hooks(module: nn.Module, placement: Placement, tracker: ResidentBytes | None) -> list:
    held: list[Materialized] = []

    def before(unit, args):
        held.append(Materialized(placement, [unit], True, tracker))

    def after(unit, args, output):
        if held:
            held.pop().release()

    return [module.register_forward_pre_hook(before, prepend=True), module.register_forward_hook(after),
            _Release(held)]


class _Release:
    """A handle whose remove() swaps back whatever a call that raised still holds (`held` items, or what
    `pick` finds in them)."""

    def __init__(self, held: list, pick=lambda item: item) -> None:
        self.held, self.pick = held, pick

    def remove(self) -> None:
        while self.held:
            self.pick(self.held.pop()).release()


@contextlib.contextmanager
def resident(denoiser: nn.Module, placement: Placement) -> Iterator[Placement]:
    """The whole denoiser on the device in its stored dtype for the block (work that trains through the
    weights: mask learning, recovery distillation), its calls' arguments and outputs moved as in `placed`;
    back on its own device afterwards. The compute dtype does not apply (the weights are the model's own)."""
    first = next(denoiser.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    on_device = Placement(placement.device)
    if home != on_device.device:
        denoiser.to(on_device.device)
    try:
        with placed(denoiser, on_device):
            yield on_device
    finally:
        if home != on_device.device:
            denoiser.to(home)
