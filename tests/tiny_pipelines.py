"""Tiny random-init pipelines built in code (no downloads): SD 1.x, DiT, FLUX."""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel,
                       FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusionPipeline)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import tiny_models


def tiny_clip_tokenizer(directory: Path) -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer: vocab of letters (no merges) and the two specials."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(string.ascii_lowercase) + \
             [c + "</w>" for c in string.ascii_lowercase]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=16)


def tiny_clip_text_encoder(vocab_size: int) -> CLIPTextModel:
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, projection_dim=32,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(config).eval()


def tiny_vae(latent_channels: int = 4) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(32,), in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         norm_num_groups=8, sample_size=8).eval()


def tiny_sd_pipeline(tmp_path: Path) -> StableDiffusionPipeline:
    tokenizer = tiny_clip_tokenizer(tmp_path / "tokenizer")
    unet, _ = tiny_models.build("unet2d_condition")
    return StableDiffusionPipeline(vae=tiny_vae(), text_encoder=tiny_clip_text_encoder(len(tokenizer)),
                                   tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_dit_pipeline() -> DiTPipeline:
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                        norm_type="ada_norm_zero").eval()
    return DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=DDIMScheduler())


def tiny_flux_pipeline() -> FluxPipeline:
    transformer, _ = tiny_models.build("flux")
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)


def flux_prompt_embeds(batch: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(prompt_embeds=torch.randn(batch, 6, 32, generator=g),
                pooled_prompt_embeds=torch.randn(batch, 32, generator=g))
