"""W4A4 (4-bit weights and 4-bit activations) on a built-in model: the method ablation behind the w4a4 presets (CPU).

    python bench/w4a4.py --model builtin:digits [--num-samples 200]

For w4a4-int (INT4 g64 weights, INT4 activations per token in groups of 64, SVDQuant's grouping) and w4a4-fp4
(FP4 e2m1 weights and activations with block-16 scales, NVFP4-style), each row adds one method to the previous:
rtn (absmax, nearest) -> + clipping (MSE) -> + smoothing (searched per layer) -> + low-rank (rank 8, high
precision) -> + GPTQ; then GPTQ without the low-rank branch, and the W4A8 preset of the same weight format for
scale. One calibration set (the defaults: 32 samples x 25 steps, 8 buckets, 4 calls per bucket) serves every row;
each row is `diffpress.compress` from it, then `diffpress.evaluate` at identical seeds. 4-bit activations run on
the reference backend. Writes bench/results/w4a4-MODEL.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

import diffpress
from diffpress.presets import preset
from diffpress.recipe import Recipe


def rows() -> list[tuple[str, object]]:
    result = []
    for name in ("w4a4-int", "w4a4-fp4"):
        rtn = preset(name + "-rtn")
        ladder = [("rtn", rtn), ("+clipping", replace(rtn, scale_method="mse"))]
        ladder.append(("+smoothing", replace(ladder[-1][1], smoothing="auto")))
        ladder.append(("+low-rank 8", replace(ladder[-1][1], low_rank=8)))
        ladder.append(("+gptq", replace(ladder[-1][1], rounding="gptq")))
        ladder.append(("gptq without low-rank", replace(ladder[2][1], rounding="gptq")))
        result += [(f"{name} {label}", spec) for label, spec in ladder]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--only", nargs="*", help="run only rows whose label contains one of these")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="diffpress-w4a4-") as temporary:
        calibration = Path(temporary) / "calibration.safetensors"
        diffpress.calibrate(args.model, out=calibration)
        for label, spec in rows():
            if args.only and not any(key in label for key in args.only):
                continue
            out = Path(temporary) / label.replace(" ", "-")
            started = time.perf_counter()
            result = diffpress.compress(args.model, Recipe(spec), out, calibration=calibration, checkpoint_every=None)
            seconds = time.perf_counter() - started
            evaluation = diffpress.evaluate(args.model, out, num_samples=args.num_samples)
            row = {"row": label, "recipe": spec.to_dict(), "compress_seconds": round(seconds, 1),
                   "denoiser_bytes": result.bytes_after, **evaluation.compressed.to_dict()}
            results.append(row)
            print(json.dumps({k: row.get(k) for k in ("row", "psnr_db", "ssim", "classifier_accuracy",
                                                      "compress_seconds", "denoiser_bytes")}), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"model": args.model, "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
              "date": date.today().isoformat(), "commit": commit,
              "command": "python bench/w4a4.py " + " ".join(sys.argv[1:]), "eval_samples": args.num_samples,
              "rows": results}
    name = args.model.removeprefix("builtin:")
    suffix = "-partial" if args.only else ""
    (Path(__file__).parent / "results" / f"w4a4-{name}{suffix}.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
