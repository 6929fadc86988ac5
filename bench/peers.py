"""diffpress next to optimum-quanto and torchao on builtin:digits: same model, labels, noise, steps, metrics.

    pip install optimum-quanto==0.2.7 torchao==0.18.0   # benchmark-only; not a diffpress dependency
    python bench/peers.py [--num-samples 200] [--steps 25] [--seed 0]
    python bench/peers.py --markdown                   # print the tables from the saved JSON

The reference is sampled once (diffpress.evaluation.sample_reference) and every candidate is scored
against it with diffpress.evaluation.evaluate_pipeline, i.e. the harness behind `diffpress eval`:
PSNR/SSIM against the reference model's own samples, classifier accuracy, Frechet distance in the
classifier's feature space, bytes of the denoiser's tensors (inner tensors of quantized tensor
subclasses, not their logical size) and sampling seconds.

Layers: every tool quantizes the layers diffpress quantizes by default, i.e. every Linear/Conv2d of
the UNet except those diffpress.compression.swap.DEFAULT_SKIP keeps in high precision (the embedders,
conv_in, conv_out); quanto gets them as an exclude list, torchao as a filter_fn. torchao 0.18's int8
tensors do not implement convolution, so torchao quantizes the Linear layers of that set only, and
diffpress is also run on those Linear layers alone (a Recipe with one rule per layer name) so that
this comparison is at equal layers too.

Writes bench/results/peers-digits.json: one entry per --num-samples under "runs" (a new run with
the same sample count replaces the old one; a run with --only replaces just its rows when the
reference samples came out the same, and its command is appended to the run's command).
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from datetime import date
from pathlib import Path

import torch
from torch import nn

from diffpress import io
from diffpress.api import compress
from diffpress.compression.surgery import compressible_layers as quantizable_layers
from diffpress.compression.swap import DEFAULT_SKIP, skip_reason
from diffpress.evaluation import EvalSettings, ReferenceRun, evaluate_pipeline, load_reference_pipeline, sample_reference
from diffpress.metrics import state_bytes
from diffpress.presets import preset
from diffpress.recipe import Recipe, Rule
from diffpress.zoo.digits import IMAGE_SIZE, NUM_CLASSES

MODEL = "builtin:digits"
RESULTS = Path(__file__).parent / "results" / "peers-digits.json"
ALL = "linear+conv2d"  # the layer set diffpress quantizes by default
LINEAR = "linear"  # its Linear layers only

# Rows: (tool, config, bits, layer set). Each tool's runner knows its configs.
DIFFPRESS_ROWS = [
    ("w8a16-int8", "W8 int8 per-channel, A fp32", ALL),
    ("w8a16-fp8", "W8 fp8-e4m3 per-channel, A fp32", ALL),
    ("w4a16-int4", "W4 int4 g128 (MSE clipping), A fp32", ALL),
    ("w4a16-uint4", "W4 int4 asymmetric g128 (uint8 zero point per group, MSE-searched range), A fp32", ALL),
    ("w8a8-int8", "W8 int8 per-channel, A8 int8 dynamic per-token", ALL),
    ("w8a8-fp8", "W8 fp8-e4m3 per-channel, A8 fp8-e4m3 dynamic per-token", ALL),
    ("w8a16-int8", "W8 int8 per-channel, A fp32", LINEAR),
    ("w4a16-int4", "W4 int4 g128 (MSE clipping), A fp32", LINEAR),
    ("w8a8-int8", "W8 int8 per-channel, A8 int8 dynamic per-token", LINEAR),
]
QUANTO_ROWS = [
    ("qint8", "W8 int8 per-channel (absmax), A fp32", ALL),
    ("qfloat8", "W8 fp8-e4m3 per-channel (absmax), A fp32", ALL),
    ("qint4", "W4 int4 asymmetric, group 128 reduced to a divisor of K (min/max), per-channel where K <= 128, "
              "A fp32", ALL),
    ("qint8+act-qint8", "W8 int8 per-channel, A8 int8 static per-tensor (calibrated)", ALL),
    ("qfloat8+act-qfloat8", "W8 fp8-e4m3 per-channel, A8 fp8-e4m3 static per-tensor (calibrated)", ALL),
]
TORCHAO_ROWS = [
    ("Int8WeightOnlyConfig", "W8 int8 per-row (= per output channel), A fp32", LINEAR),
    ("Int8DynamicActivationInt8WeightConfig", "W8 int8 per-row, A8 int8 dynamic per-token", LINEAR),
    ("Int4WeightOnlyConfig(group_size=128)", "W4 int4 g128, A fp32", LINEAR),
    ("IntxWeightOnlyConfig(int4, PerGroup(min(128, K)))", "W4 int4 symmetric, group min(128, K), stored one "
                                                         "int8 per value, A fp32", LINEAR),
]

# Which rows are at equal bits, for the verdict table: (label, diffpress row, peer rows).
COMPARISONS = [
    ("W8 int8 weight-only, Linear+Conv2d", ("diffpress", "w8a16-int8", ALL), [("optimum-quanto", "qint8", ALL)]),
    ("W8 fp8 weight-only, Linear+Conv2d", ("diffpress", "w8a16-fp8", ALL), [("optimum-quanto", "qfloat8", ALL)]),
    ("W4 int4 weight-only, Linear+Conv2d", ("diffpress", "w4a16-int4", ALL), [("optimum-quanto", "qint4", ALL)]),
    ("W4 asymmetric int4 weight-only, Linear+Conv2d", ("diffpress", "w4a16-uint4", ALL),
     [("optimum-quanto", "qint4", ALL)]),
    ("W8A8 int8, Linear+Conv2d", ("diffpress", "w8a8-int8", ALL), [("optimum-quanto", "qint8+act-qint8", ALL)]),
    ("W8A8 fp8, Linear+Conv2d", ("diffpress", "w8a8-fp8", ALL), [("optimum-quanto", "qfloat8+act-qfloat8", ALL)]),
    ("W8 int8 weight-only, Linear only", ("diffpress", "w8a16-int8", LINEAR),
     [("torchao", "Int8WeightOnlyConfig", LINEAR)]),
    ("W8A8 int8, Linear only", ("diffpress", "w8a8-int8", LINEAR),
     [("torchao", "Int8DynamicActivationInt8WeightConfig", LINEAR)]),
    ("W4 int4 weight-only, Linear only", ("diffpress", "w4a16-int4", LINEAR),
     [("torchao", "Int4WeightOnlyConfig(group_size=128)", LINEAR),
      ("torchao", "IntxWeightOnlyConfig(int4, PerGroup(min(128, K)))", LINEAR)]),
]


# ------------------------------------------------------------------ layer sets

def layer_sets(denoiser: nn.Module) -> dict[str, list[str]]:
    """The layers diffpress quantizes by default (not on DEFAULT_SKIP), and their Linear subset."""
    chosen = [(fqn, module) for fqn, module in quantizable_layers(denoiser) if not skip_reason(fqn, DEFAULT_SKIP)]
    return {ALL: [fqn for fqn, _ in chosen], LINEAR: [fqn for fqn, m in chosen if isinstance(m, nn.Linear)]}


def model_bytes(denoiser: nn.Module) -> int:
    return state_bytes(denoiser)


# ------------------------------------------------------------------ diffpress

def run_diffpress(config: str, layers: list[str], layer_set: str, scratch: Path):
    """api.compress to a directory (a preset, or the preset's plan on the named layers only), then io.load."""
    out = scratch / f"diffpress-{config}-{layer_set.replace('+', '-')}"
    if layer_set == ALL:
        result = compress(MODEL, config, out)
    else:
        recipe = Recipe(default=None, rules=tuple(Rule(fqn, preset(config)) for fqn in layers))
        result = compress(MODEL, recipe, out)
    return io.load(out), result.seconds, list(result.report.quantized), {}


# ------------------------------------------------------------------ optimum-quanto

def calibration_batches(settings: EvalSettings, num_samples: int, seed: int):
    """(labels, noise) for the activation calibration runs: the eval's label cycle, noise from another seed."""
    labels = torch.arange(num_samples) % NUM_CLASSES
    noise = torch.randn(num_samples, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
    return labels, noise


def run_quanto(config: str, layers: list[str], settings: EvalSettings, calib: dict):
    from optimum.quanto import Calibration, QModuleMixin, freeze, qfloat8, qint4, qint8, quantize

    weights, _, act = config.partition("+act-")
    qtypes = {"qint8": qint8, "qint4": qint4, "qfloat8": qfloat8}
    pipe, _ = load_reference_pipeline(MODEL)
    unet = pipe.unet
    exclude = [fqn for fqn, _ in quantizable_layers(unet) if fqn not in set(layers)]
    started = time.perf_counter()
    quantize(unet, weights=qtypes[weights], activations=qtypes[act] if act else None, exclude=exclude)
    notes = {}
    if act:
        labels, noise = calibration_batches(settings, calib["num_samples"], calib["seed"])
        with torch.no_grad(), Calibration():
            pipe(labels, calib["steps"], settings.guidance_scale, noise=noise)
        notes["calibration"] = (f"quanto Calibration() (momentum 0.9, streamline) around one pipeline call: "
                                f"{calib['num_samples']} samples x {calib['steps']} DDIM steps, labels 0..9 cycled, "
                                f"noise from seed {calib['seed']} (the eval uses seed {settings.seed})")
    freeze(unet)
    seconds = time.perf_counter() - started
    quantized = [fqn for fqn, m in unet.named_modules() if isinstance(m, QModuleMixin)]
    groups = sorted({m.weight_group_size or 0 for _, m in unet.named_modules() if isinstance(m, QModuleMixin)})
    if weights == "qint4":
        notes["group_sizes"] = "0 = per output channel; " + ", ".join(map(str, groups))
    return pipe, seconds, quantized, notes


# ------------------------------------------------------------------ torchao

def run_torchao(config: str, layers: list[str], settings: EvalSettings, calib: dict):
    from torchao.quantization import (Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                      Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_)
    from torchao.quantization.granularity import PerGroup

    pipe, _ = load_reference_pipeline(MODEL)
    unet = pipe.unet
    wanted = set(layers)
    chosen = lambda extra: (lambda module, fqn: isinstance(module, nn.Linear) and fqn in wanted and extra(module))
    started = time.perf_counter()
    notes = {}
    if config.startswith("IntxWeightOnlyConfig"):
        # diffpress's g128 is one group per row where K < 128; torchao needs K % group == 0, so the same grouping
        # is two passes: group 128 where K is a multiple of 128, group K elsewhere.
        sizes = sorted({unet.get_submodule(fqn).in_features for fqn in layers})
        for k in sizes:
            group = 128 if k % 128 == 0 else k
            quantize_(unet, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group)),
                      filter_fn=chosen(lambda m, k=k: m.in_features == k))
        notes["group_sizes"] = ", ".join(f"K={k}: {128 if k % 128 == 0 else k}" for k in sizes)
    else:
        make = {"Int8WeightOnlyConfig": Int8WeightOnlyConfig,
                "Int8DynamicActivationInt8WeightConfig": Int8DynamicActivationInt8WeightConfig,
                "Int4WeightOnlyConfig(group_size=128)": lambda: Int4WeightOnlyConfig(group_size=128)}[config]
        quantize_(unet, make(), filter_fn=chosen(lambda m: True))
    seconds = time.perf_counter() - started
    quantized = [fqn for fqn, m in unet.named_modules()
                 if isinstance(m, (nn.Linear, nn.Conv2d)) and hasattr(m.weight, "__tensor_flatten__")]
    return pipe, seconds, quantized, notes


