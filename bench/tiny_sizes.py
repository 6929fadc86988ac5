"""Every preset on the tiny test architectures (CPU): weight bytes before/after, output SQNR vs
float, and a save -> load round trip that must reproduce the output bit for bit.

    python bench/tiny_sizes.py        # writes bench/results/tiny-architectures.json

Presets with calibration-driven methods calibrate on a forward loop over 4 timesteps.

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

from diffpress.compression.rounding import RoundingOptions

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import tiny_models  # noqa: E402

import tempfile  # noqa: E402

import diffpress  # noqa: E402
from diffpress.metrics import state_bytes as tensor_bytes  # noqa: E402
from diffpress.calibration import calibrate  # noqa: E402
from diffpress.compression.ptq import quantize_model  # noqa: E402
from diffpress.metrics import sqnr_db  # noqa: E402
from diffpress.presets import PRESETS, preset_recipe  # noqa: E402




def _timesteps(arch):
    return [0.9, 0.6, 0.3, 0.05] if arch == "flux" else [900, 600, 300, 50]


def main() -> None:
    rows = []
    for arch in tiny_models.ARCHITECTURES:
        model, inputs = tiny_models.build(arch)
        run_inputs = {**inputs, "timestep": torch.full_like(inputs["timestep"], _timesteps(arch)[1])}
        calibration = calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, _timesteps(arch)), buckets=4,
                                reservoir_size=1)
        for name in PRESETS:
            model, _ = tiny_models.build(arch)
            reference = tiny_models.run(model, run_inputs)
            before = tensor_bytes(model)
            report = quantize_model(model, preset_recipe(name), calibration,
                                    rounding=RoundingOptions(iterations=100))
            output = tiny_models.run(model, run_inputs)
            with tempfile.TemporaryDirectory() as scratch:
                diffpress.save(model, f"{scratch}/out")
                reloaded_equal = torch.equal(tiny_models.run(diffpress.load(f"{scratch}/out"), run_inputs), output)
            rows.append({"shape": arch, "format": name, "bytes_before": before, "bytes_after": tensor_bytes(model),
                         "size_ratio": round(before / tensor_bytes(model), 2), "quantized_layers": len(report.quantized),
                         "skipped_layers": len(report.skipped), "output_sqnr_db": round(sqnr_db(reference, output), 2),
                         "save_load_bit_exact": reloaded_equal})
            print(rows[-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"device": f"CPU ({platform.machine()})", "torch": torch.__version__, "date": date.today().isoformat(),
              "commit": commit, "command": "python bench/tiny_sizes.py", "rows": rows}
    out = Path(__file__).parent / "results" / "tiny-architectures.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
