"""W4A4 (4-bit weights and 4-bit activations) on a built-in model: the method ablation behind the w4a4 presets (CPU).

    python bench/w4a4.py --model builtin:digits [--num-samples 200]

For w4a4-int (INT4 g64 weights, INT4 activations per token in groups of 64, SVDQuant's grouping) and w4a4-fp4
(FP4 e2m1 weights and activations with block-16 scales, NVFP4-style), each row adds one method to the previous:
rtn (absmax, nearest) -> + clipping (MSE) -> + smoothing (searched per layer) -> + low-rank (rank 8, high
precision) -> + GPTQ -> + rotation (randomized block Hadamard, every layer) and, instead, rotation auto (each
layer rotated only where that lowers its output error on calibration inputs); then GPTQ without the low-rank
branch, with and without rotation auto, and round-to-nearest with rotation alone (every layer, and auto). One calibration set (the defaults: 32 samples x 25 steps, 8 buckets, 4 calls per bucket) serves every row;
each row is `diffpress.compress` from it, then evaluated at identical seeds (0 and 1 by default), with bootstrap
intervals and paired differences against the group's rtn row and the previous row. 4-bit activations run on the
reference backend. Writes bench/results/w4a4-MODEL.json.
"""
from __future__ import annotations

from dataclasses import replace

import recipe_rows
from diffpress.presets import preset


def rows() -> list[tuple[str, object]]:
    result = []
    for name in ("w4a4-int", "w4a4-fp4"):
        rtn = preset(name + "-rtn")
        ladder = [("rtn", rtn), ("+clipping", replace(rtn, scale_method="mse"))]
        ladder.append(("+smoothing", replace(ladder[-1][1], smoothing="auto")))
        ladder.append(("+low-rank 8", replace(ladder[-1][1], low_rank=8)))
        ladder.append(("+gptq", replace(ladder[-1][1], rounding="gptq")))
        ladder.append(("+rotation", replace(ladder[-1][1], rotation="hadamard")))
        ladder.append(("+rotation auto", replace(ladder[-1][1], rotation="auto")))
        ladder.append(("gptq without low-rank", replace(ladder[2][1], rounding="gptq")))
        ladder.append(("rotation auto + gptq without low-rank", replace(ladder[-1][1], rotation="auto")))
        ladder.append(("rtn + rotation", replace(rtn, rotation="hadamard")))
        ladder.append(("rtn + rotation auto", replace(rtn, rotation="auto")))
        result += [(f"{name} {label}", spec) for label, spec in ladder]
    return result


if __name__ == "__main__":
    recipe_rows.main("w4a4", __doc__, rows())
