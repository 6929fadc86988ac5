"""Block-sequential offloaded compression at real sizes (diffpress.placement).

`python bench/offload.py units` -> bench/results/scale-offload-units.json: for the built-ins and the
published SD1.5, SDXL and FLUX.1-dev denoiser configs (built on the meta device, no weights), the model's
bytes in bf16 and the most model bytes the offload ever holds on the device: the largest offload unit plus
the modules outside every unit (tests/test_placement.py checks a run's measured peak against exactly this
bound). Activations come on top (one call's).

`python bench/offload.py sd15 --work DIR` -> bench/results/scale-sd15.json: a full-size SD1.5 UNet (published
config, random fp16 weights written to DIR first) on this CPU, each step in a fresh process:
calibration (4 samples x 10 DDIM steps, CFG batch 8, 256px = 32x32 latents, through the offload hooks in
float32; the model held in its stored fp16), and compress with w8a8-int8 (no calibration) and w4a8-int (smoothing
search + GPTQ on the captured inputs, captured block group by block group within 1 GiB): seconds and peak RSS
(VmHWM). The w4a8-int run logs
each layer's seconds; it is stopped after --max-seconds (GPTQ on the 23040-column convs of the up blocks is
hours on 2 cores) and then reports the layers it finished. The GPU time of the whole run is *projected* from
the layer shapes (not measured): per layer, the larger of its floating-point work at an assumed sustained
20 TFLOP/s and GPTQ's column loop at an assumed 6 kernel launches of 8 us per input column.

`python bench/offload.py sd15-calls --work DIR` -> bench/results/scale-sd15-calls.json: the same sampling loop
plain and collecting, at 10 and 20 DDIM steps (calls), each in a fresh process: the collector's time overhead and
added peak RSS, and whether the addition grows with the number of calls.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from streaming import FLUX_DEV  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SDXL = {"sample_size": 128, "block_out_channels": [320, 640, 1280],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
        "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816}
SD15 = {"cross_attention_dim": 768}  # the other UNet2DConditionModel defaults are SD1.5's
ASSUMED_FLOPS, ASSUMED_LAUNCH_S, LAUNCHES_PER_COLUMN = 20e12, 8e-6, 6


def _header(command: str) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
            "date": date.today().isoformat(), "commit": commit, "command": command}


def _meta_model(name: str):
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    from diffpress.io import load_pipeline

    if name.startswith("builtin:"):
        pipe = load_pipeline(name)
        return getattr(pipe, "unet", None) or pipe.transformer
    with torch.device("meta"):
        if name == "flux-dev":
            return FluxTransformer2DModel.from_config({k: v for k, v in FLUX_DEV.items() if k != "_class_name"})
        return UNet2DConditionModel(**{"sd15": SD15, "sdxl": SDXL}[name])


def unit_bytes(model) -> dict:
    from diffpress.placement import offload_units

    units, loose = offload_units(model)
    size = lambda tensors: sum(t.numel() for t in tensors) * 2  # bf16
    largest = max(units, key=lambda u: size(u.parameters()))
    names = {id(m): n for n, m in model.named_modules()}
    total = size(model.parameters())
    bound = size(largest.parameters()) + sum(size(m.parameters(recurse=False)) for m in loose)
    return {"parameters": total // 2, "bf16_gib": round(total / 2**30, 3), "offload_units": len(units),
            "largest_unit": names[id(largest)], "largest_unit_mib": round(size(largest.parameters()) / 2**20, 1),
            "outside_units_mib": round(sum(size(m.parameters(recurse=False)) for m in loose) / 2**20, 1),
            "device_model_bytes_bound_mib": round(bound / 2**20, 1),
            "bound_fraction_of_model": round(bound / total, 4)}


def units() -> dict:
    rows = []
    for name in ("builtin:digits", "builtin:digits-flux", "sd15", "sdxl", "flux-dev"):
        rows.append({"model": name, **unit_bytes(_meta_model(name))})
        print(rows[-1], flush=True)
    return {**_header("python bench/offload.py units"), "rows": rows,
            "note": "model bytes on the device at most = the largest offload unit + the modules outside every unit "
                    "(bf16); one call's activations come on top. Configs: SD1.5 and SDXL UNet2DConditionModel, "
                    "FLUX.1-dev FluxTransformer2DModel, published configs on the meta device."}


# ------------------------------------------------------------------ SD1.5 runs, each in its own process

PEAK = "next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))"

WRITE = """
import sys, torch
from diffusers import UNet2DConditionModel
torch.manual_seed(0)
UNet2DConditionModel(cross_attention_dim=768).half().save_pretrained(sys.argv[1])
"""

CALIBRATE = """
import json, sys, time, torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffpress.calibration import calibrate
from diffpress.placement import Placement, ResidentBytes, placed
# argv: model dir, calibration out, samples, mode (collect: calibrate; plain: the same sampling loop, no collector),
# [steps (default 10)]
unet = UNet2DConditionModel.from_pretrained(sys.argv[1], torch_dtype=torch.float16).eval()  # stored dtype
samples, mode = int(sys.argv[3]), sys.argv[4]
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 10
scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
scheduler.set_timesteps(steps)
g = torch.Generator().manual_seed(0)
text = torch.randn(2 * samples, 77, 768, generator=g).half()
latents = torch.randn(samples, 4, 32, 32, generator=g).half()
def loop(denoiser):
    sample = latents
    for t in scheduler.timesteps:
        with torch.no_grad():
            noise = denoiser(torch.cat([sample, sample]), t, encoder_hidden_states=text).sample
        c, u = noise.float().chunk(2)
        sample = scheduler.step(u + 7.5 * (c - u), t, sample.float()).prev_sample.half()
