"""GPTQ against learned rounding (and nearest): image quality and seconds at W4A8 and W4A16 (CPU).

    python bench/gptq.py --model builtin:digits [--num-samples 200]

Rows: the w4a8-int / w4a8-fp4 presets (MSE clipping, searched smoothing) and w4a16-int4 / w4a16-fp4 (MSE clipping)
with rounding nearest, learned (300 iterations per layer) and gptq (damping 0.01, with and without act
order). One calibration set (the defaults: 32 samples x 25 steps, 8 buckets, 4 calls per bucket) serves
every row; each row is `diffpress.compress` from it, timed (the quantization stage alone: the calibration
is read from disk), then `diffpress.evaluate` at identical seeds. Writes bench/results/gptq-MODEL.json.
"""
from __future__ import annotations

from dataclasses import replace

import recipe_rows
from diffpress.presets import preset


def rows() -> list[tuple[str, object]]:
    result = []
    for name in ("w4a8-int", "w4a8-fp4", "w4a16-int4", "w4a16-fp4"):
        base = preset(name)
        result += [(f"{name} nearest", replace(base, rounding="nearest")),
                   (f"{name} learned", replace(base, rounding="learned")),
                   (f"{name} gptq", replace(base, rounding="gptq")),
                   (f"{name} gptq no act-order", replace(base, rounding="gptq", gptq_act_order=False))]
    return result


if __name__ == "__main__":
    recipe_rows.main("gptq", __doc__, rows())
