"""What checkpointing for --resume costs: each long stage with checkpoints off, at the default interval
(60 s) and after every step (0), on builtin:digits, one thread (CPU).

    python bench/resume_overhead.py [--repeats 3]

Stages: compress w4a8-int (calibration snapshots + one record per learned-rounding layer), prune learned
(mask-learning snapshots), sensitivity (one record per layer). Each run is a fresh process; the time is
the API call's wall time, best of --repeats, runs of one setting interleaved with the others; and, less
sensitive to other load on the machine, the seconds the run spent writing checkpoints (resume._write timed),
as a share of the run's wall time (the largest share over the repeats). Writes bench/results/resume-overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"off": None, "default (60 s)": 60.0, "every step (0)": 0.0}
STAGES = {
    "compress w4a8-int (calibration 16 samples x 25 steps, learned rounding on 72 layers)":
        "diffpress.compress('builtin:digits', 'w4a8-int', OUT, calibration=diffpress.CalibrationOptions("
        "num_samples=16), checkpoint_every=EVERY)",
    "prune learned 20% (100 iterations, 8 targets x 10 steps)":
        "diffpress.prune('builtin:digits', 0.8, OUT, learn={'iterations': 100, 'samples': 8}, steps=10, "
        "checkpoint_every=EVERY)",
    "sensitivity rtn, 4 candidates, output metric only":
        "diffpress.sensitivity('builtin:digits', diffpress.CalibrationOptions(num_samples=8), "
        "diffpress.SensitivityOptions(methods='rtn', image_layers=0), curve=False, out=OUT, checkpoint_every=EVERY)",
}
TIMED = """
import time, diffpress
from diffpress import resume
from pathlib import Path
writing = [0.0]
original_write = resume._write
def timed_write(*args, **kwargs):
    began = time.perf_counter()
    try:
        return original_write(*args, **kwargs)
    finally:
        writing[0] += time.perf_counter() - began
resume._write = timed_write
OUT, EVERY = Path({out!r}), {every!r}
started = time.perf_counter()
{call}
print(time.perf_counter() - started, writing[0])
"""


def timed(call: str, every, out: Path) -> tuple[float, float]:
    """(wall seconds of the call, seconds spent writing checkpoints in it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = TIMED.format(out=str(out), every=every, call=call)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr[-2000:])
    total, writing = result.stdout.strip().splitlines()[-1].split()
    return float(total), float(writing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="diffpress-resume-") as temporary:
        for stage, call in STAGES.items():
            seconds = {name: [] for name in SETTINGS}
            writing = {name: [] for name in SETTINGS}
            for repeat in range(args.repeats):
                for name, every in SETTINGS.items():
                    out = Path(temporary) / f"out-{len(rows)}-{repeat}-{list(SETTINGS).index(name)}"
                    total, written = timed(call, every, out)
                    seconds[name].append(total)
                    writing[name].append(written)
                    print(f"{stage} | {name}: {total:.1f} s, {written:.2f} s writing checkpoints", flush=True)
            best = {name: min(values) for name, values in seconds.items()}
            rows.append({"stage": stage, "seconds": {n: [round(v, 2) for v in values] for n, values in seconds.items()},
                         "checkpoint_write_seconds": {n: [round(v, 3) for v in values] for n, values in writing.items()},
                         "best_s": {n: round(v, 2) for n, v in best.items()},
                         "wall_overhead_pct": {n: round(100 * (best[n] / best["off"] - 1), 1) for n in SETTINGS
                                               if n != "off"},
                         "write_share_pct": {n: round(100 * max(w / t for w, t in zip(writing[n], seconds[n])), 2)
                                             for n in SETTINGS if n != "off"}})
    result = {"rows": rows, "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "threads": 1, "how": "python bench/resume_overhead.py " + " ".join(sys.argv[1:]),
              "target": "under 5% at the default interval"}
    (ROOT / "bench" / "results" / "resume-overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        print(row["stage"], row["best_s"], row["wall_overhead_pct"], row["write_share_pct"])


if __name__ == "__main__":
    main()
