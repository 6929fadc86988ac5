"""Streaming compression: calibration-free plans applied tensor by tensor, never holding the float model.

For plans that need no data (weight-only presets, round-to-nearest W8A8, a fixed rotation), each layer's
quantization depends on its own weight alone, so the model need not be loaded: the denoiser's structure is
built on the meta device from its config (to know which tensors are Linear/Conv2d weights and what each
layer's plan is), the source safetensors are read one tensor at a time (plain reads, no memory map), each planned
weight is quantized exactly as `quantize_` quantizes it in memory (`compressed_module`, so the result is
bit-identical), every other tensor is copied as it is, and the output is written in safetensors shards of
at most `shard_bytes` with a diffusers index. Peak memory: one shard being written plus one layer's float32
weight, whatever the model's size. The directory is the same format `save` writes (config.json with the
quantization_config, a manifest, the other pipeline components copied) and loads with `diffpress.load`.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, build_on_meta, read_json
from .compression.layer_records import layer_entry
from .compression.surgery import compressed_module, compressible_layers
from .compression.swap import DEFAULT_SKIP, QuantizationReport, plan_of
from .errors import InputError, IntegrityError
from .io import layers_config
from .recipe import QuantSpec, Recipe

SHARD_BYTES = 1 << 30
WEIGHTS_STEM, WEIGHTS_SUFFIX = "diffusion_pytorch_model", ".safetensors"
INDEX_NAME = f"{WEIGHTS_STEM}{WEIGHTS_SUFFIX}.index.json"


def streaming_gap(spec: QuantSpec) -> str | None:
    """Why a layer plan cannot be applied tensor by tensor, or None when it can."""
    if spec.needs_calibration:
        return f"plan '{spec.describe()}' uses calibration-driven methods"
    if spec.low_rank:
        return f"plan '{spec.describe()}' has a low-rank branch (fine in memory, not yet streamed)"
    return None


def source_files(model_dir: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file holding it: from the diffusers index when there is one, else from
    every file's header; a tensor in two files is refused."""
    index = model_dir / INDEX_NAME
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise IntegrityError(f"{index}: weight_map is not a mapping of tensor names to files")
        files = {name: model_dir / file for name, file in weight_map.items()}
        missing = sorted({p for p in files.values() if not p.is_file()})
        if missing:
            raise IntegrityError(f"{index}: names a missing shard {missing[0].name}")
        return files
    from .checkpoint import check_safetensors

    files: dict[str, Path] = {}
    for path in sorted(model_dir.glob(f"*{WEIGHTS_SUFFIX}")):
        for name in check_safetensors(path):
            if name == "__metadata__":
                continue
            if name in files:
                raise IntegrityError(f"{model_dir}: tensor {name!r} is in both {files[name].name} and {path.name}")
            files[name] = path
    return files


