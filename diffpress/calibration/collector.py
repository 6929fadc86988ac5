"""Hook a denoiser, read each call's timestep by value, and record per-layer input statistics.

A forward pre-hook on the denoiser binds the call's arguments to its forward signature and reads
`timestep` (SD passes it positionally, PixArt and SD3 by keyword, FLUX as timestep / 1000; with
classifier-free guidance the batch is doubled or the denoiser is called twice: either way every
call is read). Forward pre-hooks on every nn.Linear and nn.Conv2d inside the denoiser add the
input's statistics to the current (layer, bucket). All hooks are removed on exit, also when the
run raises.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from .. import distributed
from ..errors import DiffpressError
from .buckets import TimestepBuckets
from .calibration_set import CalibrationSet
from .reservoir import Reservoir, ReservoirEntry
from .stats import ActStats
from .strategies import Strategy

DENOISER_ATTRIBUTES = ("transformer", "unet")
_SEP = "::"
CALLS_PER_BATCH = 1 << 20  # call ids: batch * CALLS_PER_BATCH + the call's position in its batch


class CalibrationError(DiffpressError):
    """Calibration data is unusable: non-finite activations, no denoiser, nothing recorded."""


def find_denoiser(pipe_or_denoiser) -> nn.Module:
    """The pipeline's `transformer` or `unet`, or the module itself."""
    if isinstance(pipe_or_denoiser, nn.Module):
        return pipe_or_denoiser
    for name in DENOISER_ATTRIBUTES:
        module = getattr(pipe_or_denoiser, name, None)
        if isinstance(module, nn.Module):
            return module
    raise CalibrationError(f"{type(pipe_or_denoiser).__name__} has no denoiser: expected an nn.Module or a "
                           f"pipeline with a 'transformer' or 'unet' component")


def default_timestep_range(denoiser: nn.Module, pipe=None) -> float:
    """FLUX-family transformers receive timestep / 1000, everything else the scheduler's timestep."""
    if type(denoiser).__name__.startswith("Flux"):
        return 1.0
    scheduler = getattr(pipe, "scheduler", None)
    return float(getattr(getattr(scheduler, "config", None), "num_train_timesteps", 1000) or 1000)