def int4_cpu_attempts() -> list[str]:
    """Every Int4WeightOnlyConfig packing format of torchao 0.18, tried on one float32 Linear on the CPU."""
    from torchao.quantization import Int4WeightOnlyConfig, quantize_
    from torchao.quantization.quantize_.workflows.int4.int4_packing_format import Int4PackingFormat

    outcomes = []
    for fmt in Int4PackingFormat:
        for dtype in (torch.float32, torch.bfloat16):
            layer = nn.Sequential(nn.Linear(128, 64)).to(dtype)
            try:
                quantize_(layer, Int4WeightOnlyConfig(group_size=128, int4_packing_format=fmt))
                layer(torch.randn(4, 128, dtype=dtype))
                outcomes.append(f"{fmt.value}/{str(dtype).removeprefix('torch.')}: runs")
            except Exception as error:  # noqa: BLE001 - recorded verbatim
                outcomes.append(f"{fmt.value}/{str(dtype).removeprefix('torch.')}: {first_line(error)}")
    return outcomes


# ------------------------------------------------------------------ driver

def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:400]


def versions() -> dict:
    found = {}
    for name in ("diffusers", "optimum-quanto", "torchao"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()


def measure(reference: ReferenceRun, tool: str, config: str, bits: str, layer_set: str, sets: dict,
            runner, progress: bool) -> dict:
    row = {"tool": tool, "config": config, "bits": bits, "layer_set": layer_set}
    try:
        pipe, compress_seconds, quantized, notes = runner(config, sets[layer_set])
        missing = sorted(set(sets[layer_set]) - set(quantized))
        extra = sorted(set(quantized) - set(sets[layer_set]))
        result = evaluate_pipeline(reference, pipe, progress)
        side = result.compressed
        row.update(layers_quantized=len(quantized), psnr_db=side.psnr_db, psnr_ci95_db=side.psnr_ci95_db, ssim=side.ssim,
                   accuracy=side.classifier_accuracy, frechet=side.frechet_distance, size_bytes=side.size_bytes,
                   compress_seconds=round(compress_seconds, 2), sample_seconds=round(side.seconds, 2),
                   error=None, **notes)
        row["_sample_mse"] = side.sample_mse  # for the paired comparisons; not saved
        if missing or extra:
            row["layer_mismatch"] = {"not_quantized": missing, "unexpected": extra}
    except Exception as error:  # noqa: BLE001 - a peer that fails is a result, recorded verbatim
        row.update(layers_quantized=0, psnr_db=None, ssim=None, accuracy=None, frechet=None, size_bytes=None,
                   compress_seconds=None, sample_seconds=None, error=first_line(error))
        traceback.print_exc(limit=-2)
    return row


def run(args) -> dict:
    settings = EvalSettings(num_samples=args.num_samples, steps=args.steps, seed=args.seed)
    calib = {"num_samples": args.calib_samples, "steps": args.steps, "seed": args.seed + 1}
    float_pipe, _ = load_reference_pipeline(MODEL)
    sets = layer_sets(float_pipe.unet)
    reference = sample_reference(MODEL, settings, progress=args.progress)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        plan = ([("diffpress", c, b, s) for c, b, s in DIFFPRESS_ROWS]
                + [("optimum-quanto", c, b, s) for c, b, s in QUANTO_ROWS]
                + [("torchao", c, b, s) for c, b, s in TORCHAO_ROWS])
        for tool, config, bits, layer_set in plan:
            if args.only and not any(word in f"{tool} {config} {layer_set}" for word in args.only):
                continue
            runner = {"diffpress": lambda c, layers, s=layer_set: run_diffpress(c, layers, s, Path(scratch)),
                      "optimum-quanto": lambda c, layers: run_quanto(c, layers, settings, calib),
                      "torchao": lambda c, layers: run_torchao(c, layers, settings, calib)}[tool]
            row = measure(reference, tool, config, bits, layer_set, sets, runner, args.progress)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "_sample_mse"}), flush=True)
    paired = paired_comparisons(rows)
    for row in rows:
        row.pop("_sample_mse", None)
    int4_attempts = int4_cpu_attempts() if not args.only or any("Int4" in w for w in args.only) else None
    reference_row = {"psnr_db": None, "ssim": None, "accuracy": reference.metrics.classifier_accuracy,
                     "frechet": reference.metrics.frechet_distance, "size_bytes": reference.metrics.size_bytes,
                     "sample_seconds": round(reference.metrics.seconds, 2)}
    command = f"python bench/peers.py --num-samples {args.num_samples} --steps {args.steps} --seed {args.seed}"
    command += f" --calib-samples {args.calib_samples}" if args.calib_samples != 32 else ""
    command += (" --only " + " ".join(args.only)) if args.only else ""
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "diffpress").splitlines()]
    return {
        "command": command, "commit": git("rev-parse", "HEAD"), "diffpress_files_modified_in_worktree": dirty,
        "date": date.today().isoformat(),
        "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads; cores shared with other jobs, "
                  "so seconds are indicative)",
        "python": platform.python_version(), "torch": torch.__version__, **versions(),
        "model": MODEL, "num_samples": args.num_samples, "steps": args.steps, "seed": args.seed,
        "guidance_scale": settings.guidance_scale, "quanto_activation_calibration": calib,
        "layer_sets": {name: {"count": len(fqns), "layers": fqns} for name, fqns in sets.items()},
        "high_precision_everywhere": [fqn for fqn, _ in quantizable_layers(float_pipe.unet)
                                      if skip_reason(fqn, DEFAULT_SKIP)],
        "compress_seconds_note": "diffpress: api.compress end to end (load, quantize, save to disk), evaluated "
                                 "after io.load; peers: quantize (+ calibration) + freeze on an already loaded "
                                 "model, evaluated in memory",
        "torchao_int4_weight_only_cpu_attempts": int4_attempts,
        "reference": reference_row, "rows": rows, "paired": paired,
    }


