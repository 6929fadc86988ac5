"""BOS-aware quantization (MixDQ) measured on the text-to-image built-in, builtin:digits-flux (CPU).

    python bench/bos_aware.py [--num-samples 200]      # bench/results/bos-aware-digits-flux.json

The text encoder is a causal CLIP, so its first output token (BOS) is the same for every prompt. With
`bos_aware: true`, a layer whose first input token is identical in every calibration call keeps the
float output for that token. Configurations, each against the float model's samples (the eval
harness: 200 samples, the model's 20 steps and guidance 3, seed 0), with one calibration set
(32 samples x 20 steps, 8 buckets, 4 calls per bucket, the model's prompts):
- w8a8-int8 and w4a8-int as they are (the default skip list keeps `context_embedder`, the one layer
  that reads the text encoder's output directly, in high precision), without and with bos_aware;
- the same with `context_embedder` quantized too, without and with bos_aware.
Each row lists the layers that qualified (got a stored BOS output).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

from diffpress.calibration import calibrate
from diffpress.checkpoint import load_pipeline
from diffpress.compression.ptq import quantize_model
from diffpress.compression.surgery import compressed_layers, compressible_layers
from diffpress.compression.swap import DEFAULT_SKIP, skip_reason
from diffpress.evaluation import EvalSettings, evaluate_pipeline, sample_reference
from diffpress.presets import preset
from diffpress.recipe import Recipe, Rule
from diffpress.zoo import BUILTINS

MODEL = "builtin:digits-flux"
RESULTS = Path(__file__).parent / "results"


def recipe(transformer, name: str, bos_aware: bool, quantize_context_embedder: bool) -> Recipe:
    """The preset everywhere but the default skip list; with quantize_context_embedder, that one layer of the
    skip list is quantized too (the skip list applies before rules, so it is spelled out as exact skips)."""
    spec = replace(preset(name), bos_aware=bos_aware)
    if not quantize_context_embedder:
        return Recipe(spec, keep_default_skips=True)
    skipped = [fqn for fqn, _ in compressible_layers(transformer)
               if skip_reason(fqn, DEFAULT_SKIP) and fqn != "context_embedder"]
    return Recipe(spec, tuple(Rule(fqn, None) for fqn in skipped), keep_default_skips=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=200)
    args = parser.parse_args()
    builtin = BUILTINS["digits-flux"]
    pipe = load_pipeline(MODEL)
    float_transformer = pipe.transformer
    calibration = calibrate(pipe, list(builtin.calibration_prompts), steps=builtin.eval_steps, num_samples=32,
                            seed=0, buckets=8, reservoir_size=4, progress=False)
    reference = sample_reference(MODEL, EvalSettings.for_model(MODEL, args.num_samples))
    rows = []
    for name in ("w8a8-int8", "w4a8-int"):
        for quantize_context_embedder in (False, True):
            for bos_aware in (False, True):
                pipe.transformer = copy.deepcopy(float_transformer)
                started = time.perf_counter()
                plan = recipe(float_transformer, name, bos_aware, quantize_context_embedder)
                quantize_model(pipe.transformer, plan, calibration)
                seconds = time.perf_counter() - started
                side = evaluate_pipeline(reference, pipe).compressed
                qualified = [fqn for fqn, m in compressed_layers(pipe.transformer) if m.bos_out is not None]
                rows.append({"preset": name, "context_embedder_quantized": quantize_context_embedder,
                             "bos_aware": bos_aware, "psnr_db": side.psnr_db, "ssim": side.ssim,
                             "classifier_accuracy": side.classifier_accuracy,
                             "frechet_distance": side.frechet_distance, "bos_layers": qualified,
                             "quantize_seconds": round(seconds, 1)})
                print(json.dumps(rows[-1]), flush=True)
    pipe.transformer = float_transformer
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
              "date": date.today().isoformat(), "commit": commit,
              "command": f"python bench/bos_aware.py --num-samples {args.num_samples}", "model": MODEL,
              "calibration": {"samples": 32, "steps": builtin.eval_steps, "buckets": 8, "reservoir_per_bucket": 4},
              "eval": {"num_samples": args.num_samples, "steps": reference.settings.steps,
                       "guidance_scale": reference.settings.guidance_scale, "seed": 0},
              "reference": reference.metrics.to_dict(), "rows": rows}
    (RESULTS / "bos-aware-digits-flux.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
