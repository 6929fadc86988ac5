"""The FLUX-architecture built-in (zoo/digits_flux.py): packing, the pipeline, and every verb driving it
with prompts as they would drive a real FLUX pipeline."""
from __future__ import annotations

import json

import pytest
import torch

import diffpress
from diffpress.zoo import BUILTINS
from diffpress.zoo.digits_flux import (DigitsFluxPipeline, image_ids, pack, prompt_for, transformer_config, unpack)
from diffpress.zoo.prompts import PHRASINGS, calibration_prompts

MODEL = "builtin:digits-flux"


def test_packing_is_fluxs_and_exactly_inverted():
    images = torch.randn(3, 1, 16, 16)
    tokens = pack(images)
    assert tokens.shape == (3, 64, 4)
    assert torch.equal(tokens[0, 0], images[0, 0, :2, :2].reshape(-1))  # token 0: the top-left 2x2 patch
    assert torch.equal(tokens[0, 1], images[0, 0, :2, 2:4].reshape(-1))  # then along the row
    assert torch.equal(unpack(tokens), images)
    assert image_ids()[9].tolist() == [0.0, 1.0, 1.0]


def test_the_shipped_model_is_the_architecture_the_issue_asks_for():
    config = transformer_config()
    assert config["num_layers"] >= 4 and config["num_single_layers"] >= 8 and config["num_attention_heads"] >= 4
    pipe = diffpress.checkpoint.load_pipeline(MODEL)
    assert isinstance(pipe, DigitsFluxPipeline)
    blocks = pipe.transformer.transformer_blocks[0]
    assert blocks.ff.net[2].in_features == 4 * blocks.ff.net[2].out_features  # feed-forward expansion 4
    info = json.loads((BUILTINS["digits-flux"].path / "training.json").read_text())
    assert info["train_seconds"] <= 3600
    assert max(info["prompt_accuracy_20_steps_500_samples"].values()) >= 0.9
    size = sum(p.stat().st_size for p in BUILTINS["digits-flux"].path.rglob("*") if p.is_file())
    assert size <= 25e6


def test_prompts_follow_the_phrasings_and_guidance_uses_the_empty_prompt():
    pipe = diffpress.checkpoint.load_pipeline(MODEL)
    assert prompt_for(7, 1) == "the digit seven" and len(set(calibration_prompts())) == 10 * len(PHRASINGS)
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    guided = pipe(["a handwritten 3", "the digit eight"], guidance_scale=3.0, num_inference_steps=4, latents=noise)
    again = pipe(["a handwritten 3", "the digit eight"], guidance_scale=3.0, num_inference_steps=4, latents=noise)
    plain = pipe(["a handwritten 3", "the digit eight"], guidance_scale=1.0, num_inference_steps=4, latents=noise)
    assert guided.images.shape == (2, 1, 16, 16) and torch.equal(guided.images, again.images)
    assert not torch.equal(guided.images, plain.images)
    latent = pipe("a handwritten 3", num_inference_steps=2, output_type="latent").images
    assert latent.shape == (1, 64, 4)


def test_calibration_compression_and_reload_from_prompts(tmp_path):
    (tmp_path / "prompts.txt").write_text("a handwritten 3\nthe digit seven\n")
    from diffpress.cli.main import main

    calibration = tmp_path / "calib.safetensors"
    assert main(["calibrate", MODEL, "--calib-prompts", str(tmp_path / "prompts.txt"), "--calib-samples", "2",
                 "--calib-steps", "4", "--buckets", "2", "--reservoir-size", "1", "--out", str(calibration),
                 "--quiet"]) == 0
    calibration_set = diffpress.CalibrationSet.load(calibration)
    assert calibration_set.buckets.timestep_range == 1.0  # FLUX passes timestep / 1000
    assert "transformer_blocks.0.attn.to_q" in calibration_set.layers
    assert main(["compress", MODEL, "--preset", "w8a8-int8", "--out", str(tmp_path / "int8"), "--quiet"]) == 0
    loaded = diffpress.load(tmp_path / "int8")
    from_diffusers = DigitsFluxPipeline.from_pretrained(tmp_path / "int8")
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    run = lambda p: p(["a handwritten 1", "two"], num_inference_steps=3, latents=noise).images
    assert torch.equal(run(loaded), run(from_diffusers))
    assert type(loaded.transformer.single_transformer_blocks[0].proj_mlp).__name__ == "QuantLinear"


def test_eval_reports_prompt_following_and_writes_a_captioned_grid(tmp_path):
    diffpress.compress(MODEL, "w8a16-int8", tmp_path / "int8")
    result = diffpress.evaluate(MODEL, tmp_path / "int8", num_samples=10, steps=4)
    assert result.compressed.psnr_db > 25
    assert result.captions[:2] == [prompt_for(0, 0), prompt_for(1, 1)]
    grid = result.save_grid(tmp_path / "grid.png")
    from PIL import Image

    assert Image.open(grid).height > 2 * 18 * 4  # two rows of samples and the legend of prompts under them
