"""Shared by the method benchmarks (bench/gptq.py, bench/w4a4.py): each row a QuantSpec applied to every layer of
a built-in model from one calibration set, then evaluated against the float model at identical seeds (CPU)."""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import diffpress
from diffpress.recipe import QuantSpec, Recipe


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--only", nargs="*", help="run only rows whose label contains one of these")
    return parser.parse_args()


def measure(model: str, rows: list[tuple[str, QuantSpec]], num_samples: int, only: list[str] | None) -> list[dict]:
    """Calibrate once (the default options), then per row: `diffpress.compress` from that file (timed: the
    quantization alone) and `diffpress.evaluate`."""
    results = []
    with tempfile.TemporaryDirectory(prefix="diffpress-rows-") as temporary:
        calibration = Path(temporary) / "calibration.safetensors"
        diffpress.calibrate(model, out=calibration)
        for label, spec in rows:
            if only and not any(key in label for key in only):
                continue
            out = Path(temporary) / label.replace(" ", "-")
            started = time.perf_counter()
            result = diffpress.compress(model, Recipe(spec), out, calibration=calibration, checkpoint_every=None)
            seconds = time.perf_counter() - started
            evaluation = diffpress.evaluate(model, out, num_samples=num_samples)
            row = {"row": label, "recipe": spec.to_dict(), "compress_seconds": round(seconds, 1),
                   "denoiser_bytes": result.bytes_after, **evaluation.compressed.to_dict()}
            results.append(row)
            print(json.dumps({k: row.get(k) for k in ("row", "psnr_db", "ssim", "classifier_accuracy",
                                                      "compress_seconds", "denoiser_bytes")}), flush=True)
    return results


def write(kind: str, args: argparse.Namespace, results: list[dict]) -> Path:
    """bench/results/KIND-MODEL.json (-partial with --only)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"model": args.model, "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
              "date": date.today().isoformat(), "commit": commit,
              "command": f"python bench/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
              "eval_samples": args.num_samples, "rows": results}
    name = args.model.removeprefix("builtin:")
    path = Path(__file__).parent / "results" / f"{kind}-{name}{'-partial' if args.only else ''}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path
