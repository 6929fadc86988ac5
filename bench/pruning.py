"""Structured pruning on a built-in model: every method at every budget, in one harness (CPU).

    python bench/pruning.py --model builtin:digits [--targets 0.9 0.8 0.7 0.6]
        [--methods learned taylor magnitude activation random] [--num-samples 200] [--iterations 100]
        [--combined] [--seeds 0 1] [--learn '{"control": "penalty"}']

For each (method, fraction of parameters kept): prune the float model in memory (`diffpress.prune`,
global scope), then sample it against the float model with the eval harness at identical seeds
(the model's own steps and guidance), at each evaluation seed: PSNR (bootstrap 95% interval) /SSIM vs
float, classifier accuracy (interval), Frechet distance,
parameters, MACs per denoiser call and sample, and measured CPU seconds per sampling step (the
whole eval batch); the learned row of each budget carries its paired PSNR difference to each baseline at
every seed. taylor and activation read one calibration set of the float model (default
CalibrationOptions), made once. With --combined: the learned 20% model quantized with w8a8-int8
and w4a8-int, against those presets alone and against mixed precision (w8a8-int8 / w4a8-int, output
metric only) at the same bytes of quantized layers as each pruned+quantized model.

Writes bench/results/pruning-NAME.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import diffpress
from diffpress import io
from diffpress.calibration import CalibrationOptions
from diffpress.evaluation import EvalSettings, evaluate_pipeline
from diffpress.metrics import state_bytes
from seeded_eval import SeededReferences


def row_of(result, settings: EvalSettings) -> dict:
    side = result.compressed
    return {"psnr_db": round(side.psnr_db, 2), "psnr_ci95_db": side.psnr_ci95_db, "ssim": round(side.ssim, 4),
            "accuracy": side.classifier_accuracy, "accuracy_ci95": side.classifier_accuracy_ci95,
            "frechet": round(side.frechet_distance, 3), "seconds_per_step": round(side.seconds / settings.steps, 4)}


def calibration_for(model: str) -> diffpress.CalibrationSet:
    """The float model calibrated on the built-in's own prompts or labels, default options."""
    return diffpress.calibrate(model, options=CalibrationOptions())


def prune_rows(args, references: SeededReferences, calibration) -> list[dict]:
    """Every (target, method) row; the learned row of each target carries its paired PSNR difference to every
    baseline at every seed."""
    rows = []
    for target in args.targets:
        for method in args.methods:
            learn = {"iterations": args.iterations, **json.loads(args.learn)}
            started = time.perf_counter()
            outcome = diffpress.prune(args.model, target, None, method=method, learn=learn,
                                      calibration=calibration, steps=args.learn_steps)
            seconds = time.perf_counter() - started
            result = outcome.result
            row = {"method": method, "target_params": target, "removed_fraction": round(1 - target, 2),
                   "params": result.params_after, "params_kept": round(result.params_after / result.params_before, 4),
                   "macs_per_call": result.macs_after, "macs_kept": round(result.macs_after / result.macs_before, 4),
                   "prune_seconds": round(seconds, 1),
                   **references.evaluate(f"{method}@{target}", outcome.model)[1]}
            if result.learned is not None:
                row["learn"] = result.stage.to_dict()["learn"]
                row["final_loss"] = round(result.learned.losses[-1], 5)
                if (kept := result.learned.kept_check) is not None:
                    row["kept_cut"] = {"ranking": kept.get("ranking", "learned"), "iteration": kept["iteration"],
                                       "held_out_loss": round(kept["loss"], 6)}
            print(json.dumps({k: v for k, v in row.items() if k != "learn"}), flush=True)
            rows.append(row)
        learned = next((r for r in rows if r["method"] == "learned" and r["target_params"] == target), None)
        if learned is not None:
            learned["learned_minus"] = {m: references.paired(f"learned@{target}", f"{m}@{target}")
                                        for m in args.methods if m != "learned"}
            print(json.dumps({"target": target, "learned_minus": learned["learned_minus"]}), flush=True)
    return rows


def builtin_items(model: str) -> CalibrationOptions:
    """Calibration on the built-in's own labels or prompts (a pruned copy on disk is no longer builtin:NAME)."""
    from diffpress.zoo import builtin

    entry = builtin(model)
    return CalibrationOptions(labels=entry.calibration_labels, prompts=entry.calibration_prompts)