def paired_comparisons(rows: list[dict]) -> list[dict]:
    """Each equal-bits pair measured in this run: diffpress's PSNR minus the peer's over the same samples, with
    the paired bootstrap 95% interval."""
    from diffpress.metrics import paired_psnr_difference

    result = []
    for label, ours_key, peer_keys in COMPARISONS:
        ours = find(rows, *ours_key)
        for peer_key in peer_keys:
            peer = find(rows, *peer_key)
            if ours is None or peer is None or "_sample_mse" not in ours or "_sample_mse" not in peer:
                continue
            difference = paired_psnr_difference(ours["_sample_mse"], peer["_sample_mse"])
            result.append({"pair": label, "diffpress": ours_key[1], "peer": f"{peer_key[0]} {peer_key[1]}",
                           "difference_db": round(difference["difference_db"], 3),
                           "ci95_db": [round(v, 3) for v in difference["ci95_db"]]})
    return result


# ------------------------------------------------------------------ tables

def mb(size) -> str:
    return f"{size / 1e6:.2f} MB" if size is not None else ""


def fmt(value, digits, percent=False) -> str:
    if value is None:
        return ""
    return f"{100 * value:.1f}%" if percent else f"{value:.{digits}f}"


def find(rows, tool, config, layer_set):
    return next((r for r in rows if (r["tool"], r["config"], r["layer_set"]) == (tool, config, layer_set)), None)


