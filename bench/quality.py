"""Picture quality of each preset on the built-in model (CPU), via the eval harness.

    python bench/quality.py [--num-samples 500] [--presets w8a16-int8 w4a16-int4 ...]

Writes bench/results/quality-digits.json: for each preset, `diffpress eval builtin:digits
--compressed DIR --num-samples N --steps 25 --seed 0` numbers plus compression seconds.
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

from diffpress.api import compress, evaluate
from diffpress.presets import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for preset in args.presets:
            started = time.perf_counter()
            out = compress("builtin:digits", preset, Path(scratch) / preset)
            compress_seconds = time.perf_counter() - started
            result = evaluate("builtin:digits", out.out, num_samples=args.num_samples, steps=args.steps, seed=0)
            reference = result.reference.to_dict()
            rows.append({"format": preset, **result.compressed.to_dict(), "compress_seconds": round(compress_seconds, 2)})
            print(json.dumps(rows[-1]), flush=True)
    report = {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
              "date": date.today().isoformat(), "commit": commit,
              "command": f"python bench/quality.py --num-samples {args.num_samples} --steps {args.steps}",
              "model": "builtin:digits", "seed": 0, "reference": reference, "rows": rows}
    out = Path(__file__).parent / "results" / "quality-digits.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
