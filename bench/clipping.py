"""Why MSE clipping can lower image PSNR while it raises weight SQNR: weight error against output error,
per layer, on real calibration inputs (CPU).

    python bench/clipping.py [--model builtin:digits]

For every quantizable layer (Linear and Conv2d, the default skip list excluded) of the built-in model and each 4-bit weight grid (FP4 e2m1 block 16, INT4 g64,
INT4 g128), the weight is quantized three ways: absmax scales, MSE clipping (the ratio per group that
minimizes the weight's squared error), and input-weighted MSE clipping (the same search with each column's
squared error weighted by the input's mean square on that channel: the layer's expected output error under
independent channels). Reported per grid: mean weight SQNR, mean output SQNR on up to 2048 captured input
rows (weight-only: float inputs; im2col rows for convs), on how many layers each method gives the lowest output
error, and the output's gain error <y_q, y> / |y|^2 - 1 (negative: the quantized layer's output is shrunk, a
bias that does not average out over layers and sampling steps as rounding noise does).
Writes bench/results/clipping-MODEL.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
from datetime import date
from pathlib import Path

import torch

import diffpress
from diffpress.calibration import find_denoiser
from diffpress.checkpoint import load_pipeline, resolve
from diffpress.compression.layer_inputs import capture_layer_inputs
from diffpress.compression.quantize import ScaleMethod, choose_scales, dequantize, quantize_weight
from diffpress.compression.surgery import compressible_layers
from diffpress.compression.swap import DEFAULT_SKIP, skip_reason
from diffpress.metrics import sqnr_db

GRIDS = {"fp4_e2m1 block 16": ("fp4_e2m1", "per_group", 16), "int4 g64": ("int4", "per_group", 64),
         "int4 g128": ("int4", "per_group", 128)}


def quantized(weight, grid, method, importance=None):
    fmt, granularity, group = grid
    scales = choose_scales(weight, fmt, granularity, group, method, importance=importance)
    return dequantize(quantize_weight(weight, fmt, granularity, group, scales=scales))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    args = parser.parse_args()
    calibration = diffpress.calibrate(args.model)
    denoiser = find_denoiser(load_pipeline(resolve(args.model).root))
    layers = {fqn: m for fqn, m in compressible_layers(denoiser) if not skip_reason(fqn, DEFAULT_SKIP)
              and getattr(m, "groups", 1) == 1}
    inputs = capture_layer_inputs(denoiser, calibration, set(layers))
    summary = {}
    for name, grid in GRIDS.items():
        per_method = {m: {"weight_sqnr": [], "output_sqnr": [], "output_error": [], "gain": []}
                      for m in ("absmax", "mse", "mse-input-weighted")}
        best_counts = dict.fromkeys(per_method, 0)
        for fqn, module in layers.items():
            weight = module.weight.detach().float().reshape(module.weight.shape[0], -1)
            rows = inputs[fqn].rows.float()
            energy = rows.square().mean(0)
            target = rows @ weight.T
            errors = {}
            for method, (scale_method, importance) in {"absmax": (ScaleMethod.ABSMAX, None), "mse": (ScaleMethod.MSE, None),
                                                       "mse-input-weighted": (ScaleMethod.MSE, energy)}.items():
                q = quantized(weight, grid, scale_method, importance)
                output = rows @ q.T
                per_method[method]["weight_sqnr"].append(sqnr_db(weight, q))
                per_method[method]["output_sqnr"].append(sqnr_db(target, output))
                errors[method] = float((output - target).square().sum() / target.square().sum())
                per_method[method]["gain"].append(float((output * target).sum() / target.square().sum()) - 1)
                per_method[method]["output_error"].append(errors[method])
            best_counts[min(errors, key=errors.get)] += 1
        summary[name] = {method: {"mean_weight_sqnr_db": round(sum(v["weight_sqnr"]) / len(layers), 3),
                                  "mean_output_sqnr_db": round(sum(v["output_sqnr"]) / len(layers), 3),
                                  "summed_relative_output_error": round(sum(v["output_error"]), 6),
                                  "layers_where_best_output": best_counts[method],
                                  "mean_output_gain_error": round(sum(v["gain"]) / len(layers), 5),
                                  "layers_with_shrunk_output": sum(g < 0 for g in v["gain"]),
                                  "layers_where_weight_sqnr_above_absmax": sum(
                                      a > b for a, b in zip(v["weight_sqnr"], per_method["absmax"]["weight_sqnr"])),
                                  "layers_where_output_sqnr_above_absmax": sum(
                                      a > b for a, b in zip(v["output_sqnr"], per_method["absmax"]["output_sqnr"]))}
                         for method, v in per_method.items()}
        print(name, json.dumps(summary[name], indent=1), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"model": args.model, "layers": len(layers), "date": date.today().isoformat(), "commit": commit,
              "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
              "command": f"python bench/clipping.py --model {args.model}", "grids": summary}
    path = Path(__file__).parent / "results" / f"clipping-{args.model.removeprefix('builtin:')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