class Collector:
    """Context manager: `with Collector(denoiser, ...) as calib: run(); calib.result` is a CalibrationSet."""

    def __init__(self, denoiser: nn.Module, buckets: TimestepBuckets, strategy: Strategy,
                 reservoir_size: int = 8, seed: int = 0, spill_dir: Path | None = None) -> None:
        self.denoiser, self.buckets, self.strategy, self.seed = denoiser, buckets, strategy, seed
        self.reservoir = Reservoir(reservoir_size, strategy, seed, spill_dir)
        self.signature = inspect.signature(denoiser.forward)
        self.stats: dict[tuple[str, int], ActStats] = {}
        self.timesteps: list[float] = []
        self.call_ids: list[int] = []  # the id of each recorded call (timesteps[i] is call call_ids[i]'s)
        self.batch, self.position = 0, 0
        self.result: CalibrationSet | None = None
        self._handles: list = []
        self._current: tuple[float, int] | None = None

    def __enter__(self) -> "Collector":
        self._handles.append(self.denoiser.register_forward_pre_hook(self._on_denoiser_call, with_kwargs=True))
        self._handles.append(self.denoiser.register_forward_hook(self._on_denoiser_return))
        for name, module in self.denoiser.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module.weight.numel():  # zero width: fully pruned
                channel_dim = 1 if isinstance(module, nn.Conv2d) else -1
                self._handles.append(module.register_forward_pre_hook(self._layer_hook(name, channel_dim)))
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._current = None
        if exc_type is None:
            if distributed.active():
                self._merge_ranks()
            self.result = self._build()

    def begin_batch(self, index: int) -> None:
        """The calls that follow are batch `index`'s (their ids, and so the reservoir's choice, depend on the
        batch and the position in it, not on which process runs it)."""
        self.batch, self.position = index, 0

    def _merge_ranks(self) -> None:
        """Every rank's statistics, timesteps and reservoir pools, merged in rank order on every rank."""
        pools = {b: [_portable(e) for e in entries] for b, entries in self.reservoir.kept.items()}
        parts = distributed.gather((self.stats, self.timesteps, self.call_ids, pools, self.reservoir.seen))
        mine = distributed.rank()
        for index, (stats, timesteps, call_ids, kept, seen) in enumerate(parts):
            if index == mine:
                continue
            for key, value in stats.items():
                self.stats[key] = self.stats[key].merge(value) if key in self.stats else value
            self.timesteps, self.call_ids = self.timesteps + timesteps, self.call_ids + call_ids
            self.reservoir.merge(kept, seen)
        ordered = sorted(range(len(self.call_ids)), key=self.call_ids.__getitem__)
        self.timesteps = [self.timesteps[i] for i in ordered]
        self.call_ids = [self.call_ids[i] for i in ordered]

    def _on_denoiser_call(self, module, args, kwargs):
        arguments = self.signature.bind(*args, **kwargs).arguments
        timestep = timestep_value(arguments.get("timestep"))
        bucket = self.buckets.bucket_of(timestep)
        self._current = (timestep, bucket)
        call_id = self.batch * CALLS_PER_BATCH + self.position
        self.position += 1
        self.reservoir.offer(call_id, timestep, self.buckets.normalize(timestep), bucket, arguments)
        self.timesteps.append(timestep)
        self.call_ids.append(call_id)

    def _on_denoiser_return(self, module, args, output):
        self._current = None

    def _layer_hook(self, name: str, channel_dim: int):
        def hook(module, args):
            if self._current is None or not args or not isinstance(args[0], torch.Tensor):
                return
            x = args[0]
            timestep, bucket = self._current
            stats = ActStats.from_input(x, channel_dim).cpu()  # kept on the CPU whatever device the call runs on
            if not torch.isfinite(stats.channel_absmax).all():  # NaN and Inf reach the channel maxima
                raise CalibrationError(f"non-finite values (NaN/Inf) in the input of layer {name!r} "
                                       f"at timestep {timestep:g}")
            previous = self.stats.get((name, bucket))
            self.stats[(name, bucket)] = stats if previous is None else previous.merge(stats)
        return hook

    # ------------------------------------------------------------ checkpoints (diffpress.resume)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything recorded so far, as tensors and JSON: `restore` continues from it exactly."""
        tensors = {_SEP.join(("stats", layer, str(bucket), name)): t
                   for (layer, bucket), stats in self.stats.items() for name, t in stats.tensors().items()}
        kept = {}
        for bucket, entries in self.reservoir.kept.items():
            kept[str(bucket)] = [entry.header() for entry in entries]
            for entry in entries:
                tensors.update({_SEP.join(("reservoir", str(entry.call_index), name)): t
                                for name, t in entry.load().tensors.items()})
        meta = {"timesteps": self.timesteps, "call_ids": self.call_ids, "kept": kept,
                "seen": {str(b): n for b, n in self.reservoir.seen.items()}}
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        grouped: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        calls: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            kind, _, rest = key.partition(_SEP)
            if kind == "stats":
                layer, bucket, name = rest.rsplit(_SEP, 2)
                grouped.setdefault((layer, int(bucket)), {})[name] = tensor
            elif kind == "reservoir":
                call, name = rest.split(_SEP, 1)
                calls.setdefault(int(call), {})[name] = tensor
        self.stats = {key: ActStats.from_tensors(fields) for key, fields in grouped.items()}
        self.timesteps = list(meta["timesteps"])
        self.call_ids = list(meta.get("call_ids", range(len(self.timesteps))))
        self.reservoir.kept = {int(b): [ReservoirEntry(h["call_index"], h["timestep"], h["bucket"],
                                                       calls.get(h["call_index"], {}), h["static"]) for h in headers]
                               for b, headers in meta["kept"].items()}
        self.reservoir.seen = {int(b): n for b, n in meta["seen"].items()}

    def _build(self) -> CalibrationSet:
        if not self.timesteps:
            raise CalibrationError("no denoiser call was recorded inside the calibration block")
        return CalibrationSet(self.buckets, self.stats, self.timesteps, self.reservoir.finalize(),
                              {"strategy": self.strategy.name.value, "seed": self.seed,
                               "denoiser": type(self.denoiser).__name__})


def _portable(entry: ReservoirEntry) -> ReservoirEntry:
    """The entry with its tensors in memory (a spilled one read back), to send to another process."""
    return ReservoirEntry(entry.call_index, entry.timestep, entry.bucket, dict(entry.load().tensors), entry.static)


def timestep_value(timestep) -> float:
    if timestep is None:
        raise CalibrationError("the denoiser call has no 'timestep' argument; pass timestep to the denoiser")
    values = torch.as_tensor(timestep).detach().float().flatten()
    if values.numel() == 0 or not torch.all(values == values[0]):
        raise CalibrationError(f"calibration needs one timestep per denoiser call, got {values.tolist()}")
    return float(values[0])