def combined_rows(args, settings, reference, scratch: Path) -> list[dict]:
    pruned = scratch / "pruned"
    diffpress.prune(args.model, 0.8, pruned, learn={"iterations": args.iterations}, steps=args.learn_steps)
    rows = []
    for preset in ("w8a8-int8", "w4a8-int"):
        both = diffpress.compress(pruned, preset, scratch / f"pruned-{preset}", calibration=builtin_items(args.model))
        alone = diffpress.compress(args.model, preset, scratch / preset)
        budget = diffpress.MixedPrecision(diffpress.Budget(max_bytes=_allocated_bytes(both.out)),
                                          candidates=("w8a8-int8", "w4a8-int"), image_layers=0)
        label = f"mixed w8a8/w4a8 at the bytes of learned 20% + {preset}"
        try:
            mixed = diffpress.compress(args.model, budget, scratch / f"mixed-{preset}")
        except diffpress.DiffpressError as error:  # fewer bytes than every layer at w4a8: no mixed model
            mixed = None
            rows.append({"model": label, "infeasible": str(error)})
            print(json.dumps(rows[-1]), flush=True)
        for label, result in ((f"learned 20% + {preset}", both), (f"{preset} alone", alone), (label, mixed)):
            if result is None:
                continue
            row = {"model": label, "weight_bytes": result.bytes_after,
                   **row_of(evaluate_pipeline(reference, io.load(result.out)), settings)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def merged(previous: dict, result: dict, args) -> list[dict]:
    """The previous file's rows of other (method, target) pairs, each tagged with the command and commit that
    measured it, then the new rows."""
    new = {(row["method"], row["target_params"]) for row in result["rows"]}
    kept = [{"measured_by": previous.get("command"), "commit": previous.get("commit"), **row}
            if "measured_by" not in row else row for row in previous["rows"]
            if (row["method"], row["target_params"]) not in new]
    tagged = [{"measured_by": result["command"], "commit": result["commit"], **row} for row in result["rows"]]
    return kept + tagged


def _allocated_bytes(directory: Path) -> int:
    """Bytes of the quantized layers' stored weights (codes + scales): what a mixed-precision max_bytes counts."""
    pipe = io.load(directory)
    from diffpress.compression.surgery import compressed_layers

    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    return sum(state_bytes(module) for _, module in compressed_layers(denoiser))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.8, 0.7, 0.6])
    parser.add_argument("--methods", nargs="+", default=["learned", "taylor", "magnitude", "activation", "random"])
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=100, help="mask-learning iterations")
    parser.add_argument("--learn-steps", type=int, default=None, help="trajectory steps (default: the model's)")
    parser.add_argument("--learn", default="{}", help="mask-learning options as JSON (LearnOptions fields)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="evaluation seeds; the first gives the headline columns")
    parser.add_argument("--combined", action="store_true", help="also pruned 20%% + quantization")
    parser.add_argument("--merge", action="store_true",
                        help="keep the existing result file's rows of other (method, target) pairs")
    parser.add_argument("--no-rows", action="store_true",
                        help="keep the rows of the existing result file; only measure --combined")
    args = parser.parse_args()
    torch.manual_seed(0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    references = SeededReferences(args.model, args.num_samples, args.seeds)
    settings, reference = references.settings, references.first
    metrics = reference.metrics
    float_row = {"method": "float", "accuracy": metrics.classifier_accuracy,
                 "frechet": round(metrics.frechet_distance, 3), "seconds_per_step": round(metrics.seconds / settings.steps, 4)}
    out = Path(__file__).parent / "results" / f"pruning-{args.model.split(':')[-1]}.json"
    result = {"benchmark": "pruning", "model": args.model, "date": date.today().isoformat(), "commit": commit,
              "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads",
              "command": "python bench/pruning.py " + " ".join(__import__("sys").argv[1:]),
              "eval": {"num_samples": settings.num_samples, "steps": settings.steps,
                       "guidance_scale": settings.guidance_scale, "seeds": args.seeds},
              "float": float_row, "rows": [], "combined": []}
    if args.no_rows:
        previous = json.loads(out.read_text())
        result.update(rows=previous["rows"], rows_command=previous.get("rows_command", previous["command"]))
    else:
        calibration = calibration_for(args.model) if {"taylor", "activation"} & set(args.methods) else None
        result["rows"] = prune_rows(args, references, calibration)
        if args.merge and out.exists():
            result["rows"] = merged(json.loads(out.read_text()), result, args)
        out.write_text(json.dumps(result, indent=1) + "\n")  # kept even if the combined part fails
    if args.combined:
        with tempfile.TemporaryDirectory() as scratch:
            result["combined"] = combined_rows(args, settings, reference, Path(scratch))
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
