"""Learned rounding: quality against time at three settings (CPU).

    python bench/rounding_settings.py [--model builtin:digits] [--num-samples 200] [--seeds 0 1]

The w4a8-int preset's methods with learned rounding (MSE clipping, searched smoothing) at: fast (100
iterations, 512 rows per layer, batches of 256), default (300 iterations, 2048 rows, all rows per step),
long (600 iterations, 4096 rows, batches of 1024); the default with early stopping; nearest rounding
and GPTQ for scale. One calibration set serves every row (recipe_rows). Writes
bench/results/rounding-settings-MODEL.json.
"""
from __future__ import annotations

from dataclasses import replace

import recipe_rows
from diffpress.compression.rounding import RoundingOptions
from diffpress.presets import preset


def rows() -> list[tuple]:
    learned = replace(preset("w4a8-int"), rounding="learned")
    return [("w4a8-int nearest", replace(learned, rounding="nearest")),
            ("w4a8-int learned fast", learned, {"rounding": RoundingOptions(100, 512, 256)}),
            ("w4a8-int learned default", learned, {"rounding": RoundingOptions()}),
            ("w4a8-int learned default early-stop", learned, {"rounding": RoundingOptions(early_stop=True)}),
            ("w4a8-int learned long", learned, {"rounding": RoundingOptions(600, 4096, 1024)}),
            ("w4a8-int gptq", replace(learned, rounding="gptq"))]


if __name__ == "__main__":
    recipe_rows.main("rounding-settings", __doc__, rows())
