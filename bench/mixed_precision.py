"""Mixed precision (sensitivity + integer program) vs uniform presets on builtin:digits (CPU).

    python bench/mixed_precision.py [--num-samples 200] [--methods full]
        # bench/results/mixed-precision-digits.json and mixed-precision-digits.png

One calibration set (32 samples x 25 DDIM steps, 8 buckets, 4 calls kept per bucket, seed 0, as in
bench/ptq_ablation.py). Sensitivity of every quantizable layer (the default skip list excluded)
to w4a8-int and w8a8-int8, measured with their round-to-nearest variants on 2 reservoir calls per
bucket, plus the image metric (8 samples x 10 steps) on 4 layers. Allocation by integer program at
average weight bits 4, 4.5, 5, 6, 8 (weights 4 or 8 bits, activations 8-bit INT everywhere). Each
configuration is quantized with the chosen presets' full methods (`--methods full`: w4a8-int layers
get MSE clipping + searched smoothing + learned rounding) and sampled with the eval harness (same
labels, seeds and noise as `diffpress eval`). Weight bytes: qdata + scales of the quantized layers
(the 72 allocated layers; skip-listed layers, biases, norms and method buffers are not counted).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import time
from datetime import date
from pathlib import Path

import torch

from diffpress.api import load_pipeline, measure_sensitivity
from diffpress.calibration import calibrate
from diffpress.compress.allocate import Allocation, Budget, allocate, choices_from_report, uniform_allocation
from diffpress.compress.ptq import quantize_model
from diffpress.compress.sensitivity import SensitivityOptions, SensitivityReport
from diffpress.evaluate import EvalSettings, _labels_and_noise, _sample, _side
from diffpress.zoo import BUILTINS
from diffpress.zoo.digits import load_eval_kit

CANDIDATES = ("w4a8-int", "w8a8-int8")
BUDGETS = (4.0, 4.5, 5.0, 6.0, 8.0)
RESULTS = Path(__file__).parent / "results"


def quantized_weight_bytes(denoiser, layers) -> int:
    total = 0
    for fqn in layers:
        module = denoiser.get_submodule(fqn)
        if hasattr(module, "qdata"):
            total += sum(t.numel() * t.element_size() for t in (module.qdata, module.scales))
        else:
            total += module.weight.numel() * module.weight.element_size()
    return total


class Runner:
    """Quantize + sample each distinct allocation once (uniform w4a8-int == mixed at 4 bits)."""

    def __init__(self, pipe, calibration, settings, methods: str) -> None:
        self.pipe, self.float_unet, self.calibration, self.methods = pipe, pipe.unet, calibration, methods
        self.settings = settings
        self.classifier, self.real = load_eval_kit(BUILTINS["digits"].path)
        self.labels, self.noise = _labels_and_noise(settings)
        self.reference_images, seconds = _sample(pipe, self.labels, self.noise, settings, False)
        self.reference = _side(None, self.reference_images, self.labels, self.classifier, self.real, pipe, seconds)
        self.cache: dict[tuple, dict] = {}

    def measure(self, allocation: Allocation) -> dict:
        key = tuple(sorted(allocation.choice.items()))
        if key not in self.cache:
            self.cache[key] = self._run(allocation)
        return self.cache[key]

    def _run(self, allocation: Allocation) -> dict:
        self.pipe.unet = copy.deepcopy(self.float_unet)
        started = time.perf_counter()
        quantize_model(self.pipe.unet, allocation.to_recipe(fast=self.methods == "rtn"), self.calibration)
        quantize_seconds = time.perf_counter() - started
        images, seconds = _sample(self.pipe, self.labels, self.noise, self.settings, False)
        side = _side(self.reference_images, images, self.labels, self.classifier, self.real, self.pipe, seconds)
        weight_bytes = quantized_weight_bytes(self.pipe.unet, allocation.choice)
        self.pipe.unet = self.float_unet
        return {**side.to_dict(), "quantized_weight_bytes": weight_bytes, "quantize_seconds": round(quantize_seconds, 1)}


def row(kind: str, allocation: Allocation, measured: dict) -> dict:
    return {"kind": kind, "avg_bits": round(allocation.avg_bits, 4), "counts": allocation.counts,
            "predicted_output_sqnr_db": round(-10 * __import__("math").log10(max(allocation.objective, 1e-30)), 2),
            "solve_seconds": round(allocation.solve_seconds, 3), **measured, "choice": allocation.choice}


def plot(rows: list[dict], path: Path, methods: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixed = sorted((r for r in rows if r["kind"] == "mixed"), key=lambda r: r["avg_bits"])
    uniform = [r for r in rows if r["kind"] != "mixed"]
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    axis.plot([r["avg_bits"] for r in mixed], [r["psnr_db"] for r in mixed], "o-", label="mixed (ILP)")
    for r in uniform:
        axis.plot(r["avg_bits"], r["psnr_db"], "s", markersize=9, label=f"uniform {r['kind']}")
    axis.set_xlabel("average weight bits (parameter-weighted)")
    axis.set_ylabel("PSNR vs float samples (dB)")
    axis.set_title(f"builtin:digits: quality vs size ({methods} methods)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--methods", choices=["full", "rtn"], default="full")
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS),
                        help="average weight bits to allocate at (default 4 4.5 5 6 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the 2 cores are shared)")
    parser.add_argument("--reuse-sensitivity", action="store_true",
                        help="load the saved sensitivity JSON instead of measuring again (same calibration)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pipe = load_pipeline("builtin:digits")
    started = time.perf_counter()
    calibration = calibrate(pipe, list(range(10)), num_inference_steps=25, num_samples=32, seed=0, buckets=8,
                            reservoir_size=4, progress=False)
    calibration_seconds = time.perf_counter() - started
    started = time.perf_counter()
    saved = RESULTS / "mixed-precision-digits-sensitivity.json"
    if args.reuse_sensitivity:
        report = SensitivityReport.load(saved)
    else:
        report = measure_sensitivity(pipe, calibration, SensitivityOptions(CANDIDATES, 2, 4, progress=True),
                                     items=list(range(10)))
        report.save(saved)
    sensitivity_seconds = report.info["output_seconds"] + report.info["image_seconds"]
    print(f"calibration {calibration_seconds:.1f} s, sensitivity {sensitivity_seconds:.1f} s", flush=True)
    layers = choices_from_report(report, CANDIDATES)
    allocations = {bits: allocate(layers, Budget(avg_bits=bits)) for bits in args.budgets}
    repeat = {bits: allocate(layers, Budget(avg_bits=bits)).choice for bits in args.budgets}
    deterministic = all(repeat[b] == allocations[b].choice for b in args.budgets)
    runner = Runner(pipe, calibration, EvalSettings(num_samples=args.num_samples), args.methods)
    rows = []
    for name in CANDIDATES:
        rows.append(row(name, uniform_allocation(layers, name), runner.measure(uniform_allocation(layers, name))))
        print(json.dumps({k: rows[-1][k] for k in ("kind", "avg_bits", "psnr_db", "quantized_weight_bytes")}), flush=True)
    for bits, allocation in allocations.items():
        rows.append(row("mixed", allocation, runner.measure(allocation)))
        print(json.dumps({k: rows[-1][k] for k in ("kind", "avg_bits", "psnr_db", "quantized_weight_bytes",
                                                    "counts")}), flush=True)
    write(args, rows, runner, deterministic, calibration_seconds, sensitivity_seconds, report)


def write(args, rows, runner, deterministic, calibration_seconds, sensitivity_seconds, report) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    suffix = "" if args.methods == "full" else "-rtn"
    budgets = "" if list(args.budgets) == list(BUDGETS) else " --budgets " + " ".join(f"{b:g}" for b in args.budgets)
    png = RESULTS / f"mixed-precision-digits{suffix}.png"
    plot(rows, png, args.methods)
    result = {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
              "date": date.today().isoformat(), "commit": commit,
              "command": f"python bench/mixed_precision.py --num-samples {args.num_samples} --methods {args.methods}"
                         + budgets + (" --reuse-sensitivity" if args.reuse_sensitivity else ""), "threads": args.threads,
              "model": "builtin:digits", "candidates": list(CANDIDATES), "methods": args.methods,
              "eval": {"num_samples": runner.settings.num_samples, "steps": runner.settings.steps,
                       "seed": runner.settings.seed},
              "calibration": {"samples": 32, "steps": 25, "buckets": 8, "reservoir_per_bucket": 4,
                              "seconds": round(calibration_seconds, 1)},
              "sensitivity": {"calls_per_bucket": 2, "image_layers": list(report.image),
                              "seconds": round(sensitivity_seconds, 1),
                              "file": "mixed-precision-digits-sensitivity.json"},
              "bytes_counted": "qdata + scales of the allocated (quantized) layers",
              "allocation_deterministic": deterministic, "reference": runner.reference.to_dict(),
              "curve_png": png.name, "rows": rows}
    (RESULTS / f"mixed-precision-digits{suffix}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
