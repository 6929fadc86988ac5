"""BOS-aware quantization (MixDQ) measured on the text-to-image built-in, builtin:digits-flux (CPU).

    python bench/bos_aware.py [--num-samples 100]      # bench/results/bos-aware-digits-flux.json

The text encoder is a causal CLIP, so its first output token (BOS) is the same for every prompt. With
`bos_aware: true`, a layer whose first input token is identical in every calibration call keeps the
float output for that token. Configurations:
- w8a8-int8 and w4a8-int as they are (the default skip list keeps `context_embedder`, the one layer
  that reads the text encoder's output directly, in high precision), without and with bos_aware;
- the same with `context_embedder` quantized too, without and with bos_aware.
One calibration set (the defaults: 32 samples x the model's 20 steps, 8 buckets, 4 calls per bucket, the
model's prompts) serves every row; each row is compressed from it, saved, reloaded and evaluated against the
float model (the model's 20 steps and guidance 3) at seeds 0 and 1, with bootstrap 95% intervals and the
paired difference of each bos_aware row against the same row without it. Each row lists the layers that
qualified (got a stored BOS output).
"""
from __future__ import annotations

from dataclasses import replace

import recipe_rows
from diffpress.checkpoint import load_pipeline
from diffpress.compression.surgery import compressed_layers, compressible_layers
from diffpress.compression.swap import DEFAULT_SKIP, skip_reason
from diffpress.presets import preset
from diffpress.recipe import Recipe, Rule

MODEL = "builtin:digits-flux"


def recipe(transformer, name: str, bos_aware: bool, quantize_context_embedder: bool) -> Recipe:
    """The preset everywhere but the default skip list; with quantize_context_embedder, that one layer of the
    skip list is quantized too (the skip list applies before rules, so it is spelled out as exact skips)."""
    spec = replace(preset(name), bos_aware=bos_aware)
    if not quantize_context_embedder:
        return Recipe(spec, keep_default_skips=True)
    skipped = [fqn for fqn, _ in compressible_layers(transformer)
               if skip_reason(fqn, DEFAULT_SKIP) and fqn != "context_embedder"]
    return Recipe(spec, tuple(Rule(fqn, None) for fqn in skipped), keep_default_skips=False)


def rows(model: str) -> list[tuple]:
    transformer = load_pipeline(model).transformer
    result = []
    for name in ("w8a8-int8", "w4a8-int"):
        for quantized, where in ((False, "context_embedder float"), (True, "context_embedder quantized")):
            off = f"{name} {where}, bos_aware off"
            result += [(off, recipe(transformer, name, False, quantized)),
                       (f"{name} {where}, bos_aware on", recipe(transformer, name, True, quantized), {}, off)]
    return result


def qualified(pipe) -> dict:
    """The layers that stored a BOS output."""
    return {"bos_layers": [fqn for fqn, m in compressed_layers(pipe.transformer) if m.bos_out is not None]}


if __name__ == "__main__":
    recipe_rows.main("bos-aware", __doc__, rows, describe=qualified, default_model=MODEL)
