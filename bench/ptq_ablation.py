"""PTQ method ablation on the built-in model (CPU), measured with the eval harness's metrics.

    python bench/ptq_ablation.py [--num-samples 200]     # bench/results/ptq-ablation-digits.json

For w4a8-int (INT4 g128 weights, INT8 per-token activations) and w4a8-fp4 (FP4 block-16 weights,
FP8 activations), each row adds one method to the previous: rtn (absmax, nearest) -> + clipping
(MSE scale search) -> + smoothing (searched per layer) -> + reconstruction (learned rounding) ->
+ low-rank (rank 8); "+shortcut split" adds shortcut splitting to the reconstruction row; "+block reconstruction"
replaces the layer-wise learned rounding of that row with block-wise (BRECQ). Then
W8A8 INT8/FP8 with and without smoothing, and with static per-bucket activation scales with and
without shortcut splitting (where Q-Diffusion found splitting matters most). One calibration set
(32 samples x 25 steps, 8 buckets, 4 calls kept per bucket, seed 0) serves every row; reference
and compressed samples share labels, seeds and noise; the reference is sampled once.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import subprocess
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

from diffpress.checkpoint import load_pipeline
from diffpress.metrics import state_bytes as tensor_bytes
from diffpress.calibration import calibrate
from diffpress.compression.ptq import quantize_model
from diffpress.evaluation import EvalSettings, _labels_and_noise, _sample, _side
from diffpress.presets import preset
from diffpress.recipe import QuantSpec, Recipe
from diffpress.zoo import BUILTINS
from diffpress.zoo.digits import load_eval_kit


def ladders() -> list[tuple[str, QuantSpec]]:
    rows = []
    for name in ("w4a8-int", "w4a8-fp4"):
        rtn = preset(name + "-rtn")
        steps = [("rtn", rtn), ("+clipping", replace(rtn, scale_method="mse"))]
        steps.append(("+smoothing", replace(steps[-1][1], smoothing="auto")))
        steps.append(("+reconstruction", replace(steps[-1][1], rounding="learned")))
        steps.append(("+low-rank", replace(steps[-1][1], low_rank=8)))
        steps.append(("+shortcut split", replace(steps[-2][1], split_shortcuts=True)))
        steps.append(("+block reconstruction", replace(steps[2][1], rounding="block")))
        rows += [(f"{name} {label}", spec) for label, spec in steps]
    for name in ("w8a8-int8", "w8a8-fp8"):
        rows += [(f"{name} rtn", preset(name + "-rtn")), (f"{name} +smoothing", replace(preset(name), smoothing="auto"))]
        static = replace(preset(name + "-rtn"), act_mode="static")
        rows += [(f"{name} static", static), (f"{name} static +shortcut split", replace(static, split_shortcuts=True))]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--only", nargs="*", help="run only rows whose label contains one of these")
    args = parser.parse_args()
    settings = EvalSettings(num_samples=args.num_samples)
    pipe = load_pipeline("builtin:digits")
    classifier, real = load_eval_kit(BUILTINS["digits"].path)
    labels, noise = _labels_and_noise(settings)
    started = time.perf_counter()
    calibration = calibrate(pipe, list(range(10)), steps=25, num_samples=32, seed=0, buckets=8,
                            reservoir_size=4, progress=False)
    calibration_seconds = time.perf_counter() - started
    float_unet = pipe.unet
    reference_images, seconds = _sample(pipe, labels, noise, settings, False)
    reference = _side(None, reference_images, labels, classifier, real, pipe, seconds).to_dict()
    rows = []
    for label, spec in ladders():
        if args.only and not any(key in label for key in args.only):
            continue
        pipe.unet = copy.deepcopy(float_unet)
        started = time.perf_counter()
        quantize_model(pipe.unet, Recipe(spec), calibration)
        quantize_seconds = time.perf_counter() - started
        images, seconds = _sample(pipe, labels, noise, settings, False)
        side = _side(reference_images, images, labels, classifier, real, pipe, seconds).to_dict()
        rows.append({"format": label, "recipe": spec.to_dict(), **side, "quantize_seconds": round(quantize_seconds, 1),
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
        print(json.dumps({k: rows[-1][k] for k in ("format", "psnr_db", "ssim", "classifier_accuracy",
                                                    "quantize_seconds")}), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
              "date": date.today().isoformat(), "commit": commit,
              "command": f"python bench/ptq_ablation.py --num-samples {args.num_samples}", "model": "builtin:digits",
              "eval": {"num_samples": settings.num_samples, "steps": settings.steps, "seed": settings.seed},
              "calibration": {"samples": 32, "steps": 25, "buckets": 8, "reservoir_per_bucket": 4,
                              "seconds": round(calibration_seconds, 1)},
              "reference": reference, "rows": rows}
    suffix = "" if not args.only else "-partial"
    out = Path(__file__).parent / "results" / f"ptq-ablation-digits{suffix}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
