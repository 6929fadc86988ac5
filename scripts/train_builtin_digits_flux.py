"""Train the `builtin:digits-flux` model: a FLUX-architecture transformer drawing digits from text (CPU).

    python scripts/train_builtin_digits_flux.py --out diffpress/zoo/digits-flux

Data: the digits of `builtin:digits` (scikit-learn's 8x8 digits upsampled to 16x16, the same
held-out split), each paired with a prompt drawn from eight phrasings of its class ("a handwritten
7", "the digit seven", ...); one prompt in ten is replaced by the empty prompt, which guidance uses.
Objective: rectified flow (flow matching), x_t = (1 - t) x_0 + t noise, the transformer predicts the
velocity noise - x_0 at timestep t in [0, 1] (FLUX's convention); t is drawn logit-normal. The text
encoder (a small causal CLIP) is trained jointly with the transformer (`--freeze-text-encoder`
keeps it at its seeded random initialization; the training.json of each choice records its
accuracy). An exponential moving average of both is what ships. The classifier and reference
features of `builtin:digits` are copied beside the model for evaluation.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_builtin_digits import load_digits_16, shift, split  # noqa: E402

from diffpress.zoo import BUILTINS  # noqa: E402
from diffpress.zoo.digits import CLASSIFIER_FILE, REFERENCE_FEATURES_FILE, load_eval_kit  # noqa: E402
from diffpress.zoo.digits_flux import (PHRASINGS, DigitsFluxPipeline, pack, prompt_for, scheduler_config,  # noqa: E402
                                       text_encoder_config, transformer_config, write_tokenizer)

EMPTY_PROMPT_RATE = 0.1


def build(directory: Path, seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    write_tokenizer(directory / "tokenizer")
    tokenizer = CLIPTokenizer(str(directory / "tokenizer" / "vocab.json"), str(directory / "tokenizer" / "merges.txt"),
                              model_max_length=40)
    return DigitsFluxPipeline(transformer=FluxTransformer2DModel(**transformer_config()),
                              scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_config()),
                              text_encoder=CLIPTextModel(text_encoder_config()), tokenizer=tokenizer)


def batch_prompts(labels: torch.Tensor, generator: torch.Generator) -> list[str]:
    phrasings = torch.randint(0, len(PHRASINGS), (len(labels),), generator=generator).tolist()
    empty = (torch.rand(len(labels), generator=generator) < EMPTY_PROMPT_RATE).tolist()
    return ["" if drop else prompt_for(int(label), p) for label, p, drop in zip(labels, phrasings, empty)]


def logit_normal(count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.sigmoid(torch.randn(count, generator=generator))


def train(pipe: DigitsFluxPipeline, images, labels, steps: int, batch_size: int, learning_rate: float,
          freeze_text_encoder: bool, generator: torch.Generator) -> tuple[DigitsFluxPipeline, list[float]]:
    modules = [pipe.transformer] + ([] if freeze_text_encoder else [pipe.text_encoder])
    parameters = [p for module in modules for p in module.parameters()]
    pipe.text_encoder.requires_grad_(not freeze_text_encoder)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    ema = copy.deepcopy(pipe)
    for module in modules:
        module.train()
    losses, started = [], time.time()
    for step in range(steps):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        clean = pack(shift(images[index], generator))
        noise = torch.randn(clean.shape, generator=generator)
        t = logit_normal(batch_size, generator)
        noisy = (1 - t[:, None, None]) * clean + t[:, None, None] * noise
        embeddings, pooled = pipe.encode_prompt(batch_prompts(labels[index], generator))
        velocity = pipe.denoise(noisy, t, embeddings, pooled)
        loss = nn.functional.mse_loss(velocity, noise - clean)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * _schedule(step, steps)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        _ema_update(ema, pipe, modules, decay=min(0.999, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} {time.time() - started:.0f}s",
                  flush=True)
    ema.transformer.eval()
    ema.text_encoder.eval()
    return ema, losses


def _schedule(step: int, steps: int) -> float:
    """Linear warm-up over 200 steps, then cosine decay to 10%."""
    warm = min(1.0, (step + 1) / 200)
    return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))


@torch.no_grad()
def _ema_update(ema, pipe, modules, decay: float) -> None:
    for module in modules:
        target = getattr(ema, "transformer" if module is pipe.transformer else "text_encoder")
        for t, s in zip(target.parameters(), module.parameters()):
            t.lerp_(s, 1 - decay)


@torch.no_grad()
def prompt_accuracy(pipe: DigitsFluxPipeline, classifier, guidance: float, steps: int = 20, count: int = 500) -> float:
    """Samples classified as the digit their prompt names (prompts in turn through the phrasings)."""
    labels = torch.arange(count) % 10
    noise = torch.randn(count, 1, 16, 16, generator=torch.Generator().manual_seed(1234))
    images = torch.cat([pipe.draw(labels[i:i + 100], steps, guidance, noise[i:i + 100], first_index=i)
                        for i in range(0, count, 100)])
    return (classifier(images).argmax(1) == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--freeze-text-encoder", action="store_true")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0],
                        help="guidance scales to measure prompt-following accuracy at (20 steps, 500 samples)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.time()
    images, labels = load_digits_16()
    train_index, _ = split(labels, generator)
    scratch = args.out.with_name(args.out.name + ".build")
    shutil.rmtree(scratch, ignore_errors=True)
    pipe = build(scratch, args.seed)
    pipe, losses = train(pipe, images[train_index], labels[train_index], args.steps, args.batch_size,
                         args.learning_rate, args.freeze_text_encoder, generator)
    train_seconds = time.time() - started
    pipe.save_pretrained(args.out, safe_serialization=True)
    shutil.rmtree(scratch, ignore_errors=True)
    digits = BUILTINS["digits"].path
    for name in (CLASSIFIER_FILE, REFERENCE_FEATURES_FILE):
        shutil.copy2(digits / name, args.out / name)
    classifier, _ = load_eval_kit(args.out)
    accuracy = {str(g): prompt_accuracy(pipe, classifier, g) for g in args.guidance}
    info = {"train_seconds": round(train_seconds, 1), "steps": args.steps, "batch_size": args.batch_size,
            "learning_rate": args.learning_rate, "text_encoder": "frozen" if args.freeze_text_encoder else "trained jointly",
            "seed": args.seed, "final_loss_last_100_steps": round(sum(losses[-100:]) / 100, 4),
            "prompt_accuracy_20_steps_500_samples": accuracy,
            "transformer_parameters": sum(p.numel() for p in pipe.transformer.parameters()),
            "text_encoder_parameters": sum(p.numel() for p in pipe.text_encoder.parameters()),
            "command": "python scripts/train_builtin_digits_flux.py " + " ".join(sys.argv[1:])}
    (args.out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
