"""Why torchao's dynamic INT8 scored above diffpress w8a8-int8 on the Linear layers of builtin:digits (CPU).

    pip install torchao==0.18.0   # benchmark-only
    python bench/w8a8_gap.py [--num-samples 200] [--seeds 0 1]

Same layers (the Linear layers diffpress quantizes by default), both in memory, same labels and noise:
1. per layer: relative output error |Wx - Q(W)Q(x)|^2 / |Wx|^2 of each tool on the layer's real inputs (captured
   while the float model samples 8 images), and diffpress weight-only for scale;
2. end to end, per seed: PSNR of each tool against the float model over the samples, the bootstrap 95%
   interval of the PSNR difference (2000 resamples of the samples), how many samples each tool draws
   closer to the float model, and the share of the total error held by the 5 worst samples.
Writes bench/results/w8a8-gap-digits.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import random
from datetime import date
from pathlib import Path

import torch
from torch import nn

from diffpress.checkpoint import load_pipeline
from diffpress.compression.modules import QuantLinear
from diffpress.compression.swap import DEFAULT_SKIP, quantize_, skip_reason
from diffpress.evaluation import EvalSettings, _labels_and_noise
from diffpress.presets import preset
from diffpress.recipe import Recipe, Rule


def relative_error(reference: torch.Tensor, output: torch.Tensor) -> float:
    return float((reference - output).square().sum() / reference.square().sum())


def per_layer(pipe, linear: list[str]) -> list[dict]:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_ as ao_quantize

    captured: dict[str, list[torch.Tensor]] = {}
    hooks = [pipe.unet.get_submodule(name).register_forward_pre_hook(
        lambda m, a, name=name: captured.setdefault(name, []).append(a[0].detach().reshape(-1, a[0].shape[-1])))
        for name in linear]
    labels, noise = _labels_and_noise(EvalSettings(num_samples=8))
    with torch.no_grad():
        pipe.draw(labels, 25, 1.0, noise)
    for hook in hooks:
        hook.remove()
    rows = []
    with torch.no_grad():
        for name in linear:
            x, layer = torch.cat(captured[name])[:4096], pipe.unet.get_submodule(name)
            reference = layer(x)
            torchao_layer = nn.Sequential(copy.deepcopy(layer))
            ao_quantize(torchao_layer, Int8DynamicActivationInt8WeightConfig())
            rows.append({"layer": name, "k": layer.in_features,
                         "diffpress_w8a8": relative_error(reference, QuantLinear.from_float(layer, preset("w8a8-int8"))(x)),
                         "torchao_w8a8": relative_error(reference, torchao_layer(x)),
                         "diffpress_w8a16": relative_error(reference,
                                                           QuantLinear.from_float(layer, preset("w8a16-int8"))(x))})
    return rows


def end_to_end(pipe, float_unet, models: dict, seed: int, num_samples: int) -> dict:
    labels, noise = _labels_and_noise(EvalSettings(num_samples=num_samples, seed=seed))

    def sample(unet):
        pipe.unet = unet
        with torch.no_grad():
            return pipe.draw(labels, 25, 1.0, noise).float().clamp(0, 1)
    reference = sample(float_unet)
    errors = {name: (sample(unet) - reference).square().flatten(1).mean(1) for name, unet in models.items()}
    psnr = lambda mse: float(-10 * torch.log10(mse.mean()))
    rng = random.Random(seed)
    differences = sorted(psnr(errors["diffpress"][index]) - psnr(errors["torchao"][index])
                         for index in (torch.tensor([rng.randrange(num_samples) for _ in range(num_samples)])
                                       for _ in range(2000)))
    return {"seed": seed, "psnr_db": {name: round(psnr(e), 2) for name, e in errors.items()},
            "difference_db": round(psnr(errors["diffpress"]) - psnr(errors["torchao"]), 2),
            "difference_ci95_db": [round(differences[50], 2), round(differences[1949], 2)],
            "samples_diffpress_closer": int((errors["diffpress"] < errors["torchao"]).sum()),
            "worst5_share_of_error": {name: round(float(e.sort(descending=True).values[:5].sum() / e.sum()), 3)
                                      for name, e in errors.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_ as ao_quantize

    pipe = load_pipeline("builtin:digits")
    float_unet = pipe.unet
    linear = [n for n, m in float_unet.named_modules() if isinstance(m, nn.Linear) and not skip_reason(n, DEFAULT_SKIP)]
    layers = per_layer(pipe, linear)
    torchao_unet = copy.deepcopy(float_unet)
    ao_quantize(torchao_unet, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in linear)
    diffpress_unet = copy.deepcopy(float_unet)
    quantize_(diffpress_unet, Recipe(default=None, rules=tuple(Rule(f, preset("w8a8-int8")) for f in linear)))
    models = {"diffpress": diffpress_unet, "torchao": torchao_unet}
    seeds = [end_to_end(pipe, float_unet, models, seed, args.num_samples) for seed in args.seeds]
    total = {key: sum(row[key] for row in layers) for key in ("diffpress_w8a8", "torchao_w8a8", "diffpress_w8a16")}
    result = {"model": "builtin:digits", "layers": len(linear), "date": date.today().isoformat(),
              "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
              "command": "python bench/w8a8_gap.py --num-samples %d --seeds %s" % (args.num_samples,
                                                                              " ".join(map(str, args.seeds))),
              "per_layer_error_sum": total,
              "layers_where_diffpress_is_closer": sum(r["diffpress_w8a8"] < r["torchao_w8a8"] for r in layers),
              "end_to_end": seeds, "per_layer": layers}
    (Path(__file__).parent / "results" / "w8a8-gap-digits.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_layer"}, indent=1))


if __name__ == "__main__":
    main()
