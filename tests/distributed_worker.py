"""Run by tests/test_distributed.py, once as one process and once under torchrun with 2 gloo processes:
calibrate builtin:digits, measure its sensitivity and allocate; rank 0 saves what came out."""
import json
import sys
from pathlib import Path

import torch

import diffpress
from diffpress import distributed
from diffpress.compression.sensitivity.measure import SensitivityOptions

torch.set_num_threads(1)
out = Path(sys.argv[1])
calibration = diffpress.calibrate("builtin:digits", list(range(10)), num_samples=8, batch_size=2, steps=4, buckets=4,
                                  reservoir_size=2, device="cpu")
options = SensitivityOptions(candidates=("w8a8-int8", "w4a16-int4"), image_layers=0, progress=False)
report = diffpress.sensitivity("builtin:digits", calibration, options, curve=False, device="cpu")
allocation = diffpress.allocate(report, diffpress.Budget(avg_bits=6))
if distributed.is_main():
    calibration.save(out / "calibration.safetensors")
    report.save(out / "report.json")
    (out / "allocation.json").write_text(json.dumps(allocation.choice, sort_keys=True))
    (out / "world.json").write_text(json.dumps({"world_size": distributed.world_size()}))
