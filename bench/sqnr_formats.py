"""SQNR (dB) of every weight format x granularity x scale method on a Gaussian weight (CPU).

    python bench/sqnr_formats.py            # writes bench/results/sqnr-formats.json

The floors in tests/test_quantize.py are set from this table (0.3-0.5 dB under it).
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

import torch

from diffpress.compression.quantize import fake_quantize
from diffpress.recipe import ScaleMethod
from diffpress.formats import FORMAT_SPECS, Granularity
from diffpress.metrics import sqnr_db

SHAPE = (256, 1024)


def rows() -> list[dict]:
    weight = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0))
    table = []
    for fmt, spec in FORMAT_SPECS.items():
        for granularity in spec.granularities:
            if granularity is Granularity.PER_TOKEN:
                continue
            for group in (spec.group_sizes if granularity is Granularity.PER_GROUP else (None,)):
                for method in ScaleMethod:
                    approx = fake_quantize(weight, fmt, granularity, group, method)
                    table.append({"format": fmt.value, "granularity": granularity.value, "group_size": group,
                                  "scale_method": method.value, "sqnr_db": round(sqnr_db(weight, approx), 2)})
    return table


def main() -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"device": platform.processor() or platform.machine(), "torch": torch.__version__,
              "date": date.today().isoformat(), "commit": commit, "command": "python bench/sqnr_formats.py",
              "weight": f"N(0,1) {SHAPE[0]}x{SHAPE[1]}, seed 0", "rows": rows()}
    out = Path(__file__).parent / "results" / "sqnr-formats.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for row in result["rows"]:
        print(f"{row['format']:<10} {row['granularity']:<12} {str(row['group_size'] or ''):<5} "
              f"{row['scale_method']:<7} {row['sqnr_db']:6.2f} dB")


if __name__ == "__main__":
    sys.exit(main())
