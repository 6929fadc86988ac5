"""Weight bytes before/after and output SQNR per preset on the tiny test architectures (CPU).

    python bench/tiny_sizes.py        # writes bench/results/tiny-architectures.json

Tiny random-init models (tests/tiny_models.py) keep many small layers on the skip list, so their
ratios understate what full-size models get; they show that every architecture goes through.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import tiny_models  # noqa: E402

from diffpress.api import tensor_bytes  # noqa: E402
from diffpress.compress.swap import quantize_  # noqa: E402
from diffpress.metrics import sqnr_db  # noqa: E402
from diffpress.recipe import PRESETS, preset  # noqa: E402


def main() -> None:
    rows = []
    for arch in tiny_models.ARCHITECTURES:
        for name in PRESETS:
            model, inputs = tiny_models.build(arch)
            reference = tiny_models.run(model, inputs)
            before = tensor_bytes(model)
            report = quantize_(model, preset(name))
            rows.append({"shape": arch, "format": name, "bytes_before": before, "bytes_after": tensor_bytes(model),
                         "size_ratio": round(before / tensor_bytes(model), 2), "quantized_layers": len(report.quantized),
                         "skipped_layers": len(report.skipped),
                         "output_sqnr_db": round(sqnr_db(reference, tiny_models.run(model, inputs)), 2)})
            print(rows[-1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"device": f"CPU ({platform.machine()})", "torch": torch.__version__, "date": date.today().isoformat(),
              "commit": commit, "command": "python bench/tiny_sizes.py", "rows": rows}
    out = Path(__file__).parent / "results" / "tiny-architectures.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
