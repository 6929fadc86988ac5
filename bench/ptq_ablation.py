"""PTQ method ablation on a built-in model (CPU), measured with the eval harness's metrics.

    python bench/ptq_ablation.py [--model builtin:digits] [--num-samples 200]
        # bench/results/ptq-ablation-digits.json

For w4a8-int (INT4 g128 weights, INT8 per-token activations) and w4a8-fp4 (FP4 block-16 weights, FP8
activations), each row adds one method to the row it builds on: rtn (absmax, nearest) -> + clipping (MSE scale
search) -> + smoothing (searched per layer) -> + reconstruction (layer-wise learned rounding) -> + low-rank (rank
8); beside them, on the smoothing row: "+block reconstruction" (block-wise learned rounding, BRECQ) and "+gptq"
(the preset); "+shortcut split" adds shortcut splitting to the reconstruction row. Then W8A8 INT8/FP8 with and
without smoothing, and with static per-bucket activation scales with and without shortcut splitting (where
Q-Diffusion found splitting matters most). One calibration set (the defaults: 32 samples x 25 steps, 8 buckets,
4 calls per bucket) serves every row; each row is `diffpress.compress` from it (timed: the quantization alone),
saved, reloaded and evaluated against the float model at seeds 0 and 1 (bootstrap 95% intervals over the
samples, and paired differences against the group's rtn row and the row it builds on).
"""
from __future__ import annotations

from dataclasses import replace

import recipe_rows
from diffpress.presets import preset


def ladders() -> list[tuple]:
    """(label, spec, compress options, base label) rows; see the module docstring."""
    rows = []
    for name in ("w4a8-int", "w4a8-fp4"):
        rtn = preset(name + "-rtn")
        clipping = replace(rtn, scale_method="mse")
        smoothing = replace(clipping, smoothing="auto")
        learned = replace(smoothing, rounding="learned")
        steps = [("rtn", rtn, None), ("+clipping", clipping, None), ("+smoothing", smoothing, None),
                 ("+reconstruction", learned, None), ("+low-rank", replace(learned, low_rank=8), None),
                 ("+shortcut split", replace(learned, split_shortcuts=True), "+reconstruction"),
                 ("+block reconstruction", replace(smoothing, rounding="block"), "+smoothing"),
                 ("+gptq", replace(smoothing, rounding="gptq"), "+smoothing")]
        rows += [(f"{name} {label}", spec, {}, base and f"{name} {base}") for label, spec, base in steps]
    for name in ("w8a8-int8", "w8a8-fp8"):
        static = replace(preset(name + "-rtn"), act_mode="static")
        rows += [(f"{name} rtn", preset(name + "-rtn")),
                 (f"{name} +smoothing", replace(preset(name), smoothing="auto")),
                 (f"{name} static", static, {}, f"{name} rtn"),
                 (f"{name} static +shortcut split", replace(static, split_shortcuts=True))]
    return rows


if __name__ == "__main__":
    recipe_rows.main("ptq-ablation", __doc__, ladders())
