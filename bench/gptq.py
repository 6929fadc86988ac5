"""GPTQ against learned rounding (and nearest): image quality and seconds at W4A8 and W4A16 (CPU).

    python bench/gptq.py --model builtin:digits [--num-samples 200]

Rows: the w4a8-int / w4a8-fp4 presets (MSE clipping, searched smoothing) and w4a16-int4 / w4a16-fp4 (MSE clipping)
with rounding nearest, learned (300 iterations per layer) and gptq (damping 0.01, with and without act
order). One calibration set (the defaults: 32 samples x 25 steps, 8 buckets, 4 calls per bucket) serves
every row; each row is `diffpress.compress` from it, timed (the quantization stage alone: the calibration
is read from disk), then `diffpress.evaluate` at identical seeds. Writes bench/results/gptq-MODEL.json.
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
    for name in ("w4a8-int", "w4a8-fp4", "w4a16-int4", "w4a16-fp4"):
        base = preset(name)
        result += [(f"{name} nearest", replace(base, rounding="nearest")),
                   (f"{name} learned", replace(base, rounding="learned")),
                   (f"{name} gptq", replace(base, rounding="gptq")),
                   (f"{name} gptq no act-order", replace(base, rounding="gptq", gptq_act_order=False))]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--only", nargs="*", help="run only rows whose label contains one of these")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="diffpress-gptq-") as temporary:
        calibration = Path(temporary) / "calibration.safetensors"
        started = time.perf_counter()
        diffpress.calibrate(args.model, out=calibration)
        calibration_seconds = time.perf_counter() - started
        for label, spec in rows():
            if args.only and not any(key in label for key in args.only):
                continue
            out = Path(temporary) / label.replace(" ", "-")
            started = time.perf_counter()
            diffpress.compress(args.model, Recipe(spec), out, calibration=calibration, checkpoint_every=None)
            seconds = time.perf_counter() - started
            evaluation = diffpress.evaluate(args.model, out, num_samples=args.num_samples)
            row = {"row": label, "recipe": spec.to_dict(), "compress_seconds": round(seconds, 1),
                   **evaluation.compressed.to_dict()}
            results.append(row)
            print(json.dumps({k: row.get(k) for k in ("row", "psnr_db", "ssim", "classifier_accuracy",
                                                      "compress_seconds")}), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"model": args.model, "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
              "date": date.today().isoformat(), "commit": commit, "command": "python bench/gptq.py " + " ".join(sys.argv[1:]),
              "calibration_seconds": round(calibration_seconds, 1), "eval_samples": args.num_samples, "rows": results}
    name = args.model.removeprefix("builtin:")
    suffix = "-partial" if args.only else ""
    (Path(__file__).parent / "results" / f"gptq-{name}{suffix}.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
