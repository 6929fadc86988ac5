"""Calibration benchmarks (CPU): activation ranges across timestep buckets, and collector cost.

    python bench/calibration.py ranges           # bench/results/calibration-ranges.json
    python bench/calibration.py cost             # bench/results/calibration-cost.json

`ranges`: calibrates builtin:digits (64 samples x 25 DDIM steps, 10 buckets) and reports, for the
layers whose input absmax varies most across buckets, absmax and RMS per bucket: how far a single
static activation scale would be off at some timesteps.
`cost`: wall time and peak RSS of the plain run vs the same run inside the collector, for
builtin:digits (64 samples x 25 steps) and a full-size SD1.5 UNet built from its published config
with random weights (4 samples x 20 DDIM steps at 256px, CFG batch 8, random text embeddings).
Each measurement runs in a fresh subprocess so peak RSS belongs to that run alone.
"""
from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _header(command: str) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
            "date": date.today().isoformat(), "commit": commit, "command": command}


def ranges() -> dict:
    from diffpress.checkpoint import load_pipeline
    from diffpress.calibration import calibrate

    calibration = calibrate(load_pipeline("builtin:digits"), list(range(10)), steps=25,
                            num_samples=64, batch_size=64, buckets=10, reservoir_size=0, progress=False)
    spread = {}
    for layer in calibration.layers:
        absmax = [s.absmax for s in calibration.layer_stats(layer).values()]
        spread[layer] = max(absmax) / max(min(absmax), 1e-12)
    rows = []
    for layer in sorted(spread, key=spread.get, reverse=True)[:8]:
        per_bucket = calibration.layer_stats(layer)
        rows.append({"layer": layer, "max_over_min_absmax": round(spread[layer], 2),
                     "absmax_per_bucket": [round(per_bucket[b].absmax, 3) for b in sorted(per_bucket)],
                     "rms_per_bucket": [round(float(per_bucket[b].channel_rms.mean()), 4) for b in sorted(per_bucket)]})
    median = sorted(spread.values())[len(spread) // 2]
    return {**_header("python bench/calibration.py ranges"), "model": "builtin:digits", "samples": 64, "steps": 25,
            "buckets": 10, "bucket_0_is": "least noisy (t < 100)", "layers": len(spread),
            "median_max_over_min_absmax": round(median, 2), "rows": rows}


def _digits_run(collect_stats: bool) -> None:
    from diffpress.checkpoint import load_pipeline
    from diffpress.calibration import collect

    pipe = load_pipeline("builtin:digits")
    labels = torch.arange(64) % 10
    pipe(labels[:2], 2)  # warm-up
    started = time.perf_counter()
    if collect_stats:
        with collect(pipe, buckets=8, reservoir_size=8):
            pipe(labels, 25, generator=torch.Generator().manual_seed(0))
    else:
        pipe(labels, 25, generator=torch.Generator().manual_seed(0))
    _report(time.perf_counter() - started)


def _sd15_run(collect_stats: bool) -> None:
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from diffpress.calibration import collect

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768).eval()  # the other defaults are SD1.5's
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    text = torch.randn(8, 77, 768)
    latents = torch.randn(4, 4, 32, 32)  # 256px: 512px takes ~20 min per pass on 2 cores
    scheduler.set_timesteps(20)

    def loop(denoiser):
        sample = latents
        for t in scheduler.timesteps:
            with torch.no_grad():
                noise = denoiser(torch.cat([sample, sample]), t, encoder_hidden_states=text).sample
            conditional, unconditional = noise.chunk(2)
            sample = scheduler.step(unconditional + 7.5 * (conditional - unconditional), t, sample).prev_sample

    started = time.perf_counter()
    if collect_stats:
        with collect(unet, buckets=8, reservoir_size=2):
            loop(unet)
    else:
        loop(unet)
    _report(time.perf_counter() - started)


def _report(seconds: float) -> None:
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def _measure(model: str, mode: str) -> dict:
    output = subprocess.run([sys.executable, __file__, "_run", model, mode], capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def cost(models: list[str]) -> dict:
    rows = []
    for model in models:
        plain, collected = _measure(model, "plain"), _measure(model, "collect")
        rows.append({"model": model, "plain": plain, "collect": collected,
                     "overhead_ratio": round(collected["seconds"] / plain["seconds"], 2)})
        print(rows[-1], flush=True)
    return {**_header("python bench/calibration.py cost " + " ".join(models)), "rows": rows,
            "workloads": {"digits": "builtin:digits, 64 samples x 25 DDIM steps, batch 64, 8 buckets, reservoir 8",
                          "sd15": "SD1.5 UNet (random weights), 4 samples x 20 DDIM steps, 256px (32x32 latents), CFG batch 8, "
                                  "8 buckets, reservoir 2"}}


def main() -> None:
    command = sys.argv[1]
    if command == "_run":
        {"digits": _digits_run, "sd15": _sd15_run}[sys.argv[2]](sys.argv[3] == "collect")
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    if command == "ranges":
        result, name = ranges(), "calibration-ranges.json"
    else:
        result, name = cost(sys.argv[2:] or ["digits", "sd15"]), "calibration-cost.json"
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