_SAFETENSORS_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                      torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written tensor by tensor from the tensors' own memory (safetensors' save_file builds
    a byte copy of everything first: twice the shard in memory)."""
    header, offset = {"__metadata__": metadata or {}}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * ((-len(encoded)) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for tensor in tensors.values():
            if tensor.numel():
                handle.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))


class SafetensorsReader:
    """One tensor at a time from a safetensors file by plain reads into the tensor's own memory: no memory map,
    whose touched pages would stay resident (and counted) until the whole file is closed."""

    def __init__(self, path: Path) -> None:
        from .checkpoint import _SAFETENSORS_STORAGE_DTYPES, check_safetensors

        self.path, self.header = path, check_safetensors(path)  # validated: offsets inside the file
        self.dtypes = _SAFETENSORS_STORAGE_DTYPES
        with path.open("rb") as handle:
            self.data_start = 8 + int.from_bytes(handle.read(8), "little")

    def get(self, name: str) -> torch.Tensor:
        entry = self.header[name]
        start, end = entry["data_offsets"]
        dtype = self.dtypes.get(entry["dtype"])
        if dtype is None:
            raise InputError(f"{self.path}: tensor {name!r} has dtype {entry['dtype']!r}, which diffpress does not read")
        buffer = bytearray(end - start)
        with self.path.open("rb") as handle:
            handle.seek(self.data_start + start)
            if handle.readinto(buffer) != len(buffer):
                raise IntegrityError(f"{self.path}: truncated while reading {name!r}")
        raw = torch.frombuffer(buffer, dtype=torch.uint8) if buffer else torch.empty(0, dtype=torch.uint8)
        return raw.view(dtype).reshape(entry["shape"])


class ShardWriter:
    """Tensors in, safetensors shards of at most `shard_bytes` out (a single tensor larger than that gets a
    shard of its own); `finish` names them as diffusers does and writes the index (one shard: no index)."""

    def __init__(self, directory: Path, shard_bytes: int = SHARD_BYTES) -> None:
        self.directory, self.shard_bytes = directory, shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.shard_bytes:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.directory / f".shard-{len(self.shards):05d}{WEIGHTS_SUFFIX}"
        write_safetensors(path, self.pending, metadata={"format": "pt"})
        self.shards.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[Path]:
        if self.pending or not self.shards:
            self._flush()
        count = len(self.shards)
        if count == 1:
            final = self.directory / f"{WEIGHTS_STEM}{WEIGHTS_SUFFIX}"
            self.shards[0][0].rename(final)
            return [final]
        weight_map, finals = {}, []
        for number, (path, names) in enumerate(self.shards, start=1):
            final = self.directory / f"{WEIGHTS_STEM}-{number:05d}-of-{count:05d}{WEIGHTS_SUFFIX}"
            path.rename(final)
            finals.append(final)
            weight_map.update(dict.fromkeys(names, final.name))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return finals


@dataclass
class StreamedModel:
    report: QuantizationReport
    bytes_before: int
    bytes_after: int
    dtype: torch.dtype  # the float dtype most of the source's elements are stored in
    layers: dict[str, dict]  # the quantization_config layer plan


def stream_model(source: Checkpoint, recipe: Recipe, directory: Path, shard_bytes: int = SHARD_BYTES,
                 progress: bool = False, extra: dict | None = None) -> StreamedModel:
    """Write `source`'s denoiser, quantized with `recipe`, into `directory` (weights and config.json, whose
    quantization_config gets `extra`)."""
    meta = build_on_meta(source)
    report, plans = _plans(meta, recipe)
    stored = source_files(source.denoiser_dir)
    expected = set(meta.state_dict())
    absent = sorted(expected - set(stored))
    if absent:
        raise IntegrityError(f"{source.denoiser_dir}: the weights have no tensor {absent[0]!r} ({len(absent)} of the "
                             "model's tensors missing)")
    files = {name: path for name, path in stored.items() if name in expected}  # others: not the model's, as diffusers
    weights = {f"{fqn}.weight": fqn for fqn in plans}
    writer, layers, counts, bytes_before = ShardWriter(directory, shard_bytes), {}, {}, 0
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    with tqdm(total=len(files), desc="stream", unit="tensor", disable=not progress) as bar:
        for path, names in by_file.items():
            reader = SafetensorsReader(path)
            for name in names:
                tensor = reader.get(name)
                bytes_before += tensor.numel() * tensor.element_size()
                if tensor.is_floating_point():
                    counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
                if name in weights:
                    fqn = weights[name]
                    quantized = _quantized(plans[fqn], tensor)
                    layers[fqn] = layer_entry(quantized)
                    for key, value in quantized.state_dict().items():
                        if key != "bias":  # the source's own bias tensor is copied as it is
                            writer.add(f"{fqn}.{key}", value)
                else:
                    writer.add(name, tensor)
                del tensor
                bar.update()
    writer.finish()
    report.quantized.extend(plans)
    dtype = max(counts, key=counts.get) if counts else torch.float32
    _write_config(meta, directory, layers_config(layers, dtype, {**(extra or {}), "skipped": report.skipped}))
    return StreamedModel(report, bytes_before, writer.total_bytes, dtype, layers)


def _write_config(meta: nn.Module, directory: Path, quantization: dict) -> None:
    meta.save_config(directory)
    config = read_json(directory / "config.json")
    config["quantization_config"] = quantization
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _plans(meta: nn.Module, recipe: Recipe) -> tuple[QuantizationReport, dict[str, tuple[nn.Module, QuantSpec]]]:
    skip = DEFAULT_SKIP if recipe.keep_default_skips else ()
    report, plans = QuantizationReport(), {}
    for fqn, module in compressible_layers(meta):
        plan, reason = plan_of(recipe, fqn, skip, module)
        if plan is None:
            report.skipped[fqn] = reason
            continue
        gap = streaming_gap(plan)
        if gap:
            raise InputError(f"{fqn}: {gap}; streaming applies calibration-free plans only (weight-only presets, "
                             "round-to-nearest W8A8): compress without --stream", "stream")
        plans[fqn] = (module, plan)
    if not plans:
        raise InputError("no layer to quantize (every Linear/Conv2d is on the skip list)", "plan")
    return report, plans


def _quantized(plan: tuple[nn.Module, QuantSpec], weight: torch.Tensor) -> nn.Module:
    """The layer quantized from its stored weight alone, as `quantize_` would (the bias is not needed)."""
    meta_module, spec = plan
    if tuple(weight.shape) != tuple(meta_module.weight.shape):
        raise IntegrityError(f"weight of shape {tuple(weight.shape)} where the config builds "
                             f"{tuple(meta_module.weight.shape)}")
    module = copy.copy(meta_module)  # shallow: the same attributes, its own parameter slots
    module._parameters = dict(meta_module._parameters)
    module.weight = nn.Parameter(weight, requires_grad=False)
    module.bias = None
    return compressed_module(module, spec)
