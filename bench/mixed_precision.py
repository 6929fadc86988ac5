"""Mixed precision (sensitivity + integer program) vs uniform presets on a built-in model (CPU).

    python bench/mixed_precision.py [--model builtin:digits] [--num-samples 200]
        # bench/results/mixed-precision-NAME.json, mixed-precision-NAME.png and
        # mixed-precision-NAME-sensitivity.json (NAME: digits, digits-flux)

What `diffpress compress --preset mixed` does, step by step, with every number kept:
- one calibration set (32 samples x the model's sampler steps (25 for digits, 20 for digits-flux), 8 buckets,
  4 calls kept per bucket, seed 0, on the model's own labels or prompts);
- each candidate (w4a8-int, w8a8-int8-learned) quantizes a copy of the UNet with its full preset
  (learned rounding, clipping search; smoothing for w4a8-int), giving one module per (layer, candidate);
- sensitivity of every quantizable layer (the default skip list excluded) with those modules: output
  SQNR on 2 reservoir calls per bucket, and the image metric (16 samples x the sampler steps) for every layer;
- allocation by integer program at average weight bits 4, 4.5, 5, 6, 8 (weights 4 or 8 bits,
  8-bit INT activations everywhere), costed by the image metric (each layer's typical per-sample error);
  one more 5-bit allocation costed by the output metric alone, for comparison; and the 5-bit allocation `compress --preset mixed` keeps: the
  allocations of the image metric, the output metric and their geometric mean measured whole on 16 held-out
  samples (seed 1) and the best taken (`compression.selection`); and one more 5-bit allocation costed by
  the image error pooled over the samples (the image cost before the typical per-sample error);
- each allocation assembled from the measured modules (`quantize_model(..., ready=...)`) and sampled
  with the eval harness (same labels or prompts, seeds and noise as `diffpress eval`, and its guidance), at
  seeds 0 and 1, each PSNR with its bootstrap 95% interval over the samples and each row's paired difference
  to uniform w8a8-int8 (the same samples resampled together) with its interval.
Uniform rows: each candidate, and the w8a8-int8 preset (round-to-nearest INT8, no calibration) that
the acceptance target names. Weight bytes: qdata + scales of the 72 allocated layers (skip-listed
layers, biases, norms and method buffers are not counted).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import subprocess
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

from diffpress.calibration import calibrate
from diffpress.checkpoint import load_pipeline
from diffpress.compression import selection
from diffpress.compression.allocate import Allocation, allocate, choices_from_report, uniform_allocation
from diffpress.compression.ptq import quantize_model
from diffpress.compression.sensitivity.image_metric import pipeline_image_probe
from diffpress.compression.sensitivity.measure import SensitivityOptions, measure_sensitivity
from diffpress.compression.sensitivity.report import SensitivityReport
from diffpress.compression.sensitivity.variants import LayerVariants
from diffpress.metrics import paired_psnr_difference, stored_bytes
from diffpress.plan import Budget
from diffpress.evaluation import EvalSettings, _labels_and_noise, _sample, _side
from diffpress.presets import preset
from diffpress.stages import VALIDATION_SEED
from diffpress.recipe import Recipe, Rule
from diffpress.zoo import BUILTINS
from diffpress.zoo.digits import load_eval_kit

CANDIDATES = ("w4a8-int", "w8a8-int8-learned")
BASELINE = "w8a8-int8"  # the uniform preset the acceptance target compares with
BUDGETS = (4.0, 4.5, 5.0, 6.0, 8.0)
IMAGE_SAMPLES = 16
RESULTS = Path(__file__).parent / "results"


def quantized_weight_bytes(denoiser, layers) -> int:
    total = 0
    for fqn in layers:
        module = denoiser.get_submodule(fqn)
        if hasattr(module, "qdata"):
            total += stored_bytes(module.qdata) + stored_bytes(module.scales)
        else:
            total += stored_bytes(module.weight)
    return total


class Runner:
    """Assemble + sample each distinct allocation once (uniform w4a8-int == mixed at 4 bits)."""

    def __init__(self, pipe, calibration, settings, variants: LayerVariants, model_dir,
                 extra_seeds: tuple[int, ...] = (1,)) -> None:
        self.component = "unet" if hasattr(pipe, "unet") else "transformer"
        self.pipe, self.calibration, self.variants = pipe, calibration, variants
        self.float_denoiser = getattr(pipe, self.component)
        self.settings = settings
        self.classifier, self.real = load_eval_kit(model_dir)
        self.seeds = {}  # seed -> (settings, labels, noise, reference images)
        for seed in (settings.seed, *extra_seeds):
            seeded = replace(settings, seed=seed)
            labels, noise = _labels_and_noise(seeded)
            images, seconds = _sample(pipe, labels, noise, seeded, False)
            self.seeds[seed] = (seeded, labels, noise, images)
            if seed == settings.seed:
                self.reference = _side(None, images, labels, self.classifier, self.real, pipe, seconds)
        self.cache: dict[tuple, dict] = {}
        self.errors: dict[str, dict[int, torch.Tensor]] = {}  # row kind/bits -> seed -> per-sample MSE

    def measure(self, allocation: Allocation) -> dict:
        key = tuple(sorted(allocation.choice.items()))
        if key not in self.cache:
            self.cache[key] = self._run(allocation.to_recipe(), self.variants.full_modules(allocation.choice),
                                        allocation.choice)
        return self.cache[key]

    def sample_mse(self, row: dict) -> dict:
        """The per-sample errors of a measured row (by its allocation, or the preset row's)."""
        if isinstance(row["choice"], dict):
            return self.cache[tuple(sorted(row["choice"].items()))]["sample_mse"]
        return self.preset_errors

    def measure_preset(self, name: str, layers) -> dict:
        recipe = Recipe(default=None, rules=tuple(Rule(fqn, preset(name)) for fqn in layers))
        measured = self._run(recipe, None, layers)
        self.preset_errors = measured["sample_mse"]
        return measured

    def _run(self, recipe: Recipe, ready, layers) -> dict:
        quantized = copy.deepcopy(self.float_denoiser)
        setattr(self.pipe, self.component, quantized)
        started = time.perf_counter()
        quantize_model(quantized, recipe, self.calibration, ready=ready)
        quantize_seconds = time.perf_counter() - started
        sides = {}
        for seed, (seeded, labels, noise, reference) in self.seeds.items():
            images, seconds = _sample(self.pipe, labels, noise, seeded, False)
            sides[seed] = _side(reference, images, labels, self.classifier, self.real, self.pipe, seconds)
        weight_bytes = quantized_weight_bytes(quantized, layers)
        setattr(self.pipe, self.component, self.float_denoiser)
        side = sides[self.settings.seed]
        return {**side.to_dict(), "quantized_weight_bytes": weight_bytes, "quantize_seconds": round(quantize_seconds, 1),
                "by_seed": [{"seed": seed, "psnr_db": round(s.psnr_db, 3), "psnr_ci95_db": s.psnr_ci95_db,
                             "psnr_typical_db": round(s.psnr_typical_db, 3)} for seed, s in sides.items()],
                "sample_mse": {seed: s.sample_mse for seed, s in sides.items()}}


def pooled_image_report(report: SensitivityReport) -> SensitivityReport | None:
    """`report` with each image score costed by its relative error pooled over the samples (the cost before
    the typical per-sample error); None if no score has a typical error (an older report)."""
    if not any(score.typical_error is not None for per in report.image.values() for score in per.values()):
        return None
    image = {fqn: {name: replace(score, typical_error=None) for name, score in per.items()}
             for fqn, per in report.image.items()}
    return replace(report, image=image)


def prepare(model: str, threads: int):
    """Threads and seed set, the built-in's pipeline and its calibration set (32 samples x the model's steps,
    8 buckets, 4 calls per bucket, seed 0): (builtin, items, pipe, denoiser, calibration, calibration seconds)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    builtin = BUILTINS[model.removeprefix("builtin:")]
    items = list(builtin.calibration_labels or builtin.calibration_prompts)
    pipe = load_pipeline(model)
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    started = time.perf_counter()
    calibration = calibrate(pipe, items, steps=builtin.eval_steps, num_samples=32, seed=0, buckets=8,
                            reservoir_size=4, progress=False)
    return builtin, items, pipe, denoiser, calibration, time.perf_counter() - started


def row(kind: str, allocation: Allocation, measured: dict) -> dict:
    measured = dict(measured)
    measured.pop("sample_mse", None)
    return {"kind": kind, "avg_bits": round(allocation.avg_bits, 4), "avg_act_bits": round(allocation.avg_act_bits, 4),
            "counts": allocation.counts,
            "predicted_image_snr_db": round(-10 * math.log10(max(allocation.objective, 1e-30)), 2),
            "solve_seconds": round(allocation.solve_seconds, 3), **measured, "choice": allocation.choice}


def plot(rows: list[dict], path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixed = sorted((r for r in rows if r["kind"] == "mixed"), key=lambda r: r["avg_bits"])
    uniform = [r for r in rows if not r["kind"].startswith("mixed")]
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    axis.plot([r["avg_bits"] for r in mixed], [r["psnr_db"] for r in mixed], "o-", label="mixed (ILP)")
    for r in uniform:
        axis.plot(r["avg_bits"], r["psnr_db"], "s", markersize=9, label=f"uniform {r['kind']}")
    axis.set_xlabel("average weight bits (parameter-weighted)")
    axis.set_ylabel("PSNR vs float samples (dB)")
    axis.set_title(f"{model}: quality vs size (mixed vs uniform)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits", help="a built-in model (builtin:digits, builtin:digits-flux)")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS),
                        help="average weight bits to allocate at (default 4 4.5 5 6 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--reuse-sensitivity", action="store_true",
                        help="load the saved sensitivity JSON instead of measuring again (the modules are "
                             "still quantized: the allocations are assembled from them)")
    args = parser.parse_args()
    builtin, items, pipe, denoiser, calibration, calibration_seconds = prepare(args.model, args.threads)
    options = SensitivityOptions(CANDIDATES, calls_per_bucket=2, image_layers=None, progress=True, methods="full")
    variants = options.variants(denoiser, calibration)
    quantize_seconds = variants.seconds
    saved = RESULTS / f"mixed-precision-{builtin.name}-sensitivity.json"
    if args.reuse_sensitivity:
        report = SensitivityReport.load(saved)
    else:
        probe = pipeline_image_probe(pipe, items, IMAGE_SAMPLES, builtin.eval_steps)
        report = measure_sensitivity(denoiser, calibration, options, probe, variants)
        report.save(saved)
    print(f"calibration {calibration_seconds:.1f} s, quantize {quantize_seconds:.1f} s, sensitivity "
          f"{report.info['output_seconds'] + report.info['image_seconds']:.1f} s", flush=True)
    layers = choices_from_report(report, CANDIDATES)
    allocations = {bits: allocate(layers, Budget(avg_bits=bits)) for bits in args.budgets}
    repeat = {bits: allocate(layers, Budget(avg_bits=bits)).choice for bits in args.budgets}
    deterministic = all(repeat[b] == allocations[b].choice for b in args.budgets)
    output_only = SensitivityReport.from_dict({**report.to_dict(), "image": {}})
    output_allocation = allocate(choices_from_report(output_only, CANDIDATES), Budget(avg_bits=5.0))
    pooled = pooled_image_report(report)  # the image cost before the typical per-sample error
    pooled_allocation = allocate(choices_from_report(pooled, CANDIDATES), Budget(avg_bits=5.0)) if pooled else None
    runner = Runner(pipe, calibration, EvalSettings.for_model(args.model, args.num_samples), variants, builtin.path)
    rows = []
    for name in CANDIDATES:
        rows.append(row(name, uniform_allocation(layers, name), runner.measure(uniform_allocation(layers, name))))
        _print(rows[-1])
    baseline = uniform_allocation(layers, CANDIDATES[1])
    baseline_measured = runner.measure_preset(BASELINE, list(baseline.choice))
    rows.append({**row(BASELINE, baseline, baseline_measured),
                 "counts": {BASELINE: len(baseline.choice)}, "predicted_image_snr_db": None,
                 "choice": "every layer " + BASELINE})
    _print(rows[-1])
    for bits, allocation in allocations.items():
        rows.append(row("mixed", allocation, runner.measure(allocation)))
        _print(rows[-1])
    rows.append(row("mixed-output-metric", output_allocation, runner.measure(output_allocation)))
    _print(rows[-1])
    if pooled_allocation is not None:
        rows.append(row("mixed-pooled-image-metric", pooled_allocation, runner.measure(pooled_allocation)))
        _print(rows[-1])
    # what `compress --preset mixed` keeps: the contenders measured whole on held-out samples (seed 1)
    validation_probe = pipeline_image_probe(pipe, items, IMAGE_SAMPLES, builtin.eval_steps, seed=VALIDATION_SEED)
    chosen, picked = selection.select(denoiser, selection.contenders(report, Budget(avg_bits=5.0)), variants,
                                      validation_probe, IMAGE_SAMPLES)
    rows.append({**row("mixed-selected", chosen, runner.measure(chosen)), "selection": picked.to_dict()})
    _print(rows[-1])
    for r in rows:  # paired bootstrap over the same samples, per seed: the row against uniform w8a8-int8
        r["vs_" + BASELINE] = [{"seed": seed, **paired_psnr_difference(mse, baseline_measured["sample_mse"][seed])}
                               for seed, mse in runner.sample_mse(r).items()]
    write(args, rows, runner, deterministic, calibration_seconds, quantize_seconds, report, builtin)


def _print(r: dict) -> None:
    print(json.dumps({k: r[k] for k in ("kind", "avg_bits", "psnr_db", "quantized_weight_bytes", "counts")}), flush=True)


def write(args, rows, runner, deterministic, calibration_seconds, quantize_seconds, report, builtin) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    budgets = "" if list(args.budgets) == list(BUDGETS) else " --budgets " + " ".join(f"{b:g}" for b in args.budgets)
    png = RESULTS / f"mixed-precision-{builtin.name}.png"
    plot(rows, png, args.model)
    result = {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
              "date": date.today().isoformat(), "commit": commit,
              "command": f"python bench/mixed_precision.py --model {args.model} --num-samples {args.num_samples}" + budgets
                         + (" --reuse-sensitivity" if args.reuse_sensitivity else ""), "threads": args.threads,
              "model": args.model, "candidates": list(CANDIDATES), "baseline": BASELINE, "methods": "full",
              "eval": {"num_samples": runner.settings.num_samples, "steps": runner.settings.steps,
                       "seed": runner.settings.seed, "seeds": list(runner.seeds)},
              "calibration": {"samples": 32, "steps": builtin.eval_steps, "buckets": 8, "reservoir_per_bucket": 4,
                              "seconds": round(calibration_seconds, 1)},
              "sensitivity": {"calls_per_bucket": 2, "image_layers": len(report.image),
                              "image_probe": {"samples": IMAGE_SAMPLES, "steps": builtin.eval_steps},
                              "quantize_seconds": round(quantize_seconds, 1),
                              "output_seconds": report.info["output_seconds"],
                              "image_seconds": report.info["image_seconds"],
                              "file": f"mixed-precision-{builtin.name}-sensitivity.json"},
              "bytes_counted": "quantized_weight_bytes: qdata + scales of the allocated (quantized) layers; "
                               "size_bytes: every tensor of the saved denoiser",
              "allocation_deterministic": deterministic, "reference": runner.reference.to_dict(),
              "curve_png": png.name, "rows": rows}
    (RESULTS / f"mixed-precision-{builtin.name}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