tracker, started = ResidentBytes(), time.perf_counter()
with placed(unet, Placement.resolve("cpu", "float32"), tracker):
    if mode == "collect":
        result = calibrate(unet, forward_loop=loop, buckets=8, reservoir_size=2, progress=False)
    else:
        loop(unet)
seconds = time.perf_counter() - started
calls = steps
if mode == "collect":
    result.save(sys.argv[2])
    calls = len(result.timesteps)
print("RESULT", json.dumps({"mode": mode, "samples": samples, "steps": steps, "seconds": round(seconds, 1),
                            "peak_rss_gib": round(%s / 2**20, 2),
                            "device_model_bytes_peak_mib": round(tracker.peak / 2**20, 1), "calls": calls}))
""" % PEAK

COMPRESS = """
import json, sys, time, torch
import diffpress.compression.ptq as ptq
from diffpress.api import compress
log, last = [], [time.perf_counter()]
original = ptq._quantized_on_device
def timed(context, *rest):
    started = time.perf_counter()
    module = original(context, *rest)
    w = context.module.weight
    log.append({"layer": context.fqn, "shape": [w.shape[0], w[0].numel()], "rows": 0 if context.inputs is None
                else context.inputs.rows.shape[0], "seconds": round(time.perf_counter() - started, 3)})
    with open(sys.argv[4], "a") as f:
        f.write(json.dumps(log[-1]) + "\\n")
    return module
ptq._quantized_on_device = timed
started = time.perf_counter()
calibration = sys.argv[5] if len(sys.argv) > 5 else None
kwargs = {"calibration": calibration} if calibration else {}
result = compress(sys.argv[1], sys.argv[2], sys.argv[3], overwrite=True, device="cpu", compute_dtype="float32",
                  **kwargs)
print("RESULT", json.dumps({"seconds": round(time.perf_counter() - started, 1), "peak_rss_gib": round(%s / 2**20, 2),
                            "layers_quantized": len(result.report.quantized), "bytes_before": result.bytes_before,
                            "bytes_after": result.bytes_after}))
""" % PEAK


def _child(script: str, *args, timeout: float | None = None) -> dict | None:
    """The child's RESULT, or None when it ran past `timeout` seconds (then it is killed)."""
    try:
        done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))[7:])


def layer_shapes() -> list[tuple[str, int, int]]:
    """(fqn, N, K) of every layer the presets quantize in the SD1.5 UNet (the default skip list applied)."""
    from diffpress.compression.surgery import compressible_layers
    from diffpress.compression.swap import DEFAULT_SKIP, skip_reason

    model = _meta_model("sd15")
    return [(fqn, m.weight.shape[0], m.weight[0].numel()) for fqn, m in compressible_layers(model)
            if skip_reason(fqn, DEFAULT_SKIP) is None]


def projection(log: list[dict]) -> dict:
    """GPU seconds projected from every layer's shape (see the module docstring): not a measurement. Layers
    the log has not reached are assumed to see 2048 captured rows."""
    rows = {entry["layer"]: entry["rows"] for entry in log}
    total = 0.0
    for fqn, n, k in layer_shapes():
        m = max(rows.get(fqn, 2048), 1)
        flops = 2 * m * k * k + k ** 3 + 2 * n * k * k + 8 * 2 * m * n * k  # Hessian, factor, updates, alpha search
        total += max(flops / ASSUMED_FLOPS, k * LAUNCHES_PER_COLUMN * ASSUMED_LAUNCH_S)
    return {"projected_gpu_seconds": round(total, 1), "layers": len(layer_shapes()),
            "assumptions": f"{ASSUMED_FLOPS / 1e12:g} TFLOP/s sustained; GPTQ column loop {LAUNCHES_PER_COLUMN} "
                           f"launches x {ASSUMED_LAUNCH_S * 1e6:g} us per input column; a projection, not a "
                           "measurement"}


