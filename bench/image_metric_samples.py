"""How the image metric's error splits over its samples on a built-in model (CPU).

    python bench/image_metric_samples.py [--model builtin:digits-flux]
        # bench/results/image-metric-samples-NAME.json

The sensitivity run's image probe (16 samples, the model's sampler steps, seed 0) is sampled with one layer's
weight perturbed by Gaussian noise (relative scale 1e-3 and 1e-2 of the weight's mean magnitude), for layers
spread over the sensitivity ranking of bench/results/mixed-precision-NAME-sensitivity.json. Per perturbation:
the pooled relative error (what the image metric's cost was), each sample's relative error, the largest
sample's share of the pooled error, and the typical error (geometric mean over the samples, the cost now).
A share near 1 means one sample's move to another mode is the whole pooled error.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
from datetime import date
from pathlib import Path

import torch

from diffpress.checkpoint import load_pipeline
from diffpress.compression.sensitivity.image_metric import (image_score, per_sample_error,
                                                             pipeline_image_probe, sample)
from diffpress.zoo import BUILTINS

RESULTS = Path(__file__).parent / "results"
SCALES = (1e-3, 1e-2)
PICKS = (0, 10, 40, 0.5, -10, -1)  # positions in the ranking (0.5: the middle), least to most sensitive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits-flux")
    parser.add_argument("--candidate", default="w4a8-int", help="whose image errors order the layers")
    args = parser.parse_args()
    torch.set_num_threads(1)
    builtin = BUILTINS[args.model.removeprefix("builtin:")]
    pipe = load_pipeline(args.model)
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    items = list(builtin.calibration_labels or builtin.calibration_prompts)
    probe = pipeline_image_probe(pipe, items, 16, builtin.eval_steps)
    reference = sample(probe, denoiser)
    image = json.loads((RESULTS / f"mixed-precision-{builtin.name}-sensitivity.json").read_text())["image"]
    ranked = sorted(image, key=lambda fqn: image[fqn][args.candidate]["relative_error"])
    layers = [ranked[int(p * (len(ranked) - 1)) if isinstance(p, float) else p] for p in PICKS]
    rows = []
    for fqn in layers:
        module = denoiser.get_submodule(fqn)
        weight = module.weight.data.clone()
        generator = torch.Generator().manual_seed(0)
        for scale in SCALES:
            module.weight.data = weight + scale * weight.abs().mean() * torch.randn(weight.shape, generator=generator)
            images = sample(probe, denoiser)
            per_sample = per_sample_error(reference, images)
            score = image_score(reference, images)
            rows.append({"layer": fqn, "noise_scale": scale, "pooled_error": score.relative_error,
                         "typical_error": score.typical_error, "largest_sample_share": float(per_sample.max() / per_sample.sum()),
                         "per_sample_error": [float(e) for e in per_sample]})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_sample_error"}), flush=True)
        module.weight.data = weight
    shares = [r["largest_sample_share"] for r in rows]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"benchmark": "image-metric-samples", "model": args.model, "date": date.today().isoformat(),
              "commit": commit, "machine": f"{platform.machine()} CPU, torch {torch.__version__}, 1 thread",
              "command": "python bench/image_metric_samples.py --model " + args.model, "samples": 16,
              "steps": builtin.eval_steps, "largest_sample_share": {"min": min(shares), "median": statistics.median(shares),
                                                                     "max": max(shares)}, "rows": rows}
    out = RESULTS / f"image-metric-samples-{builtin.name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}: largest sample's share of the pooled error {min(shares):.2f}-{max(shares):.2f}, "
          f"median {statistics.median(shares):.2f}")


if __name__ == "__main__":
    main()