def verdict(ours: dict | None, peer: dict | None) -> list[str]:
    """Cells of the equal-bits table: PSNR, accuracy, Frechet, bytes (diffpress / peer) and the plain verdict."""
    if ours is None or ours.get("error") or peer is None:
        return ["", "", "", "", "not measured (" + ("diffpress row failed: " + ours["error"] if ours and
                                                   ours.get("error") else "row missing") + ")"]
    if peer.get("error"):
        return ["", "", "", "", "peer does not run on CPU: " + peer["error"]]
    pair = lambda key, f: f"{f(ours[key])} / {f(peer[key])}"
    cells = [pair("psnr_db", lambda v: f"{v:.2f}"), pair("accuracy", lambda v: f"{100 * v:.1f}%"),
             pair("frechet", lambda v: f"{v:.1f}"), pair("size_bytes", lambda v: f"{v:,}")]
    gap = ours["psnr_db"] - peer["psnr_db"]
    if abs(gap) < 0.005:
        words = "tie: same PSNR"
    else:
        words = f"diffpress {'better' if gap > 0 else 'WORSE'} by {abs(gap):.2f} dB PSNR"
    others = []
    if abs(ours["accuracy"] - peer["accuracy"]) >= 0.005:
        others.append(f"{'higher' if ours['accuracy'] > peer['accuracy'] else 'lower'} accuracy")
    if abs(ours["frechet"] - peer["frechet"]) >= 0.05:
        others.append(f"{'lower (better)' if ours['frechet'] < peer['frechet'] else 'higher (worse)'} Frechet")
    if ours["size_bytes"] != peer["size_bytes"]:
        diff = ours["size_bytes"] - peer["size_bytes"]
        others.append(f"{abs(diff):,} {'fewer' if diff < 0 else 'more'} bytes "
                      f"({100 * abs(diff) / peer['size_bytes']:.2f}%)")
    return cells + [words + ("; " + ", ".join(others) if others else "")]