def _sd15_source(work: Path) -> Path:
    """The full-size SD1.5 UNet with random fp16 weights in WORK/sd15-unet (written once)."""
    work.mkdir(parents=True, exist_ok=True)
    source = work / "sd15-unet"
    if not (source / "config.json").exists():
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", WRITE, str(source)], check=True)
        print(f"wrote {source} in {time.perf_counter() - started:.0f} s", flush=True)
    return source


def sd15_calls(work: Path) -> dict:
    """What the collector adds to the plain sampling loop's time and peak RSS, at 10 and at 20 calls (4 samples,
    CFG batch 8, 256px): statistics memory that grew with the calls would show as a larger gap at 20."""
    source, rows = _sd15_source(work), {}
    for steps in (10, 20):
        for mode in ("plain", "collect"):
            rows[f"{mode}-{steps}"] = _child(CALIBRATE, source, work / f"calibration-{steps}.safetensors", 4, mode,
                                             steps)
            print(mode, steps, rows[f"{mode}-{steps}"], flush=True)
    for steps in (10, 20):
        plain, collect = rows[f"plain-{steps}"], rows[f"collect-{steps}"]
        rows[f"collector-{steps}"] = {"overhead": round(collect["seconds"] / plain["seconds"], 2),
                                      "added_peak_rss_gib": round(collect["peak_rss_gib"] - plain["peak_rss_gib"], 2)}
    return {**_header(f"python bench/offload.py sd15-calls --work {work}"),
            "model": "SD1.5 UNet2DConditionModel, published config, random fp16 weights (0.86B parameters)",
            "compute": "cpu, float32 through the offload hooks (the model held in its stored fp16)",
            "calibration": "4 samples x 10 or 20 DDIM steps (one call per step), CFG batch 8, 32x32 latents (256px), "
                           "8 buckets, reservoir 2; each run in a fresh process, peak RSS = its VmHWM",
            "runs": rows}


def sd15(work: Path, max_seconds: float) -> dict:
    """Each run's row is kept in WORK/rows.json as it finishes; a rerun skips the rows already there."""
    source = _sd15_source(work)
    calibration, saved = work / "calibration.safetensors", work / "rows.json"
    rows = json.loads(saved.read_text()) if saved.exists() else {}
    if "calibrate" not in rows:
        rows["calibrate"] = _child(CALIBRATE, source, calibration, 4, "collect")
        saved.write_text(json.dumps(rows, indent=1))
    for preset in ("w8a8-int8", "w4a8-int"):
        if preset in rows:
            continue
        log = work / f"{preset}-layers.jsonl"
        log.unlink(missing_ok=True)
        extra = (calibration,) if preset == "w4a8-int" else ()
        rows[preset] = _child(COMPRESS, source, preset, work / preset, log, *extra, timeout=max_seconds) or \
            {"stopped_after_seconds": max_seconds}
        saved.write_text(json.dumps(rows, indent=1))
        print(preset, rows[preset], flush=True)
    log = [json.loads(line) for line in (work / "w4a8-int-layers.jsonl").read_text().splitlines()]
    rows["w4a8-int"].update({"layers_done": len(log), "cpu_seconds_in_layers_done": round(sum(e["seconds"] for e in log), 1),
                             "slowest_layers": sorted(log, key=lambda e: -e["seconds"])[:5],
                             "gpu_projection": projection(log)})
    return {**_header(f"python bench/offload.py sd15 --work {work} --max-seconds {max_seconds:g}"),
            "model": "SD1.5 UNet2DConditionModel, published config, random fp16 weights (0.86B parameters)",
            "compute": "cpu, float32 (the offload hooks cast each block on its call; the saved model keeps fp16)",
            "calibration": "4 samples x 10 DDIM steps, CFG batch 8, 32x32 latents (256px), 8 buckets, reservoir 2",
            "runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["units", "sd15", "sd15-calls"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/diffpress-offload"))
    parser.add_argument("--max-seconds", type=float, default=3600.0,
                        help="stop the w4a8-int run after this long and report the layers it finished")
    args = parser.parse_args()
    if args.what == "units":
        result, name = units(), "scale-offload-units.json"
    elif args.what == "sd15-calls":
        result, name = sd15_calls(args.work), "scale-sd15-calls.json"
    else:
        result, name = sd15(args.work, args.max_seconds), "scale-sd15.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
