"""FP4 scales end to end: absmax against MSE clipping, with nearest rounding and with GPTQ (CPU).

    python bench/clipping_rows.py [--model builtin:digits] [--num-samples 200] [--seeds 0 1]

Rows (recipe_rows: one calibration set, `diffpress.compress` per row, evaluation at each seed with bootstrap
intervals and paired differences against the first row of each group): w4a8-fp4, w4a4-fp4 and w4a16-fp4 as
their presets were with MSE clipping, and the same with absmax scales; w4a16-fp4 also with GPTQ, both ways.
The per-layer side of the question is bench/clipping.py. Writes bench/results/clipping-rows-MODEL.json.
"""
from __future__ import annotations

from dataclasses import replace

import recipe_rows
from diffpress.presets import preset
from diffpress.recipe import ScaleMethod


def rows() -> list[tuple[str, object]]:
    result = []
    for name in ("w4a8-fp4", "w4a4-fp4", "w4a16-fp4"):
        mse = replace(preset(name), scale_method=ScaleMethod.MSE)
        result += [(f"{name} mse", mse), (f"{name} absmax", replace(mse, scale_method=ScaleMethod.ABSMAX))]
        if name == "w4a16-fp4":
            result += [(f"{name} gptq mse", replace(mse, rounding="gptq")),
                       (f"{name} gptq absmax", replace(mse, rounding="gptq", scale_method=ScaleMethod.ABSMAX))]
    return result


if __name__ == "__main__":
    recipe_rows.main("clipping-rows", __doc__, rows())