def markdown(run_: dict) -> str:
    rows, ref = run_["rows"], run_["reference"]
    lines = [f"`{run_['command']}`: {run_['num_samples']} samples, {run_['steps']} DDIM steps, seed {run_['seed']}, "
             f"torch {run_['torch']}, optimum-quanto {run_['optimum-quanto']}, torchao {run_['torchao']}, "
             f"commit {run_['commit'][:7]}. Reference: accuracy {100 * ref['accuracy']:.1f}%, "
             f"Frechet {ref['frechet']:.1f}, {mb(ref['size_bytes'])}, sampling {ref['sample_seconds']:.1f} s. "
             f"Layers: `{ALL}` = the {run_['layer_sets'][ALL]['count']} Linear/Conv2d layers diffpress quantizes "
             f"(all but {', '.join(run_['high_precision_everywhere'])}); `{LINEAR}` = its "
             f"{run_['layer_sets'][LINEAR]['count']} Linear layers.", "",
             "| tool | config | bits | layers | PSNR dB | SSIM | accuracy | Frechet | bytes | compress s | sample s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['tool']} | {r['config']} | {r['bits']} | {r['layer_set']} | "
                         f"{'failed' if r['tool'] == 'diffpress' else 'does not run on CPU'}: {r['error']} |  |  |  |  |  |  |")
            continue
        lines.append(f"| {r['tool']} | {r['config']} | {r['bits']} | {r['layer_set']} ({r['layers_quantized']}) | "
                     f"{fmt(r['psnr_db'], 2)} | {fmt(r['ssim'], 4)} | {fmt(r['accuracy'], 1, True)} | "
                     f"{fmt(r['frechet'], 1)} | {mb(r['size_bytes'])} | {fmt(r['compress_seconds'], 2)} | "
                     f"{fmt(r['sample_seconds'], 1)} |")
    lines += ["", "At equal bits and equal layers (pairs: diffpress / peer):", "",
              "| equal bits | diffpress | peer | PSNR dB | accuracy | Frechet | bytes | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for label, ours_key, peer_keys in COMPARISONS:
        ours = find(rows, *ours_key)
        for peer_key in peer_keys:
            cells = verdict(ours, find(rows, *peer_key))
            lines.append(f"| {label} | {ours_key[1]} | {peer_key[0]} {peer_key[1]} | " + " | ".join(cells) + " |")
    if run_.get("paired"):
        lines += ["", "Paired over the same samples (bootstrap 95% interval of diffpress minus peer, dB): "
                  + "; ".join(f"{p['diffpress']} vs {p['peer']}: {p['difference_db']:+.2f} "
                              f"[{p['ci95_db'][0]:+.2f}, {p['ci95_db'][1]:+.2f}]" for p in run_["paired"]) + "."]
    if run_.get("torchao_int4_weight_only_cpu_attempts"):
        lines += ["", "torchao `Int4WeightOnlyConfig(group_size=128)` on one Linear on the CPU, every packing format "
                  "(float32 and bfloat16): " + "; ".join(run_["torchao_int4_weight_only_cpu_attempts"]) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calib-samples", type=int, default=32,
                        help="samples of the quanto activation-calibration run (noise seed: --seed + 1)")
    parser.add_argument("--only", nargs="+", help="run only rows whose 'tool config layer-set' contains a word")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="print the tables of the saved JSON and exit")
    args = parser.parse_args()
    if not args.markdown:
        warnings.filterwarnings("ignore")
        result = run(args)
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"model": MODEL, "runs": []}
    if not args.markdown:
        saved["runs"] = merge(saved["runs"], result, partial=bool(args.only))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(saved, indent=1) + "\n")
    for run_ in saved["runs"]:
        print(markdown(run_) + "\n")


