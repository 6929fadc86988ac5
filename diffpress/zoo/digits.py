"""The `builtin:digits` model: a class-conditional UNet2DModel on 16x16 handwritten digits.

Trained by `scripts/train_builtin_digits.py` on scikit-learn's 8x8 digits upsampled to 16x16
(only the training script needs scikit-learn). Shipped beside it: a small CNN classifier trained on
the same data, and the mean/covariance of its features on held-out real digits, for evaluation.
Class index 10 is the "no class" label used for classifier-free guidance.
"""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel
from torch import nn

from ..errors import InputError

IMAGE_SIZE = 16
NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES
CLASSIFIER_FILE = "classifier.safetensors"
REFERENCE_FEATURES_FILE = "reference_features.safetensors"


def unet_config() -> dict:
    """1.16 M-parameter UNet: ResNet blocks at 16x16, ResNet+attention at 8x8 and 4x4."""
    return dict(sample_size=IMAGE_SIZE, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), num_class_embeds=NUM_CLASSES + 1,
                norm_num_groups=16, attention_head_dim=32)


def scheduler_config() -> dict:
    return dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                set_alpha_to_one=False, timestep_spacing="trailing", prediction_type="epsilon")


class DigitsClassifier(nn.Module):
    """Small CNN: 16x16 digit in [-1, 1] -> 10 logits; `features` gives the 128-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU())
        self.head = nn.Linear(128, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def load_eval_kit(directory) -> tuple[DigitsClassifier, dict[str, torch.Tensor]]:
    """The classifier and the held-out feature statistics shipped beside a digits pipeline."""
    from pathlib import Path

    from safetensors.torch import load_file

    directory = Path(directory)
    classifier = DigitsClassifier()
    classifier.load_state_dict(load_file(directory / CLASSIFIER_FILE))
    return classifier.eval(), load_file(directory / REFERENCE_FEATURES_FILE)


class DigitsPipeline(DiffusionPipeline):
    """Class-conditional DDIM sampling for the digits UNet; returns images in [-1, 1], (B, 1, 16, 16)."""

    def __init__(self, unet: UNet2DModel, scheduler: DDIMScheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, class_labels, num_inference_steps: int = 25, guidance_scale: float = 1.0,
                 generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                 progress: bool = False) -> torch.Tensor:
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 0:
            raise InputError(f"class_labels is empty; pass at least one label in 0..{NUM_CLASSES - 1}", "labels")
        if labels.min() < 0 or labels.max() >= NUM_CLASSES:
            bad = next(v for v in labels.tolist() if not 0 <= v < NUM_CLASSES)
            raise InputError(f"class label {bad} is out of range; this model's labels are 0..{NUM_CLASSES - 1}",
                             "labels")
        shape = (labels.numel(), 1, IMAGE_SIZE, IMAGE_SIZE)
        dtype = next(self.unet.parameters()).dtype
        sample = noise.to(dtype) if noise is not None else torch.randn(shape, generator=generator).to(dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        self.set_progress_bar_config(disable=not progress)
        for t in self.progress_bar(self.scheduler.timesteps):
            eps = self._predict_noise(sample, t, labels, guidance_scale)
            sample = self.scheduler.step(eps, t, sample).prev_sample
        return sample.float().clamp(-1, 1)

    def draw(self, labels: torch.Tensor, num_inference_steps: int, guidance_scale: float, noise: torch.Tensor,
             progress: bool = False, first_index: int = 0) -> torch.Tensor:
        """The eval harness's call (as every built-in pipeline has it): images of `labels` from `noise`."""
        return self(labels, num_inference_steps, guidance_scale, noise=noise, progress=progress)

    def _predict_noise(self, sample, t, labels, guidance_scale: float) -> torch.Tensor:
        if guidance_scale == 1.0:
            return self.unet(sample, t, class_labels=labels).sample
        both = self.unet(torch.cat([sample, sample]), t,
                         class_labels=torch.cat([labels, torch.full_like(labels, NULL_CLASS)])).sample
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)
