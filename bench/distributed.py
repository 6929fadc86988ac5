"""Speedup of several processes (torchrun, gloo) on the built-in's sensitivity measurement.

`python bench/distributed.py [--model builtin:digits] [--candidates ...]` -> bench/results/scale-distributed.json.
One calibration set is made first (so every run measures the same thing); then `diffpress sensitivity` on it,
output and image metric, as (a) one process with 1 thread, (b) one process with 2 threads,
(c) torchrun with 2 processes of 1 thread each (the measured curve, which is not split, is off). Wall seconds of the whole command (model loading included) and
the report's own measurement seconds; the reports' SQNR tables are compared (they must be identical).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _run(command: list[str], threads: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return time.perf_counter() - started


def _max_difference(a: dict, b: dict) -> float:
    values = [abs(x - y) for f in a for c in a[f] for x, y in zip(a[f][c], b[f][c])
              if isinstance(x, float) and isinstance(y, float) and abs(x) != float("inf")]
    return round(max(values, default=0.0), 4)


def _measure(model: str, calibration: str, image_layers: str, out: str) -> None:
    import diffpress
    from diffpress.compression.sensitivity.measure import SensitivityOptions

    from diffpress import distributed

    options = SensitivityOptions(image_layers=int(image_layers), progress=False)
    report = diffpress.sensitivity(model, calibration, options, curve=False)
    if distributed.is_main():
        Path(out).mkdir(parents=True, exist_ok=True)
        report.save(Path(out) / "measured.json")


def main() -> None:
    if sys.argv[1:2] == ["_measure"]:
        _measure(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--work", type=Path, default=Path("/tmp/diffpress-distributed"))
    parser.add_argument("--image-layers", default="8")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    calibration = args.work / "calibration.safetensors"
    diffpress = [sys.executable, "-m", "diffpress"]
    _run([*diffpress, "calibrate", args.model, "--out", str(calibration), "--overwrite", "--quiet"], 2)
    worker = [__file__, "_measure", args.model, str(calibration), args.image_layers]
    launchers = {"1 process, 1 thread": ([sys.executable], 1), "1 process, 2 threads": ([sys.executable], 2),
                 "2 processes (torchrun, gloo), 1 thread each":
                     ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"], 1)}
    rows, tables = [], []
    for name, (launcher, threads) in launchers.items():
        out = args.work / f"report-{len(rows)}"
        seconds = _run([*launcher, *worker, str(out)], threads)
        report = json.loads((out / "measured.json").read_text())
        tables.append((report["output_sqnr_db"], report["image"]))
        rows.append({"run": name, "wall_seconds": round(seconds, 1),
                     "measurement_seconds": round(report["info"]["output_seconds"] + report["info"]["image_seconds"], 1)})
        print(rows[-1], flush=True)
    base = rows[0]["measurement_seconds"]
    for row, table in zip(rows, tables):
        row["speedup_vs_1_process_1_thread"] = round(base / row["measurement_seconds"], 2)
        row["report_identical_to_1_process_1_thread"] = table == tables[0]
        row["max_output_sqnr_difference_db"] = _max_difference(table[0], tables[0][0])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"device": f"CPU ({platform.machine()}, {os.cpu_count()} cores)", "torch": torch.__version__,
              "date": date.today().isoformat(), "commit": commit,
              "command": "python bench/distributed.py " + " ".join(sys.argv[1:]),
              "workload": f"diffpress sensitivity {args.model}, default candidates, rtn, image metric on "
                          f"{args.image_layers} layers, default calibration set",
              "rows": rows, "note": "a process's thread count changes float summation order inside torch's kernels, "
                                    "so 1 and 2 threads differ slightly; 2 processes of 1 thread equal 1 process "
                                    "of 1 thread exactly"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale-distributed.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