def merge(runs: list[dict], result: dict, partial: bool) -> list[dict]:
    """Replace the run with the same sample count; an --only run replaces just its rows in it.

    The rows of an --only run join a saved run only when the reference came out the same (same settings,
    so same labels, noise and samples; accuracy and Frechet distance within 1e-4 relative, which thread
    counts and float32/float64 means move); otherwise the --only run is saved beside it.
    """
    same = lambda r: (r["num_samples"], r["steps"], r["seed"]) == (result["num_samples"], result["steps"],
                                                                   result["seed"])
    old = next((r for r in runs if same(r)), None)
    keep = [r for r in runs if not same(r)]
    close = lambda a, b: a == b or (isinstance(a, float) and isinstance(b, float) and abs(a - b) <= 1e-4 * abs(b))
    if partial and old is not None and not all(close(old["reference"][k], result["reference"][k])
                                               for k in ("accuracy", "frechet", "size_bytes")):
        keep.append(old)  # a different reference: the partial run is saved beside the full one, never over it
    elif partial and old is not None:
        key = lambda row: (row["tool"], row["config"], row["layer_set"])
        fresh = {key(row): row for row in result["rows"]}
        old["rows"] = [fresh.pop(key(row), row) for row in old["rows"]] + list(fresh.values())
        old["command"] = f"{old['command']}; then {result['command']}"
        for name in ("commit", "diffpress_files_modified_in_worktree", "date"):
            if old.get(name) != result.get(name):
                old[f"{name}_of_second_command"] = result.get(name)
        if result.get("torchao_int4_weight_only_cpu_attempts"):
            old["torchao_int4_weight_only_cpu_attempts"] = result["torchao_int4_weight_only_cpu_attempts"]
        pairs = lambda p: (p["diffpress"], p["peer"])
        new_pairs = {pairs(p) for p in result.get("paired", [])}
        old["paired"] = [p for p in old.get("paired", []) if pairs(p) not in new_pairs] + result.get("paired", [])
        result = old
    return sorted(keep + [result], key=lambda r: r["num_samples"])


if __name__ == "__main__":
    sys.exit(main())
