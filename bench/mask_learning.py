"""Mask-learning variants on a built-in model: budget control, per-step loss, longer learning (CPU).

    python bench/mask_learning.py --model builtin:digits [--targets 0.9 0.8] [--num-samples 200] [--seeds 0 1]
        [--only penalty projected]

Each row prunes the float model in memory to a target fraction of its parameters with the learned mask and one
set of LearnOptions (the defaults otherwise), then samples it against the float model at identical seeds
at every evaluation seed: PSNR with its bootstrap 95% interval, SSIM, classifier accuracy (interval),
Frechet distance, and every row's paired PSNR difference to the first row of its target (the default
options) over the same samples. Writes bench/results/mask-learning-NAME.json.
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

import diffpress
from seeded_eval import SeededReferences

VARIANTS = [
    ("default (penalty, taylor cut as a candidate, held-out cut checks)", {}),
    ("taylor warm start", {"warm_start": "taylor"}),
    ("no warm start", {"warm_start": "none"}),
    ("no held-out cut checks", {"mask_checks": 0}),
    ("neither (the plain penalty descent)", {"warm_start": "none", "mask_checks": 0}),
    ("projected", {"control": "projected"}),
    ("topk", {"control": "topk"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.8])
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--only", nargs="*", help="run only rows whose label contains one of these")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    references = SeededReferences(args.model, args.num_samples, args.seeds)
    reference = references.first.metrics
    result = {"benchmark": "mask-learning", "model": args.model,
              "date": date.today().isoformat(), "commit": commit,
              "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads",
              "command": "python bench/mask_learning.py " + " ".join(sys.argv[1:]),
              "eval": {"num_samples": args.num_samples, "seeds": args.seeds},
              "float": {"accuracy": reference.classifier_accuracy, "frechet": round(reference.frechet_distance, 3)},
              "rows": []}
    name = args.model.removeprefix("builtin:")
    out = Path(__file__).parent / "results" / f"mask-learning-{name}{'-partial' if args.only else ''}.json"
    for target in args.targets:
        first = None
        for label, learn in VARIANTS:
            if args.only and not any(key in label for key in args.only):
                continue
            started = time.perf_counter()
            outcome = diffpress.prune(args.model, target, None, method="learned", learn=learn)
            seconds = time.perf_counter() - started
            learned = outcome.result.learned
            key = f"{label}@{target}"
            row = {"row": label, "target_params": target, "learn": learn, "prune_seconds": round(seconds, 1),
                   "params_kept": round(outcome.result.params_after / outcome.result.params_before, 4),
                   "final_sampled_loss": round(learned.losses[-1], 5),
                   "final_kept_fraction": round(learned.kept_fraction[-1], 4),
                   "held_out_checks": [{"iteration": c["iteration"], "ranking": c.get("ranking", "learned"),
                                        "loss": round(c["loss"], 5)} for c in learned.checks],
                   "best_iteration": learned.best_iteration, **references.evaluate(key, outcome.model)[1]}
            first = first or key
            if key != first:
                row["minus_first"] = references.paired(key, first)
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
            out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
