"""Train the `builtin:digits` diffusion model and its evaluation classifier (deterministic, CPU).

    python scripts/train_builtin_digits.py --out diffpress/zoo/digits

Data: scikit-learn's 8x8 handwritten digits (1797 images), upsampled to 16x16, scaled to [-1, 1].
A fixed stratified split holds out 300 images (30 per class): the classifier is validated on them, and the
mean/covariance of the classifier's features on them is the Frechet-distance reference.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DModel
from safetensors.torch import save_file
from torch import nn

from diffpress.zoo.digits import (CLASSIFIER_FILE, NULL_CLASS, REFERENCE_FEATURES_FILE, DigitsClassifier, DigitsPipeline, scheduler_config, unet_config)

HELD_OUT_PER_CLASS = 30


def load_digits_16() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = nn.functional.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    return images * 2 - 1, torch.tensor(data.target)


def split(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    held = []
    for digit in range(10):
        index = (labels == digit).nonzero().flatten()
        held.append(index[torch.randperm(len(index), generator=generator)[:HELD_OUT_PER_CLASS]])
    held = torch.cat(held).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held] = False
    return mask.nonzero().flatten(), held


def shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random +-1 pixel translation (padding with background -1): cheap augmentation."""
    padded = nn.functional.pad(images, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[..., dy:dy + 16, dx:dx + 16]


def train_classifier(images, labels, held_images, held_labels, steps: int, generator) -> DigitsClassifier:
    model = DigitsClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for step in range(steps):
        batch = torch.randint(0, len(images), (128,), generator=generator)
        noisy = shift(images[batch], generator) + 0.1 * torch.randn(images[batch].shape, generator=generator)
        loss = nn.functional.cross_entropy(model(noisy.clamp(-1, 1)), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(held_images).argmax(1) == held_labels).float().mean().item()
    print(f"classifier: held-out accuracy {accuracy:.4f}", flush=True)
    return model


def train_unet(images, labels, steps: int, batch_size: int, generator) -> UNet2DModel:
    unet = UNet2DModel(**unet_config())
    ema = UNet2DModel(**unet_config())
    ema.load_state_dict(unet.state_dict())
    scheduler = DDIMScheduler(**scheduler_config())
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=0.0)
    lr_at = lambda step: min(1.0, (step + 1) / 100) * 0.5 * (1 + torch.cos(torch.tensor(step / steps * torch.pi)).item())
    started = time.time()
    for step in range(steps):
        batch = torch.randint(0, len(images), (batch_size,), generator=generator)
        clean = shift(images[batch], generator)
        cond = labels[batch].clone()
        cond[torch.rand(batch_size, generator=generator) < 0.1] = NULL_CLASS
        noise = torch.randn(clean.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        loss = nn.functional.mse_loss(unet(scheduler.add_noise(clean, noise, t), t, class_labels=cond).sample, noise)
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * lr_at(step)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        _ema_update(ema, unet, decay=min(0.998, (1 + step) / (10 + step)))
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} {time.time() - started:.0f}s", flush=True)
    return ema.eval()


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for target, source in zip(ema.parameters(), model.parameters()):
        target.lerp_(source, 1 - decay)


@torch.no_grad()
def feature_statistics(classifier: DigitsClassifier, images: torch.Tensor) -> dict[str, torch.Tensor]:
    features = classifier.features(images).double()
    return {"mean": features.mean(0).float(), "cov": torch.cov(features.T).float()}


@torch.no_grad()
def sample_accuracy(pipe: DigitsPipeline, classifier, guidance: float, count: int = 500) -> float:
    labels = torch.arange(count) % 10
    generator = torch.Generator().manual_seed(1234)
    images = torch.cat([pipe(labels[i:i + 100], 25, guidance, generator=generator) for i in range(0, count, 100)])
    return (classifier(images).argmax(1) == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1300)
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--classifier-steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.time()
    images, labels = load_digits_16()
    train_index, held_index = split(labels, generator)
    classifier = train_classifier(images[train_index], labels[train_index], images[held_index],
                                  labels[held_index], args.classifier_steps, generator)
    unet = train_unet(images[train_index], labels[train_index], args.steps, args.batch_size, generator)
    pipe = DigitsPipeline(unet=unet, scheduler=DDIMScheduler(**scheduler_config()))
    pipe.save_pretrained(args.out, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, args.out / CLASSIFIER_FILE)
    save_file(feature_statistics(classifier, images[held_index]), args.out / REFERENCE_FEATURES_FILE)
    accuracy = {g: sample_accuracy(pipe, classifier, g) for g in (1.0, 2.0)}
    info = {"train_seconds": round(time.time() - started, 1), "steps": args.steps, "batch_size": args.batch_size,
            "seed": args.seed, "held_out_images": len(held_index),
            "sample_accuracy_25_ddim_steps_500_samples": {str(k): v for k, v in accuracy.items()},
            "unet_parameters": sum(p.numel() for p in unet.parameters())}
    (args.out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
