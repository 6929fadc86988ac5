"""The verbs behind the CLI: each takes paths and options, returns a result object, prints nothing."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as checkpoints
from . import io
from .compress.swap import QuantizationReport, quantize_
from .errors import InputError
from .recipe import preset


@dataclass
class CompressionResult:
    model_class: str
    out: Path
    preset: str
    report: QuantizationReport
    bytes_before: int
    bytes_after: int
    seconds: float


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer (what the safetensors file holds)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def compress(model: str | Path, preset_name: str, out: str | Path, overwrite: bool = False,
             progress: bool = False) -> CompressionResult:
    """Quantize the denoiser of MODEL with a preset and save it to `out` (atomically)."""
    started = time.perf_counter()
    spec = preset(preset_name)
    source = checkpoints.resolve(model)
    _refuse_compressed(source)
    io.check_output(Path(out), overwrite, (source.root,))
    denoiser = checkpoints.load_denoiser(source)
    bytes_before = tensor_bytes(denoiser)
    with torch.no_grad():
        report = quantize_(denoiser, spec, progress=progress)
    if not report.quantized:
        raise InputError(f"{source.denoiser_dir}: no layer to quantize (every Linear/Conv2d is on the skip list)")
    saved = io.save(denoiser, out, source=source, overwrite=overwrite,
                    extra={"preset": preset_name, "skipped": report.skipped})
    return CompressionResult(type(denoiser).__name__, saved, preset_name, report, bytes_before,
                             tensor_bytes(denoiser), time.perf_counter() - started)


def _refuse_compressed(source: checkpoints.Checkpoint) -> None:
    config = checkpoints.read_json(source.denoiser_dir / "config.json")
    if "quantization_config" in config:
        raise InputError(f"{source.denoiser_dir}: already compressed; load it with diffpress.load, "
                         "or compress the original checkpoint")
