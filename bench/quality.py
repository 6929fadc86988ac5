"""Picture quality of each preset on a built-in model (CPU), via the eval harness.

    python bench/quality.py [--model builtin:digits] [--num-samples 500] [--presets w8a16-int8 ...] [--merge]

Writes bench/results/quality-NAME.json: for each preset, what `diffpress eval MODEL --compressed DIR
--num-samples N --seed 0` reports (the model's own sampler steps and guidance unless given), the
compression seconds, and whether the saved directory reloads bit-exactly: the denoiser from
`diffpress.load`, from plain diffusers `from_pretrained` and from a `save_pretrained` copy give
identical outputs on a fixed call. With --merge, the rows of the presets run replace theirs in the saved
file (which must hold the same model, sample count, steps and reference), and the others are kept.
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

from diffpress import io
from diffpress.api import compress
from diffpress.checkpoint import pipeline_class
from diffpress.evaluation import EvalSettings, evaluate_pipeline, sample_reference
from diffpress.presets import PRESETS


def reloads_bit_exactly(directory: Path, pipe, scratch: Path) -> bool:
    """diffpress.load, diffusers from_pretrained and a save_pretrained copy give the same samples."""
    other = pipeline_class(directory).from_pretrained(directory)
    other.save_pretrained(scratch)
    copy = pipeline_class(scratch).from_pretrained(scratch)
    labels, noise = torch.tensor([1, 7]), torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    draw = lambda p: p.draw(labels, 3, 1.0, noise)
    expected = draw(pipe)
    return torch.equal(draw(other), expected) and torch.equal(draw(copy), expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="guidance (default: the model's)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--merge", action="store_true", help="replace only these presets' rows in the saved file")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    settings = EvalSettings.for_model(args.model, args.num_samples, args.steps, 0, args.guidance_scale)
    reference = sample_reference(args.model, settings)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for preset in args.presets:
            started = time.perf_counter()
            out = compress(args.model, preset, Path(scratch) / preset).out
            compress_seconds = time.perf_counter() - started
            pipe = io.load(out)
            result = evaluate_pipeline(reference, pipe)
            rows.append({"format": preset, **result.compressed.to_dict(), "compress_seconds": round(compress_seconds, 2),
                         "denoiser_bytes": result.compressed.size_bytes,
                         "reload_bit_exact": reloads_bit_exactly(out, pipe, Path(scratch) / f"{preset}-copy")})
            print(json.dumps(rows[-1]), flush=True)
    name = args.model.removeprefix("builtin:")
    command = f"python bench/quality.py --model {args.model} --num-samples {args.num_samples}" + (
        f" --presets {' '.join(args.presets)}" if args.presets != list(PRESETS) else "")
    report = {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
              "date": date.today().isoformat(), "commit": commit, "command": command, "model": args.model,
              "seed": 0, "steps": settings.steps, "guidance_scale": settings.guidance_scale,
              "reference": reference.metrics.to_dict(), "rows": rows}
    out = Path(__file__).parent / "results" / f"quality-{name}.json"
    if args.merge:
        report = merged(json.loads(out.read_text()), report)
    out.write_text(json.dumps(report, indent=1) + "\n")


def merged(saved: dict, new: dict) -> dict:
    """`saved` with the rows of `new` in place of theirs; the runs must share model, samples and reference."""
    same = ("classifier_accuracy", "frechet_distance", "size_bytes")  # of the reference samples (not their seconds)
    if (saved["model"], saved.get("steps"), [saved["reference"][k] for k in same]) != (
            new["model"], new["steps"], [new["reference"][k] for k in same]):
        raise SystemExit("--merge: the saved results come from another model, step count or reference")
    replaced = {row["format"] for row in new["rows"]}
    saved["rows"] = [row for row in saved["rows"] if row["format"] not in replaced] + new["rows"]
    saved["merged"] = saved.get("merged", []) + [{"command": new["command"] + " --merge", "commit": new["commit"],
                                                   "date": new["date"], "formats": sorted(replaced)}]
    return saved


if __name__ == "__main__":
    main()
