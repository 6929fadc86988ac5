"""Depth pruning on a built-in model: whole blocks removed one-shot (single-removal loss, 0/1 program) or at
random, each without and with recovery distillation, against the float model (CPU).

    python bench/layer_pruning.py --model builtin:digits-flux [--fractions 0.25 0.5]
        [--methods oneshot learned random] [--recover-steps 100] [--recovery both|only|none]
        [--num-samples 100] [--seeds 0 1]
        [--learn '{"lora_rank": 8}' --tag lora8] [--combined]

For each (fraction of removable blocks removed, method, recovery): prune in memory, then sample against
the float model with the eval harness at identical seeds, at every evaluation seed: PSNR (bootstrap 95%
interval)/SSIM vs float, classifier accuracy,
Frechet distance, parameters, MACs per call, measured CPU seconds per sampling step (the eval batch)
and its ratio to the float model's. The one-shot rows carry the additivity check (predicted vs measured
loss of removing random sets, Pearson and Spearman) and every block's single-removal loss; learned rows
carry learned - oneshot, and oneshot rows oneshot - random, paired over the same samples at each seed. With
--combined: the one-shot recovered model at the largest fraction quantized with w8a8-int8 and w4a8-int.

Writes bench/results/layer-pruning-NAME.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import diffpress
from diffpress import io
from diffpress.evaluation import EvalSettings, evaluate_pipeline
from seeded_eval import SeededReferences


def quality(side, settings: EvalSettings, float_seconds: float) -> dict:
    per_step = side.seconds / settings.steps
    return {"psnr_db": round(side.psnr_db, 2), "psnr_ci95_db": side.psnr_ci95_db, "ssim": round(side.ssim, 4),
            "accuracy": side.classifier_accuracy, "frechet": round(side.frechet_distance, 3),
            "seconds_per_step": round(per_step, 4), "time_vs_float": round(per_step / float_seconds, 3)}


def prune_row(args, references: SeededReferences, float_seconds, blocks, fraction, method, recover,
              out=None) -> tuple[dict, object]:
    count = max(1, round(fraction * blocks))
    started = time.perf_counter()
    outcome = diffpress.prune(args.model, None, out, remove_blocks=count, method=method,
                              recover_steps=args.recover_steps if recover else 0, learn=json.loads(args.learn))
    seconds = time.perf_counter() - started
    result = outcome.result
    side, columns = references.evaluate(f"{method}/{count}/{recover}", outcome.model)
    row = {"method": method, "recovered": recover, "blocks_removed": count, "removable_blocks": blocks,
           "removed": result.removed, "params_kept": round(result.params_after / result.params_before, 4),
           "macs_kept": round(result.macs_after / result.macs_before, 4), "prune_seconds": round(seconds, 1),
           **columns, "time_vs_float": round(side.seconds / references.settings.steps / float_seconds, 3)}
    if result.learned_depth is not None:
        depth = result.learned_depth
        row["learn"] = {"pattern": depth.pattern, "objective": depth.objective, **json.loads(args.learn),
                        "final_loss": round(depth.losses[-1], 6), "seconds": round(depth.seconds, 1)}
    if result.losses is not None:
        row["single_removal_loss"] = {b.name: round(loss, 6) for b, loss in zip(result.blocks, result.losses)}
    if result.additivity is not None:
        row["additivity"] = result.additivity.to_dict()
    if result.recovery is not None:
        row["recovery"] = {k: v for k, v in result.recovery.to_dict().items() if k not in ("loss", "output_loss")}
    print(json.dumps({k: v for k, v in row.items() if k not in ("single_removal_loss", "additivity")}), flush=True)
    return row, outcome


def paired_rows(rows: list[dict], references: SeededReferences) -> None:
    """learned - oneshot and oneshot - random at equal depth and recovery, paired over the same samples."""
    keys = {(r["method"], r["blocks_removed"], r["recovered"]) for r in rows}
    for row in rows:
        better_than = {"learned": "oneshot", "oneshot": "random"}.get(row["method"])
        if (better_than, row["blocks_removed"], row["recovered"]) in keys:
            row[f"minus_{better_than}"] = references.paired(
                f"{row['method']}/{row['blocks_removed']}/{row['recovered']}",
                f"{better_than}/{row['blocks_removed']}/{row['recovered']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits-flux")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--methods", nargs="+", default=["oneshot", "learned", "random"])
    parser.add_argument("--recover-steps", type=int, default=100)
    parser.add_argument("--recovery", choices=["both", "only", "none"], default="both",
                        help="rows without and with recovery (both), only recovered rows, or none recovered")
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="evaluation seeds; the first gives the headline columns")
    parser.add_argument("--learn", default="{}", help="learned-depth options as JSON (LearnOptions fields)")
    parser.add_argument("--tag", default="", help="suffix of the result file name (e.g. an ablation's name)")
    parser.add_argument("--combined", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    references = SeededReferences(args.model, args.num_samples, args.seeds)
    settings, reference = references.settings, references.first
    float_seconds = reference.metrics.seconds / settings.steps
    result = {"benchmark": "layer-pruning", "model": args.model, "date": date.today().isoformat(), "commit": commit,
              "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads",
              "command": "python bench/layer_pruning.py " + " ".join(sys.argv[1:]),
              "eval": {"num_samples": settings.num_samples, "steps": settings.steps,
                       "guidance_scale": settings.guidance_scale, "seeds": args.seeds},
              "float": {"accuracy": reference.metrics.classifier_accuracy,
                        "frechet": round(reference.metrics.frechet_distance, 3),
                        "seconds_per_step": round(float_seconds, 4)},
              "rows": [], "combined": []}
    tag = f"-{args.tag}" if args.tag else ""
    out = Path(__file__).parent / "results" / f"layer-pruning-{args.model.split(':')[-1]}{tag}.json"
    blocks = len(diffpress.removable_blocks(args.model)[0])
    with tempfile.TemporaryDirectory() as scratch:
        for fraction in args.fractions:
            for method in args.methods:
                for recover in {"both": (False, True), "only": (True,), "none": (False,)}[args.recovery]:
                    target = Path(scratch) / f"{method}-{fraction}" if (args.combined and method == "oneshot"
                                                                        and recover and fraction == max(args.fractions)) else None
                    row, _ = prune_row(args, references, float_seconds, blocks, fraction, method, recover, target)
                    result["rows"].append(row)
                    paired_rows(result["rows"], references)
                    out.write_text(json.dumps(result, indent=1) + "\n")
        if args.combined:
            pruned = Path(scratch) / f"oneshot-{max(args.fractions)}"
            for preset in ("w8a8-int8", "w4a8-int"):
                compressed = diffpress.compress(pruned, preset, Path(scratch) / f"q-{preset}",
                                                calibration=diffpress.CalibrationOptions(prompts=_prompts(args.model)))
                row = {"model": f"oneshot {max(args.fractions):g} of blocks + recovery + {preset}",
                       "weight_bytes": compressed.bytes_after,
                       **quality(evaluate_pipeline(reference, io.load(compressed.out)).compressed, settings,
                                 float_seconds)}
                print(json.dumps(row), flush=True)
                result["combined"].append(row)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def _prompts(model: str):
    from diffpress.zoo import builtin

    return builtin(model).calibration_prompts


if __name__ == "__main__":
    main()
