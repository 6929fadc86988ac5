"""CPU seconds per denoiser call of depth-pruned built-in models against the float model (clean timing).

    OMP_NUM_THREADS=1 python bench/layer_speed.py --model builtin:digits-flux [--fractions 0.25 0.5] [--calls 30]

For each fraction of the removable blocks, the one-shot set is removed (diffpress.prune, no recovery:
the weights do not change the time) and one representative denoiser call (the first calibration call,
the whole calibration batch) is timed: median of `--calls` calls after 3 warm-up calls, one process,
nothing else should run. Reports the time ratio against the float model beside the MACs and
parameter ratios, and the same for a width-pruned model (taylor) at the depth-pruned parameter count
(depth against width for speed at equal parameters). Writes bench/results/layer-speed-NAME.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

import diffpress
from diffpress.calibration import find_denoiser
from diffpress.compression.sensitivity.output_metric import output_tensor


def seconds_per_call(denoiser, kwargs: dict, calls: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            output_tensor(denoiser(**kwargs))
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            output_tensor(denoiser(**kwargs))
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits-flux")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    calibration = diffpress.calibrate(args.model)
    kwargs = calibration.entries(1)[0].call_kwargs()
    float_model = find_denoiser(diffpress.checkpoint.load_pipeline(args.model)).eval()
    base = seconds_per_call(float_model, kwargs, args.calls)
    blocks = len(diffpress.removable_blocks(args.model)[0])
    rows = [{"blocks_removed": 0, "seconds_per_call": round(base, 5), "time_kept": 1.0, "macs_kept": 1.0,
             "params_kept": 1.0}]
    for fraction in args.fractions:
        count = max(1, round(fraction * blocks))
        outcome = diffpress.prune(args.model, None, None, remove_blocks=count, calibration=calibration)
        result = outcome.result
        seconds = seconds_per_call(find_denoiser(outcome.model).eval(), kwargs, args.calls)
        rows.append({"blocks_removed": count, "removed": result.removed, "seconds_per_call": round(seconds, 5),
                     "time_kept": round(seconds / base, 4),
                     "macs_kept": round(result.macs_after / result.macs_before, 4),
                     "params_kept": round(result.params_after / result.params_before, 4)})
        print(json.dumps(rows[-1]), flush=True)
        width = diffpress.prune(args.model, rows[-1]["params_kept"], None, method="taylor", calibration=calibration)
        seconds = seconds_per_call(find_denoiser(width.model).eval(), kwargs, args.calls)
        rows.append({"width_pruned_to_params": rows[-1]["params_kept"], "method": "taylor",
                     "seconds_per_call": round(seconds, 5), "time_kept": round(seconds / base, 4),
                     "macs_kept": round(width.result.macs_after / width.result.macs_before, 4),
                     "params_kept": round(width.result.params_after / width.result.params_before, 4)})
        print(json.dumps(rows[-1]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = Path(__file__).parent / "results" / f"layer-speed-{args.model.split(':')[-1]}.json"
    out.write_text(json.dumps({"benchmark": "layer-speed", "model": args.model, "date": date.today().isoformat(),
                               "commit": commit, "machine": f"{platform.machine()} CPU, torch {torch.__version__}, "
                               f"{torch.get_num_threads()} threads", "batch": int(next(
                                   v for v in kwargs.values() if isinstance(v, torch.Tensor) and v.ndim).shape[0]),
                               "command": "python bench/layer_speed.py " + " ".join(sys.argv[1:]), "rows": rows},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
