"""LoRA on a quantized denoiser vs the same LoRA on the float one, on builtin:digits (CPU).

    python bench/lora.py [--num-samples 200] [--steps 400] [--seeds 0 1]
        # bench/results/lora-digits.json

The adapter: rank 8 on every attention projection and time-embedding projection of the digits UNet
(Linear layers only: LoRA on quantized convolutions is refused), trained here for `--steps` steps
(seed 0) to draw bold digits: the training images are the digits dilated by a 3x3 max filter. Then,
at identical labels, seeds and noise (the eval harness's), 200 samples x 25 DDIM steps each, at seeds 0 and 1
(bootstrap 95% intervals over the samples):
- float model + LoRA: the reference; float model alone: how far the LoRA moves the pictures;
- for w8a8-int8 and w4a8-int: the compressed model (diffpress compress), with the same LoRA injected
  by peft (the path diffusers' load_lora_weights takes), PSNR against float + LoRA; and without the
  LoRA, PSNR against the float model alone (what quantization costs either way), and the paired difference
  of the two over the same samples.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from train_builtin_digits import load_digits_16, shift  # noqa: E402

import diffpress  # noqa: E402
from diffpress.checkpoint import load_pipeline  # noqa: E402
from diffpress.evaluation import EvalSettings, _labels_and_noise, _sample, _side  # noqa: E402
from diffpress.metrics import paired_psnr_difference  # noqa: E402
from diffpress.zoo import BUILTINS  # noqa: E402
from diffpress.zoo.digits import load_eval_kit  # noqa: E402

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "time_emb_proj"]
PRESETS = ("w8a8-int8", "w4a8-int")
RESULTS = Path(__file__).parent / "results"


def lora_config() -> LoraConfig:
    return LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS, init_lora_weights="gaussian")


def train_adapter(unet, steps: int, seed: int = 0) -> dict:
    """Train a bold-digits LoRA on the float UNet (base frozen); return its state dict."""
    images, labels = load_digits_16()
    bold = torch.nn.functional.max_pool2d(images, 3, stride=1, padding=1)
    inject_adapter_in_model(lora_config(), unet, "bold")
    trainable = [p for name, p in unet.named_parameters() if "lora_" in name]
    for name, parameter in unet.named_parameters():
        parameter.requires_grad_("lora_" in name)
    scheduler = load_pipeline("builtin:digits").scheduler
    optimizer = torch.optim.AdamW(trainable, lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    unet.train()
    for step in range(steps):
        batch = torch.randint(0, len(bold), (64,), generator=generator)
        clean = shift(bold[batch], generator)
        noise = torch.randn(clean.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (64,), generator=generator)
        noisy = scheduler.add_noise(clean, noise, t)
        loss = torch.nn.functional.mse_loss(unet(noisy, t, class_labels=labels[batch]).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    unet.eval().requires_grad_(False)
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet, adapter_name="bold").items()}


def with_adapter(unet, adapter: dict):
    inject_adapter_in_model(lora_config(), unet, "bold")
    set_peft_model_state_dict(unet, adapter, adapter_name="bold")
    return unet


class Sampler:
    """The eval harness's labels and noise at one seed."""

    def __init__(self, settings: EvalSettings) -> None:
        self.settings = settings
        self.classifier, self.real = load_eval_kit(BUILTINS["digits"].path)
        self.labels, self.noise = _labels_and_noise(settings)

    def run(self, pipe, reference=None):
        """(images, SideMetrics against `reference`)."""
        images, seconds = _sample(pipe, self.labels, self.noise, self.settings, False)
        return images, _side(reference, images, self.labels, self.classifier, self.real, pipe, seconds)


def scored(side) -> dict:
    return {k: v for k, v in side.to_dict().items() if k != "size_bytes"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=400, help="LoRA training steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="evaluation seeds (the sampling noise)")
    args = parser.parse_args()
    torch.manual_seed(0)
    samplers = {seed: Sampler(EvalSettings(num_samples=args.num_samples, seed=seed)) for seed in args.seeds}
    pipe = load_pipeline("builtin:digits")
    floats = {seed: sampler.run(pipe) for seed, sampler in samplers.items()}
    started = time.perf_counter()
    adapter = train_adapter(pipe.unet, args.steps)
    train_seconds = time.perf_counter() - started
    loras = {seed: sampler.run(pipe, floats[seed][0]) for seed, sampler in samplers.items()}
    rows = [{"model": "float + LoRA", **scored(loras[args.seeds[0]][1]), "psnr_vs": "float (the LoRA's effect)",
             "by_seed": [by_seed(seed, side) for seed, (_, side) in loras.items()]}]
    with tempfile.TemporaryDirectory() as scratch:
        for name in PRESETS:
            started = time.perf_counter()
            diffpress.compress("builtin:digits", name, Path(scratch) / name)
            compress_seconds = time.perf_counter() - started
            quantized = diffpress.load(Path(scratch) / name)
            plain = {seed: sampler.run(quantized, floats[seed][0])[1] for seed, sampler in samplers.items()}
            with_adapter(quantized.unet, adapter)
            adapted = {seed: sampler.run(quantized, loras[seed][0])[1] for seed, sampler in samplers.items()}
            first = args.seeds[0]
            rows.append({"model": f"{name} + LoRA", **scored(adapted[first]), "psnr_vs": "float + LoRA",
                         "by_seed": [by_seed(seed, side) for seed, side in adapted.items()],
                         "without_lora": {**scored(plain[first]), "psnr_vs": "float",
                                          "by_seed": [by_seed(seed, side) for seed, side in plain.items()]},
                         "with_minus_without": [{"seed": seed, **rounded(paired_psnr_difference(
                             adapted[seed].sample_mse, plain[seed].sample_mse))} for seed in args.seeds],
                         "compress_seconds": round(compress_seconds, 1)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "without_lora"}), flush=True)
    write(args, rows, scored(floats[args.seeds[0]][1]), train_seconds)


def by_seed(seed: int, side) -> dict:
    return {"seed": seed, "psnr_db": round(side.psnr_db, 3), "psnr_ci95_db": side.psnr_ci95_db,
            "classifier_accuracy": side.classifier_accuracy}


def rounded(difference: dict) -> dict:
    """A paired difference: PSNR(with the LoRA, vs float + LoRA) - PSNR(without, vs float), same samples."""
    return {"difference_db": round(difference["difference_db"], 3),
            "ci95_db": [round(x, 3) for x in difference["ci95_db"]]}


def write(args, rows, float_side, train_seconds) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
              "date": date.today().isoformat(), "commit": commit,
              "command": "python bench/lora.py " + shlex.join(sys.argv[1:]),
              "model": "builtin:digits", "adapter": {"rank": 8, "targets": TARGETS, "training_steps": args.steps,
                                                      "training_seconds": round(train_seconds, 1),
                                                      "style": "bold digits (3x3 max-filtered training images)"},
              "eval": {"num_samples": args.num_samples, "steps": 25, "seeds": args.seeds}, "float": float_side,
              "rows": rows}
    (RESULTS / "lora-digits.json").write_text(json.dumps(result, indent=1) + "\n")

if __name__ == "__main__":
    main()
