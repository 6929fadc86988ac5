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

Then end to end, weight-only FP4 (block 16) on the model's sampler (`diffpress.evaluation`, seed 0): every
layer absmax, every layer MSE, MSE on the Linear layers only, MSE on the convs only (--num-samples, with
bootstrap intervals), and one layer at a time with MSE on an otherwise absmax model (--layer-samples): where
the image loses what the layer-wise error gains. Writes bench/results/clipping-MODEL.json.
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
from diffpress.compression.modules import QuantConv2d, QuantLinear
from diffpress.compression.swap import quantize_
from diffpress.evaluation import EvalSettings, evaluate_pipeline, sample_reference
from diffpress.recipe import QuantSpec
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
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--layer-samples", type=int, default=64)
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
    end_to_end = image_effect(args.model, args.num_samples, args.layer_samples)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"model": args.model, "layers": len(layers), "date": date.today().isoformat(), "commit": commit,
              "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
              "command": f"python bench/clipping.py --model {args.model} --num-samples {args.num_samples} "
                         f"--layer-samples {args.layer_samples}", "grids": summary, "fp4_end_to_end": end_to_end}
    path = Path(__file__).parent / "results" / f"clipping-{args.model.removeprefix('builtin:')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")


FP4 = ("fp4_e2m1", "per_group", 16)


def image_effect(model: str, num_samples: int, layer_samples: int) -> dict:
    """Weight-only FP4 block 16 with absmax or MSE scales per layer, sampled end to end."""
    pipe = load_pipeline(resolve(model).root)
    denoiser = find_denoiser(pipe)
    floats = {fqn: m.weight.detach().float().reshape(m.weight.shape[0], -1) for fqn, m in compressible_layers(denoiser)}
    quantize_(denoiser, QuantSpec(*FP4))
    layers = {fqn: m for fqn, m in denoiser.named_modules() if isinstance(m, (QuantLinear, QuantConv2d))}
    packed = {(fqn, method): quantize_weight(floats[fqn], *FP4, scales=choose_scales(floats[fqn], *FP4, method))
              for fqn in layers for method in (ScaleMethod.ABSMAX, ScaleMethod.MSE)}

    def scored(mse_layers, reference) -> dict:
        for fqn, module in layers.items():
            module.set_packed(packed[fqn, ScaleMethod.MSE if fqn in mse_layers else ScaleMethod.ABSMAX])
        side = evaluate_pipeline(reference, pipe).compressed
        return {"psnr_db": round(side.psnr_db, 3), "psnr_ci95_db": side.psnr_ci95_db,
                "classifier_accuracy": side.classifier_accuracy}

    reference = sample_reference(model, EvalSettings.for_model(model, num_samples))
    convs = {fqn for fqn, m in layers.items() if isinstance(m, QuantConv2d)}
    whole = {name: scored(chosen, reference) for name, chosen in (
        ("absmax", set()), ("mse", set(layers)), ("mse on linear layers only", set(layers) - convs),
        ("mse on convs only", convs))}
    print(json.dumps(whole, indent=1), flush=True)
    small = sample_reference(model, EvalSettings.for_model(model, layer_samples))
    base = scored(set(), small)["psnr_db"]
    one_at_a_time = sorted(({"layer": fqn, "kind": type(layers[fqn]).__name__,
                             "psnr_delta_db": round(scored({fqn}, small)["psnr_db"] - base, 3)} for fqn in layers),
                           key=lambda row: row["psnr_delta_db"])
    return {"weights": "fp4_e2m1 block 16, weight-only", "samples": num_samples, "whole_model": whole,
            "one_layer_mse": {"samples": layer_samples, "absmax_psnr_db": base, "layers": one_at_a_time}}


if __name__ == "__main__":
    main()
