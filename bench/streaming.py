"""Streaming compression of a FLUX.1-dev-size transformer (12B parameters) on this CPU machine.

    python bench/streaming.py --work /path/with/60GB [--presets w8a16-int8 w8a8-fp8] [--keep-source]

1. Writes the source: `FluxTransformer2DModel` with FLUX.1-dev's published config (19 double-stream and 38
   single-stream blocks, 24 heads of 128, joint attention width 4096, guidance embedding), random bf16 weights
   (normal, std 0.02; biases and norms likewise: each tensor a slice, at a random offset, of one pool of 2^27
   normal draws, which is as good as fresh draws for what is measured here and 30x faster to write), tensor
   by tensor into 2 GiB safetensors shards with a diffusers index, never holding the model (built on the
   meta device for its names and shapes).
2. Per preset, `diffpress compress WORK/flux-dev --preset P --stream --out WORK/out-P` in a fresh process:
   wall time and the process's peak RSS (VmHWM from /proc, kernel-measured, since the process started).
3. Verifies the output tensor by tensor, streaming both sides: every source tensor is in the output (as itself,
   or as its layer's packed weight), every quantized layer dequantizes (reference path) to within the
   format's error of its source weight (SQNR per layer: min and mean reported), and `diffpress.load`'s
   manifest check passes (sha256 of every file).
Writes bench/results/scale-streaming.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

FLUX_DEV = {"_class_name": "FluxTransformer2DModel", "attention_head_dim": 128, "guidance_embeds": True,
            "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
            "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768, "axes_dims_rope": [16, 56, 56]}
RESULTS = Path(__file__).parent / "results"


def write_source(directory: Path) -> dict:
    """The random bf16 FLUX.1-dev-size checkpoint; returns its parameter count, bytes and seconds."""
    from diffusers import FluxTransformer2DModel

    from diffpress.streaming import ShardWriter

    directory.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        meta = FluxTransformer2DModel.from_config(FLUX_DEV)
    meta.save_config(directory)
    started, count = time.perf_counter(), 0
    writer = ShardWriter(directory, 2 << 30)
    generator = torch.Generator().manual_seed(0)
    pool = (torch.randn(1 << 27, generator=generator) * 0.02).to(torch.bfloat16)
    for name, tensor in meta.state_dict().items():
        writer.add(name, _slice_of(pool, tensor.numel(), generator).reshape(tensor.shape))
        count += tensor.numel()
    writer.finish()
    return {"parameters": count, "bytes": writer.total_bytes, "seconds": round(time.perf_counter() - started, 1)}


def _slice_of(pool: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` values of `pool` from a random offset, wrapping around (a copy)."""
    start = int(torch.randint(0, len(pool), (1,), generator=generator))
    parts, remaining = [], count
    while remaining:
        piece = pool[start:start + remaining]
        parts.append(piece)
        remaining -= len(piece)
        start = 0
    return torch.cat(parts) if len(parts) > 1 else parts[0].clone()


CHILD = """
import sys, time
from diffpress.api import compress
started = time.perf_counter()
result = compress(sys.argv[1], sys.argv[2], sys.argv[3], stream=True, overwrite=True)
# VmHWM: this process's own peak RSS since exec (getrusage's ru_maxrss would include the parent's memory
# at fork time, which Linux carries across exec)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("RESULT", time.perf_counter() - started, peak_kb,
      len(result.report.quantized), len(result.report.skipped), result.bytes_before, result.bytes_after)
"""


def compress_in_child(source: Path, preset: str, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(source), preset, str(out)], capture_output=True,
                          text=True, check=True)
    fields = next(line for line in done.stdout.splitlines() if line.startswith("RESULT")).split()[1:]
    seconds, rss_kb, quantized, skipped, before, after = float(fields[0]), *map(int, fields[1:])
    return {"preset": preset, "seconds": round(seconds, 1), "peak_rss_gib": round(rss_kb / 2**20, 2),
            "layers_quantized": quantized, "layers_skipped": skipped, "bytes_before": before, "bytes_after": after}


