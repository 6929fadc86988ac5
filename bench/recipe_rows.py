"""Shared by the method benchmarks (bench/gptq.py, bench/w4a4.py, ...): each row a QuantSpec applied to every layer
of a built-in model (or a whole Recipe) from one calibration set, then evaluated against the float model at identical
seeds (CPU).

A row is `(label, spec)`, `(label, spec, compress_options)` or `(label, spec, compress_options, base)`: `spec` a
QuantSpec or a Recipe, `compress_options` keyword arguments of `diffpress.compress` for that row, `base` the label of
the earlier row it adds a method to (default: the previous row of its group; a group is the label's first word)."""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Callable

import torch

import diffpress
from diffpress.recipe import QuantSpec, Recipe


def arguments(description: str, default_model: str = "builtin:digits") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--only", nargs="*", help="run only rows whose label contains one of these")
    parser.add_argument("--exact", action="store_true", help="--only names whole labels, not parts of them")
    parser.add_argument("--tag", default="", help="suffix of the result file name (default with --only: partial)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="evaluation seeds (the sampling noise); the first gives the headline columns")
    return parser.parse_args()


def measure(model: str, rows: list[tuple], num_samples: int, only: list[str] | None,
            seeds: list[int] = (0,), exact: bool = False, describe: Callable | None = None) -> list[dict]:
    """Calibrate once (the default options), then per row: `diffpress.compress` from that file (timed: the
    quantization alone) and an evaluation against the float model at each seed (the reference sampled once
    per seed). Every PSNR has its bootstrap 95% interval over the samples, and each row is compared with the
    first row of its group (the label's first word) and with the row it builds on (its base) by a paired
    bootstrap over the same samples, at every seed. `describe(pipe)`, when given, adds its dict to each row
    (read from the saved and reloaded pipeline)."""
    from diffpress import io
    from diffpress.evaluation import EvalSettings, evaluate_pipeline, sample_reference

    results, errors = [], {}
    references = {seed: sample_reference(model, EvalSettings.for_model(model, num_samples, seed=seed))
                  for seed in seeds}
    with tempfile.TemporaryDirectory(prefix="diffpress-rows-") as temporary:
        calibration = Path(temporary) / "calibration.safetensors"
        diffpress.calibrate(model, out=calibration)
        for label, spec, *extra in rows:
            options, base = (extra[0] if extra else {}), (extra[1] if len(extra) > 1 else None)
            if only and not any(key == label if exact else key in label for key in only):
                continue
            out = Path(temporary) / label.replace(" ", "-")
            recipe = spec if isinstance(spec, Recipe) else Recipe(spec)
            started = time.perf_counter()
            result = diffpress.compress(model, recipe, out, calibration=calibration, checkpoint_every=None, **options)
            seconds = time.perf_counter() - started
            pipe = io.load(out)
            sides = {seed: evaluate_pipeline(reference, pipe).compressed for seed, reference in references.items()}
            errors[label] = {seed: side.sample_mse for seed, side in sides.items()}
            row = {"row": label, "recipe": spec.to_dict(), "compress_seconds": round(seconds, 1),
                   **({"compress_options": {k: repr(v) for k, v in options.items()}} if options else {}),
                   **(describe(pipe) if describe else {}),
                   "denoiser_bytes": result.bytes_after, **sides[seeds[0]].to_dict(),
                   "by_seed": [{"seed": seed, "psnr_db": round(side.psnr_db, 3), "psnr_ci95_db": side.psnr_ci95_db,
                                "psnr_typical_db": round(side.psnr_typical_db, 3),
                                "classifier_accuracy": side.classifier_accuracy} for seed, side in sides.items()]}
            row.update(_comparisons(label, [r["row"] for r in results], errors, base))
            results.append(row)
            print(json.dumps({k: row.get(k) for k in ("row", "psnr_db", "psnr_ci95_db", "classifier_accuracy",
                                                      "compress_seconds", "denoiser_bytes", "vs_group_first",
                                                      "vs_previous")}), flush=True)
    return results


def _comparisons(label: str, earlier: list[str], errors: dict, base: str | None = None) -> dict:
    """Paired PSNR differences (per seed, with bootstrap 95% intervals) against the group's first row and the
    row this one builds on (`base` when it was measured, else the previous row of the group), recorded as
    "vs_previous"."""
    from diffpress.metrics import paired_psnr_difference

    group = [row for row in earlier if row.split()[0] == label.split()[0]]
    builds_on = base if base in errors else (group[-1] if group else None)
    result = {}
    for key, other in (("vs_group_first", group[0] if group else None), ("vs_previous", builds_on)):
        if other is None or (key == "vs_previous" and other == group[0]):
            continue
        result[key] = {"row": other, "by_seed": [
            {"seed": seed, **{k: (round(v, 3) if isinstance(v, float) else [round(x, 3) for x in v])
                              for k, v in paired_psnr_difference(mse, errors[other][seed]).items()}}
            for seed, mse in errors[label].items()]}
    return result


def write(kind: str, args: argparse.Namespace, results: list[dict]) -> Path:
    """bench/results/KIND-MODEL.json (-TAG with --tag, else -partial with --only)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"model": args.model, "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
              "date": date.today().isoformat(), "commit": commit,
              "command": f"python bench/{Path(sys.argv[0]).name} " + shlex.join(sys.argv[1:]),
              "eval_samples": args.num_samples, "rows": results}
    name = args.model.removeprefix("builtin:")
    suffix = f"-{args.tag}" if args.tag else ("-partial" if args.only else "")
    path = Path(__file__).parent / "results" / f"{kind}-{name}{suffix}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


def main(kind: str, description: str, rows: list[tuple] | Callable, describe: Callable | None = None,
         default_model: str = "builtin:digits") -> None:
    """The whole benchmark: parse the arguments, measure `rows` (or `rows(model)`), write
    bench/results/KIND-MODEL.json."""
    args = arguments(description, default_model)
    rows = rows(args.model) if callable(rows) else rows
    write(kind, args, measure(args.model, rows, args.num_samples, args.only, args.seeds, args.exact, describe))
