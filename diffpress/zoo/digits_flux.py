"""The `builtin:digits-flux` model: a text-to-image FluxTransformer2DModel on 16x16 handwritten digits.

The same digits data as `builtin:digits`, drawn from prompts such as "a handwritten 7" or "the digit
seven" by a FLUX-architecture transformer (diffusers' `FluxTransformer2DModel`, unmodified: double-
and single-stream blocks, joint attention, adaLN modulation, rotary embeddings) with flow matching
(`FlowMatchEulerDiscreteScheduler`). The image is its own latent (no VAE): one channel, packed 2x2 as
FLUX packs latents, so the transformer sees 64 tokens of 4 values. A small causal CLIP text encoder
(`CLIPTextModel`, trained jointly) stands in for both of FLUX's encoders: its sequence output feeds
the text stream, its pooled output the pooled projection. Classifier-free guidance runs with the
empty prompt. Trained by `scripts/train_builtin_digits_flux.py`.
"""
from __future__ import annotations

import string
from typing import Sequence

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

from ..errors import InputError
from .prompts import PHRASINGS, prompt_for  # noqa: F401  (the training script imports them from here)

IMAGE_SIZE = 16
PATCH = 2
TOKENS = (IMAGE_SIZE // PATCH) ** 2
MAX_TEXT_TOKENS = 40
def transformer_config() -> dict:
    """4 double-stream and 8 single-stream blocks, 4 heads of 24, feed-forward expansion 4 (FLUX's)."""
    return dict(patch_size=1, in_channels=PATCH * PATCH, num_layers=4, num_single_layers=8, attention_head_dim=24,
                num_attention_heads=4, joint_attention_dim=96, pooled_projection_dim=96, guidance_embeds=False,
                axes_dims_rope=(8, 8, 8))


def text_encoder_config():
    """A 2-layer causal CLIP text encoder, width 96, over the character vocabulary."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(vocabulary()), hidden_size=96, intermediate_size=384, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=MAX_TEXT_TOKENS, projection_dim=96,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


def vocabulary() -> list[str]:
    """Character-level BPE vocabulary: specials, then every character bare and at the end of a word."""
    chars = list(string.ascii_lowercase + string.digits)
    return ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]


def write_tokenizer(directory) -> None:
    """vocab.json and merges.txt of a CLIPTokenizer over `vocabulary()` (no merges: one token per character)."""
    import json
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocabulary())}))
    (directory / "merges.txt").write_text("#version: 0.2\n")


def scheduler_config() -> dict:
    return dict(num_train_timesteps=1000, shift=1.0)


def pack(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C * 4): FLUX's 2x2 latent packing."""
    b, c, h, w = images.shape
    patches = images.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack(tokens: torch.Tensor, channels: int = 1) -> torch.Tensor:
    b = tokens.shape[0]
    side = IMAGE_SIZE // PATCH
    patches = tokens.reshape(b, side, side, channels, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, channels, IMAGE_SIZE, IMAGE_SIZE)


def image_ids() -> torch.Tensor:
    """(tokens, 3) rotary positions of the packed image tokens: (0, row, column), as FLUX's."""
    side = IMAGE_SIZE // PATCH
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()


class DigitsFluxOutput:
    """What the pipeline returns: `images` (B, 1, 16, 16) in [-1, 1], or the packed latents for output_type='latent'."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __getitem__(self, index):
        return (self.images,)[index]


class DigitsFluxPipeline(DiffusionPipeline):
    """Text-to-image flow-matching sampling for the digits FLUX transformer, with classifier-free guidance."""

    def __init__(self, transformer: FluxTransformer2DModel, scheduler: FlowMatchEulerDiscreteScheduler,
                 text_encoder, tokenizer) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, text_encoder=text_encoder,
                              tokenizer=tokenizer)

    def encode_prompt(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequence embeddings (B, L, D), pooled embeddings (B, D)) of the prompts."""
        tokens = self.tokenizer([p.lower() for p in prompts], padding="max_length", max_length=MAX_TEXT_TOKENS,
                                truncation=True, return_tensors="pt")
        output = self.text_encoder(tokens.input_ids.to(self.text_encoder.device))
        return output.last_hidden_state, output.pooler_output

    def denoise(self, latents, timestep, embeddings, pooled) -> torch.Tensor:
        """The transformer's velocity for packed `latents` at `timestep` in [0, 1] (FLUX's timestep / 1000)."""
        dtype = self.transformer.dtype
        text_ids = torch.zeros(embeddings.shape[1], 3)
        return self.transformer(hidden_states=latents.to(dtype), timestep=timestep.to(dtype),
                                encoder_hidden_states=embeddings.to(dtype), pooled_projections=pooled.to(dtype),
                                txt_ids=text_ids, img_ids=image_ids(), return_dict=False)[0]

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                 guidance_scale: float = 3.0, num_inference_steps: int = 20, generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pt", progress: bool = False):
        """Sample one image per prompt. latents: initial noise, (B, 1, 16, 16) or packed (B, 64, 4).
        guidance_scale 1: no guidance (the negative prompt is not used). output_type: 'pt' (images in [-1, 1])
        or 'latent' (the packed final latents)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise InputError("prompt is empty; pass at least one prompt", "prompts")
        if output_type not in ("pt", "latent"):
            raise InputError(f"output_type must be 'pt' or 'latent', got {output_type!r}", "output_type")
        sample = self._initial_latents(len(prompts), latents, generator)
        conditioning = self._conditioning(prompts, negative_prompt, guidance_scale)
        self.scheduler.set_timesteps(num_inference_steps)
        self.set_progress_bar_config(disable=not progress)
        for t in self.progress_bar(self.scheduler.timesteps):
            velocity = self._guided_velocity(sample, t, conditioning, guidance_scale)
            sample = self.scheduler.step(velocity.float(), t, sample).prev_sample
        images = sample if output_type == "latent" else unpack(sample).clamp(-1, 1)
        return DigitsFluxOutput(images)

    def _initial_latents(self, count: int, latents, generator) -> torch.Tensor:
        if latents is None:
            latents = torch.randn(count, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        packed = pack(latents) if latents.dim() == 4 else latents
        if packed.shape != (count, TOKENS, PATCH * PATCH):
            raise InputError(f"latents must be ({count}, 1, {IMAGE_SIZE}, {IMAGE_SIZE}) or ({count}, {TOKENS}, "
                             f"{PATCH * PATCH}), got {tuple(latents.shape)}", "latents")
        return packed.float()

    def _conditioning(self, prompts, negative_prompt, guidance_scale: float):
        if guidance_scale == 1.0:
            return self.encode_prompt(prompts)
        negatives = [negative_prompt or ""] * len(prompts) if not isinstance(negative_prompt, (list, tuple)) \
            else list(negative_prompt)
        return self.encode_prompt(list(prompts) + negatives)

    def _guided_velocity(self, sample, t, conditioning, guidance_scale: float) -> torch.Tensor:
        embeddings, pooled = conditioning
        timestep = (t / self.scheduler.config.num_train_timesteps).expand(embeddings.shape[0])
        if guidance_scale == 1.0:
            return self.denoise(sample, timestep, embeddings, pooled).float()
        both = self.denoise(torch.cat([sample, sample]), timestep, embeddings, pooled).float()
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def prompts_for(self, labels: torch.Tensor, first_index: int = 0) -> list[str]:
        """The prompt sample i of class labels[i] is drawn from in `draw` (the phrasings in turn)."""
        return [prompt_for(int(label), first_index + i) for i, label in enumerate(labels)]

    def draw(self, labels: torch.Tensor, num_inference_steps: int, guidance_scale: float, noise: torch.Tensor,
             progress: bool = False, first_index: int = 0) -> torch.Tensor:
        """The eval harness's call: sample i (counting from `first_index`) of class labels[i] is drawn from
        `prompt_for(label, i)` (the phrasings in turn); images in [-1, 1]."""
        return self(self.prompts_for(labels, first_index), guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, latents=noise,
                    progress=progress).images
