"""Allocation solve time: 1,000 layers x 6 candidate formats, CBC via PuLP (CPU).

    python bench/allocate_speed.py          # bench/results/allocate-speed.json

Synthetic but shaped like a real report: layer sizes drawn from {4k, 16k, 64k, 256k} parameters,
per-layer sensitivity scale log-uniform over 3 decades, cost of a format ~ 2^-bits x that scale x a
per-format factor in [0.5, 1.5] (seeded), the six candidates' real bit widths and packed bytes.
Budgets: average bits 4.5 / 5 / 6 / 8, a byte budget, and average bits with a latency budget (the
size proxy). Wall time includes building the PuLP model and writing/reading CBC's files.
"""
from __future__ import annotations

import json
import platform
import random
import subprocess
import time
from datetime import date
from pathlib import Path

import pulp

from diffpress.plan import Budget
from diffpress.compression.allocate import LayerChoices, LayerOption, allocate, minimum_budget
from diffpress.presets import DEFAULT_SENSITIVITY_CANDIDATES, candidate

CANDIDATES = {name: candidate(name) for name in DEFAULT_SENSITIVITY_CANDIDATES}

SHAPES = ((64, 64), (128, 128), (256, 256), (512, 512))


def synthetic_layers(count: int = 1000, seed: int = 0) -> list[LayerChoices]:
    rng = random.Random(seed)
    layers = []
    for index in range(count):
        shape = rng.choice(SHAPES)
        scale = 10 ** rng.uniform(-3, 0)
        options = tuple(LayerOption(name, scale * 2.0 ** -c.weight_bits * rng.uniform(0.5, 1.5), c.weight_bits,
                                    c.packed_bytes(shape), float(c.packed_bytes(shape)))
                        for name, c in CANDIDATES.items())
        layers.append(LayerChoices(f"blocks.{index}.proj", shape[0] * shape[1], options))
    return layers


def main() -> None:
    layers = synthetic_layers()
    _, min_bytes, min_latency = minimum_budget(layers)
    budgets = {"avg_bits=4.5": Budget(avg_bits=4.5), "avg_bits=5": Budget(avg_bits=5.0),
               "avg_bits=6": Budget(avg_bits=6.0), "avg_bits=8": Budget(avg_bits=8.0),
               "max_bytes=1.5x min": Budget(max_bytes=int(1.5 * min_bytes)),
               "avg_bits=6 + latency 1.4x min": Budget(avg_bits=6.0, max_latency=1.4 * min_latency)}
    rows = []
    for label, budget in budgets.items():
        times, choices = [], []
        for _ in range(3):
            started = time.perf_counter()
            result = allocate(layers, budget)
            times.append(time.perf_counter() - started)
            choices.append(result.choice)
        rows.append({"budget": label, "seconds": [round(t, 3) for t in times], "max_seconds": round(max(times), 3),
                     "avg_bits": round(result.avg_bits, 4), "total_bytes": result.total_bytes,
                     "proven_within_gap": result.proven, "identical_choice_over_runs": all(c == choices[0] for c in choices),
                     "counts": result.counts})
        print(json.dumps({k: rows[-1][k] for k in ("budget", "max_seconds", "avg_bits", "proven_within_gap")}), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"device": f"CPU ({platform.machine()})", "cbc_threads": 1, "gap": 1e-4, "pulp": pulp.__version__,
              "date": date.today().isoformat(), "commit": commit, "command": "python bench/allocate_speed.py",
              "layers": len(layers), "candidates": list(CANDIDATES), "binary_variables": len(layers) * len(CANDIDATES),
              "rows": rows}
    out = Path(__file__).parent / "results" / "allocate-speed.json"
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
