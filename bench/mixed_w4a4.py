"""Mixed precision with 4-bit activations: W4A4 as a candidate beside W4A8 and W8A8, under an activation
budget (CPU).

    python bench/mixed_w4a4.py [--model builtin:digits] [--num-samples 200]
        [--points 4:6 4:5 5:6]   # average weight bits : average activation bits
        # bench/results/mixed-w4a4-NAME.json and mixed-w4a4-NAME-sensitivity.json

At equal weight bits a 4-bit-activation format only ever costs more error, so W4A4 is chosen only under a
budget on activation bits (`Budget.avg_act_bits`, parameter-weighted; `--avg-act-bits` on the CLI). The
same steps as bench/mixed_precision.py: one calibration set (32 samples x the model's steps, 8 buckets, 4
calls per bucket, seed 0); each candidate (w4a4-int, w4a8-int, w8a8-int8-learned) quantizes a copy of the
denoiser with its full preset; sensitivity of every layer (output SQNR on 2 calls per bucket, the image
metric on 16 samples: its typical per-sample error is the cost); the program at each point; the allocation
`compress --preset mixed` keeps at the first point (three cost tables measured whole on 16 held-out
samples); each row sampled at seeds 0 and 1 with bootstrap intervals and its paired difference to uniform
w4a4-int (the 4-bit-average point: every layer at 4-bit weights and activations) and to uniform w4a8-int.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from datetime import date

import torch

from diffpress.compression import selection
from diffpress.compression.allocate import allocate, choices_from_report, uniform_allocation
from diffpress.compression.sensitivity.image_metric import pipeline_image_probe
from diffpress.compression.sensitivity.measure import SensitivityOptions, measure_sensitivity
from diffpress.evaluation import EvalSettings
from diffpress.metrics import paired_psnr_difference
from diffpress.plan import Budget
from diffpress.stages import VALIDATION_SEED
from mixed_precision import IMAGE_SAMPLES, RESULTS, Runner, prepare, row

CANDIDATES = ("w4a4-int", "w4a8-int", "w8a8-int8-learned")
COMPARED_WITH = ("w4a4-int", "w4a8-int")  # each row's paired differences are against these uniform rows


def point(text: str) -> tuple[float, float]:
    bits, act = text.split(":")
    return float(bits), float(act)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--points", type=point, nargs="+", default=[(4.0, 6.0), (4.0, 5.0), (5.0, 6.0)],
                        help="WEIGHT_BITS:ACT_BITS budgets (the first also gets the measured selection)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    builtin, items, pipe, denoiser, calibration, _ = prepare(args.model, args.threads)
    options = SensitivityOptions(CANDIDATES, calls_per_bucket=2, image_layers=None, progress=True, methods="full")
    variants = options.variants(denoiser, calibration)
    probe = pipeline_image_probe(pipe, items, IMAGE_SAMPLES, builtin.eval_steps)
    started = time.perf_counter()
    report = measure_sensitivity(denoiser, calibration, options, probe, variants)
    sensitivity_seconds = time.perf_counter() - started
    report.save(RESULTS / f"mixed-w4a4-{builtin.name}-sensitivity.json")
    layers = choices_from_report(report, CANDIDATES)
    runner = Runner(pipe, calibration, EvalSettings.for_model(args.model, args.num_samples), variants, builtin.path)
    rows = []
    for name in CANDIDATES:
        rows.append(row(name, uniform_allocation(layers, name), runner.measure(uniform_allocation(layers, name))))
        _print(rows[-1])
    for bits, act in args.points:
        allocation = allocate(layers, Budget(avg_bits=bits, avg_act_bits=act))
        rows.append({**row("mixed", allocation, runner.measure(allocation)), "budget": {"avg_bits": bits,
                                                                                      "avg_act_bits": act}})
        _print(rows[-1])
    bits, act = args.points[0]
    validation_probe = pipeline_image_probe(pipe, items, IMAGE_SAMPLES, builtin.eval_steps, seed=VALIDATION_SEED)
    budget = Budget(avg_bits=bits, avg_act_bits=act)
    chosen, picked = selection.select(denoiser, selection.contenders(report, budget), variants, validation_probe,
                                      IMAGE_SAMPLES)
    rows.append({**row("mixed-selected", chosen, runner.measure(chosen)), "budget": {"avg_bits": bits,
                                                                                   "avg_act_bits": act},
                 "selection": picked.to_dict()})
    _print(rows[-1])
    uniform = {r["kind"]: runner.sample_mse(r) for r in rows if r["kind"] in COMPARED_WITH}
    for r in rows:
        for name, errors in uniform.items():
            r["vs_" + name] = [{"seed": seed, **paired_psnr_difference(mse, errors[seed])}
                               for seed, mse in runner.sample_mse(r).items()]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"benchmark": "mixed-w4a4", "model": args.model, "date": date.today().isoformat(), "commit": commit,
              "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
              "command": "python bench/mixed_w4a4.py --model " + args.model + f" --num-samples {args.num_samples}"
                         + " --points " + " ".join(f"{b:g}:{a:g}" for b, a in args.points),
              "candidates": list(CANDIDATES), "methods": "full",
              "budget_note": "avg_bits / avg_act_bits: parameter-weighted averages over the allocated layers",
              "eval": {"num_samples": runner.settings.num_samples, "steps": runner.settings.steps,
                       "seeds": list(runner.seeds)},
              "sensitivity_seconds": round(sensitivity_seconds, 1), "quantize_seconds": round(variants.seconds, 1),
              "rows": rows}
    out = RESULTS / f"mixed-w4a4-{builtin.name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def _print(r: dict) -> None:
    print(json.dumps({k: r.get(k) for k in ("kind", "avg_bits", "avg_act_bits", "psnr_db", "counts")}), flush=True)


if __name__ == "__main__":
    main()
