"""The rank-8 low-rank branch against each rounding method at W4A8 INT (CPU).

    python bench/lowrank_rounding.py [--model builtin:digits] [--num-samples 200] [--seeds 0 1]

The w4a8-int preset's methods (MSE clipping, searched smoothing) with rounding nearest, gptq, learned
(300 iterations) and block (block reconstruction), each without and with `low_rank: 8`; one calibration set
for every row (recipe_rows), evaluation at two seeds with paired differences against the row without the
branch. Writes bench/results/lowrank-rounding-MODEL.json.
"""
from __future__ import annotations

from dataclasses import replace

import recipe_rows
from diffpress.presets import preset


def rows() -> list[tuple[str, object]]:
    base = preset("w4a8-int")
    result = []
    for rounding in ("nearest", "gptq", "learned", "block"):
        result += [(f"{rounding} no-branch", replace(base, rounding=rounding, low_rank=0)),
                   (f"{rounding} rank-8", replace(base, rounding=rounding, low_rank=8))]
    return result


if __name__ == "__main__":
    recipe_rows.main("lowrank-rounding", __doc__, rows())