def verify(source: Path, out: Path) -> dict:
    """Every source tensor accounted for; each quantized layer's dequantized weight against its source."""
    from diffpress.checkpoint import read_json
    from diffpress.formats import Granularity, QuantFormat
    from diffpress.io import verify_manifest
    from diffpress.kernels.layout import PackedWeight
    from diffpress.kernels.reference import dequantize_weight
    from diffpress.metrics import sqnr_db
    from diffpress.streaming import source_files

    started = time.perf_counter()
    verify_manifest(out)
    layers = read_json(out / "config.json")["quantization_config"]["layers"]
    produced, expected = source_files(out), source_files(source)
    unaccounted = [name for name in expected if name not in produced
                   and not (name.endswith(".weight") and name[:-len(".weight")] in layers)]
    sqnr, identical = [], 0
    for name, path in expected.items():
        layer = name[:-len(".weight")] if name.endswith(".weight") else None
        original = _read(expected, name)
        if layer in layers:
            entry = layers[layer]
            get = lambda key: _read(produced, f"{layer}.{key}")
            zero_points = get("zero_points") if f"{layer}.zero_points" in produced else None
            shape = (original.shape[0], original[0].numel())
            packed = PackedWeight(get("qdata"), get("scales"), QuantFormat(entry["weight_format"]),
                                  Granularity(entry["granularity"]), entry.get("group_size"), shape, zero_points)
            sqnr.append(sqnr_db(original.float().reshape(shape), dequantize_weight(packed)))
        elif name in produced:
            identical += torch.equal(_read(produced, name), original)
    return {"seconds": round(time.perf_counter() - started, 1), "manifest_verified": True,
            "source_tensors": len(expected), "unaccounted": len(unaccounted),
            "passed_through_identical": identical, "passed_through": len(expected) - len(sqnr),
            "quantized_layers_checked": len(sqnr), "weight_sqnr_db_min": round(min(sqnr), 2),
            "weight_sqnr_db_mean": round(sum(sqnr) / len(sqnr), 2)}


def _read(files: dict, name: str) -> torch.Tensor:
    from diffpress.streaming import SafetensorsReader

    return SafetensorsReader(files[name]).get(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a directory with ~60 GB free")
    parser.add_argument("--presets", nargs="+", default=["w8a16-int8", "w8a8-fp8"])
    parser.add_argument("--keep-source", action="store_true", help="reuse WORK/flux-dev if it is there, keep it")
    parser.add_argument("--no-verify", action="store_true", help="skip the tensor-by-tensor verification")
    args = parser.parse_args()
    source = args.work / "flux-dev"
    written = None
    if not (args.keep_source and (source / "config.json").is_file()):
        shutil.rmtree(source, ignore_errors=True)
        written = write_source(source)
        print(json.dumps({"source": written}), flush=True)
    runs = []
    for preset in args.presets:
        out = args.work / f"out-{preset}"
        run = compress_in_child(source, preset, out)
        run["verification"] = None if args.no_verify else verify(source, out)
        runs.append(run)
        print(json.dumps(run), flush=True)
        shutil.rmtree(out)
    if not args.keep_source:
        shutil.rmtree(source)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads), "
                        f"{round(_memory_gib())} GiB RAM", "date": date.today().isoformat(), "commit": commit,
              "command": "python bench/streaming.py --work WORK " + " ".join(["--presets", *args.presets])
                         + (" --no-verify" if args.no_verify else ""),
              "model": "FluxTransformer2DModel, FLUX.1-dev config, random bf16 weights", "config": FLUX_DEV,
              "source": written, "target_peak_rss_gib": 3, "runs": runs,
              "bench_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    previous = RESULTS / "scale-streaming.json"
    if args.no_verify and previous.is_file():  # keep the verification of an earlier run of the same code
        report["verified_by"] = {k: json.loads(previous.read_text()).get(k) for k in ("command", "commit", "runs")}
    (RESULTS / "scale-streaming.json").write_text(json.dumps(report, indent=1) + "\n")


def _memory_gib() -> float:
    with open("/proc/meminfo") as handle:
        return int(handle.readline().split()[1]) / 2**20


if __name__ == "__main__":
    main()
