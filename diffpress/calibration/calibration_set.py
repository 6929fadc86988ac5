"""CalibrationSet: per (layer, bucket) ActStats + recorded timesteps + the input reservoir.

On disk: FILE (safetensors) holds the statistics, with the bucket definition, recorded
timesteps and reservoir index as JSON in its metadata; each bucket's reservoir entries go to a
shard beside it, `FILE.reservoir-BBB.safetensors`. Files are written to a temporary name and
renamed, shards first, so a reader never sees a main file whose shards are missing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import DiffpressError, InputError, one_line
from .buckets import TimestepBuckets
from .reservoir import ReservoirEntry
from .stats import ActStats

FORMAT = "diffpress-calibration"
FORMAT_VERSION = 1
_SEP = "::"


@dataclass
class CalibrationSet:
    buckets: TimestepBuckets
    stats: dict[tuple[str, int], ActStats]
    timesteps: list[float]
    reservoir: dict[int, list[ReservoirEntry]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return sorted({layer for layer, _ in self.stats})

    def layer_stats(self, layer: str) -> dict[int, ActStats]:
        """bucket -> stats of one layer."""
        return {bucket: stats for (name, bucket), stats in sorted(self.stats.items()) if name == layer}

    def entries(self, per_bucket: int | None = None) -> list[ReservoirEntry]:
        """The reservoir's calls, bucket by bucket (at most `per_bucket` from each)."""
        return [entry for bucket in sorted(self.reservoir) for entry in self.reservoir[bucket][:per_bucket]]

    def merged_over_buckets(self, layer: str) -> ActStats:
        per_bucket = list(self.layer_stats(layer).values())
        total = per_bucket[0]
        for stats in per_bucket[1:]:
            total = total.merge(stats)
        return total

    def merge(self, other: "CalibrationSet") -> "CalibrationSet":
        """Combine two runs (e.g. two processes): stats merged, timesteps and reservoirs concatenated."""
        if other.buckets != self.buckets:
            raise InputError(f"cannot merge calibration sets with different buckets: {self.buckets} vs {other.buckets}",
                             "calibration")
        stats = dict(self.stats)
        for key, value in other.stats.items():
            stats[key] = stats[key].merge(value) if key in stats else value
        reservoir = {b: self.reservoir.get(b, []) + other.reservoir.get(b, [])
                     for b in sorted(set(self.reservoir) | set(other.reservoir))}
        return CalibrationSet(self.buckets, stats, self.timesteps + other.timesteps, reservoir, dict(self.info))

    # ------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for bucket, entries in self.reservoir.items():
            tensors = {f"{e.call_index}{_SEP}{name}": t for e in entries for name, t in e.load().tensors.items()}
            _atomic_save(tensors, _shard_path(path, bucket), {"format": FORMAT})
        tensors = {f"{layer}{_SEP}{bucket}{_SEP}{name}": t.contiguous()
                   for (layer, bucket), stats in self.stats.items() for name, t in stats.tensors().items()}
        metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                    "buckets": json.dumps({"num_buckets": self.buckets.num_buckets,
                                           "timestep_range": self.buckets.timestep_range}),
                    "timesteps": json.dumps(self.timesteps), "info": json.dumps(self.info),
                    "reservoir": json.dumps({str(b): [e.header() for e in es] for b, es in self.reservoir.items()})}
        _atomic_save(tensors, path, metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationSet":
        """Read a set written by `save`; InputError (naming the `calibration` option) for anything else."""
        try:
            return cls._load(Path(path))
        except InputError as error:
            raise InputError(str(error), "calibration") from None

    @classmethod
    def _load(cls, path: Path) -> "CalibrationSet":
        if not path.is_file():
            raise InputError(f"{path}: no such calibration file")
        from ..checkpoint import check_safetensors

        check_safetensors(path)
        try:
            return cls._parse(path)
        except DiffpressError:
            raise
        except (SafetensorError, KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as error:
            raise InputError(f"{path}: corrupt diffpress calibration file ({type(error).__name__}: "
                             f"{one_line(error)})") from None

    @classmethod
    def _parse(cls, path: Path) -> "CalibrationSet":
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise InputError(f"{path}: not a diffpress calibration file")
            grouped: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
            for key in handle.keys():
                layer, bucket, name = key.rsplit(_SEP, 2)
                grouped.setdefault((layer, int(bucket)), {})[name] = handle.get_tensor(key)
        stats = {key: ActStats.from_tensors(tensors) for key, tensors in grouped.items()}
        buckets = TimestepBuckets(**json.loads(metadata["buckets"]))
        reservoir = _load_reservoir(path, json.loads(metadata["reservoir"]))
        return cls(buckets, stats, json.loads(metadata["timesteps"]), reservoir, json.loads(metadata["info"]))

    def equal(self, other: "CalibrationSet") -> bool:
        """Identical statistics, timesteps and reservoir tensors."""
        if (self.buckets, self.timesteps, set(self.stats)) != (other.buckets, other.timesteps, set(other.stats)):
            return False
        if not all(self.stats[k].equal(other.stats[k]) for k in self.stats):
            return False
        mine, theirs = _flat_reservoir(self), _flat_reservoir(other)
        return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def _flat_reservoir(calibration: CalibrationSet) -> dict:
    return {(b, e.call_index, name): t for b, es in calibration.reservoir.items()
            for e in es for name, t in e.load().tensors.items()}


def _shard_path(path: Path, bucket: int) -> Path:
    return path.with_name(f"{path.name}.reservoir-{bucket:03d}.safetensors")


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    from ..outputs import write_file_atomically

    write_file_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


def _load_reservoir(path: Path, index: dict) -> dict[int, list[ReservoirEntry]]:
    reservoir = {}
    for bucket_key, headers in index.items():
        bucket = int(bucket_key)
        shard = _shard_path(path, bucket)
        if not shard.is_file():
            raise InputError(f"{shard}: reservoir shard missing (it is written beside {path.name})")
        from ..checkpoint import check_safetensors

        check_safetensors(shard)
        with safe_open(str(shard), framework="pt") as handle:
            tensors: dict[int, dict[str, torch.Tensor]] = {}
            for key in handle.keys():
                call, name = key.split(_SEP, 1)
                tensors.setdefault(int(call), {})[name] = handle.get_tensor(key)
        reservoir[bucket] = [ReservoirEntry(h["call_index"], h["timestep"], h["bucket"],
                                            tensors.get(h["call_index"], {}), h["static"]) for h in headers]
    return reservoir
