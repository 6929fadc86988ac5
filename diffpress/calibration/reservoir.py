"""A bounded, seeded reservoir of denoiser calls (their inputs) per timestep bucket.

An entry holds every tensor argument of one denoiser call (x_t, t, conditioning: the whole batch,
so classifier-free-guidance batches stay paired) and its JSON-able non-tensor arguments, enough to
replay the call with `denoiser(**entry.call_kwargs())`. With `spill_dir`, kept entries live on disk
as safetensors shards and only their paths stay in memory.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import InputError
from .strategies import Strategy, StrategyName, eda_features, eda_select


@dataclass
class ReservoirEntry:
    call_index: int  # position of the call in the run (0-based)
    timestep: float
    bucket: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    static: dict = field(default_factory=dict)  # non-tensor arguments that are JSON-able
    path: Path | None = None  # set when spilled to disk

    def load(self) -> "ReservoirEntry":
        if self.path is not None and not self.tensors:
            self.tensors = load_file(self.path)
        return self

    def call_kwargs(self) -> dict:
        self.load()
        return {**self.static, **self.tensors}

    def header(self) -> dict:
        return {"call_index": self.call_index, "timestep": self.timestep, "bucket": self.bucket, "static": self.static}


def split_arguments(arguments: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensor arguments (copied to the CPU: a reservoir never holds device memory) and JSON-able others;
    anything else (callables, dicts of tensors) is dropped."""
    tensors, static = {}, {}
    for name, value in arguments.items():
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        elif value is None or isinstance(value, (bool, int, float, str)):
            static[name] = value
    return tensors, static


def selection_key(seed: int, call_index: int, purpose: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, call, purpose): which process saw the call, and
    in what order, does not change it."""
    digest = hashlib.blake2b(f"{seed}/{call_index}/{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2 ** 64


class Reservoir:
    """Per-bucket bounded sample of calls, chosen by a Strategy: a call is a candidate with the strategy's
    probability for its timestep (decided by a key of the call), and each bucket keeps the `pool_size`
    candidates with the smallest keep-keys -- a uniform sample of the candidates, and one that merges
    exactly: the pool of two runs' pools is the pool of the combined run (`merge`)."""

    def __init__(self, size: int, strategy: Strategy, seed: int, spill_dir: Path | None = None) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InputError(f"reservoir_size must be an integer >= 0, got {size!r}", "reservoir_size")
        self.size, self.strategy, self.spill_dir, self.seed = size, strategy, spill_dir, seed
        self.kept: dict[int, list[ReservoirEntry]] = {}
        self.seen: dict[int, int] = {}
        if spill_dir is not None:
            Path(spill_dir).mkdir(parents=True, exist_ok=True)

    def keep_key(self, entry: ReservoirEntry) -> float:
        return selection_key(self.seed, entry.call_index, "keep")

    def offer(self, call_index: int, timestep: float, t_normalized: float, bucket: int, arguments: dict) -> None:
        """Consider one call; `arguments` are only copied if the call is kept."""
        candidate = selection_key(self.seed, call_index, "candidate")
        if self.size == 0 or candidate >= self.strategy.candidate_probability(t_normalized):
            return
        capacity = self.strategy.pool_size(self.size)
        self.seen[bucket] = self.seen.get(bucket, 0) + 1
        kept = self.kept.setdefault(bucket, [])
        if len(kept) < capacity:
            kept.append(self._entry(call_index, timestep, bucket, arguments))
            return
        worst = max(range(len(kept)), key=lambda i: self.keep_key(kept[i]))
        if selection_key(self.seed, call_index, "keep") < self.keep_key(kept[worst]):
            self._discard(kept[worst])
            kept[worst] = self._entry(call_index, timestep, bucket, arguments)

    def merge(self, kept: dict[int, list[ReservoirEntry]], seen: dict[int, int]) -> None:
        """Take another run's pools (entries with their tensors) and counts: per bucket, the pool_size entries
        with the smallest keep-keys of both."""
        capacity = self.strategy.pool_size(self.size)
        for bucket, entries in kept.items():
            pool = self.kept.get(bucket, []) + list(entries)
            pool.sort(key=self.keep_key)
            for dropped in pool[capacity:]:
                self._discard(dropped)
            self.kept[bucket] = pool[:capacity]
        for bucket, count in seen.items():
            self.seen[bucket] = self.seen.get(bucket, 0) + count

    def _entry(self, call_index, timestep, bucket, arguments) -> ReservoirEntry:
        tensors, static = split_arguments(arguments)
        entry = ReservoirEntry(call_index, timestep, bucket, tensors, static)
        if self.spill_dir is not None:
            entry.path = Path(self.spill_dir) / f"call-{call_index:07d}.safetensors"
            save_file(tensors, entry.path)
            entry.tensors = {}
        return entry

    @staticmethod
    def _discard(entry: ReservoirEntry) -> None:
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)

    def finalize(self) -> dict[int, list[ReservoirEntry]]:
        """The kept entries per bucket, in call order (EDA-DM selection applied here)."""
        result = {}
        for bucket, entries in sorted(self.kept.items()):
            entries = sorted(entries, key=lambda e: e.call_index)  # EDA's greedy choice reads them in call order
            if self.strategy.name is StrategyName.EDA and len(entries) > self.size:
                entries = self._eda(entries)
            result[bucket] = sorted(entries, key=lambda e: e.call_index)
        return result

    def _eda(self, entries: list[ReservoirEntry]) -> list[ReservoirEntry]:
        features = torch.stack([eda_features(_first_tensor(e.load())) for e in entries])
        s = self.strategy
        chosen = set(eda_select(features, self.size, s.eda_neighbors, s.eda_diversity_weight))
        for index, entry in enumerate(entries):
            if index not in chosen:
                self._discard(entry)
        return [entry for index, entry in enumerate(entries) if index in chosen]


def _first_tensor(entry: ReservoirEntry) -> torch.Tensor:
    """The call's x_t: `sample` (UNets) or `hidden_states` (transformers), else the first tensor."""
    for name in ("sample", "hidden_states"):
        if name in entry.tensors:
            return entry.tensors[name]
    return next(iter(entry.tensors.values()))
