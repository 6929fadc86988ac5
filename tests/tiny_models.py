"""Tiny random-init diffusers denoisers built from configs in code, with example inputs."""
from __future__ import annotations

import torch
from diffusers import (FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel,
                       UNet2DConditionModel, UNet2DModel)


def tiny_unet2d_condition():
    model = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    g = torch.Generator().manual_seed(0)
    inputs = dict(sample=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([10, 500]),
                  encoder_hidden_states=torch.randn(2, 5, 32, generator=g))
    return model, inputs


def tiny_pixart():
    model = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=4, in_channels=4,
        out_channels=8, cross_attention_dim=32, caption_channels=32, norm_type="ada_norm_single",
        use_additional_conditions=False)
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([10, 500]),
                  encoder_hidden_states=torch.randn(2, 5, 32, generator=g))
    return model, inputs


def tiny_flux():
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))
    g = torch.Generator().manual_seed(0)
    image_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    inputs = dict(hidden_states=torch.randn(2, 16, 16, generator=g), timestep=torch.tensor([0.1, 0.9]),
                  encoder_hidden_states=torch.randn(2, 6, 32, generator=g),
                  pooled_projections=torch.randn(2, 32, generator=g), img_ids=image_ids.reshape(-1, 3),
                  txt_ids=torch.zeros(6, 3))
    return model, inputs


def tiny_sd3():
    model = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32, out_channels=4, pos_embed_max_size=8)
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([10, 500]),
                  encoder_hidden_states=torch.randn(2, 5, 32, generator=g),
                  pooled_projections=torch.randn(2, 32, generator=g))
    return model, inputs


def tiny_unet2d():
    model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 32),
                        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)
    inputs = dict(sample=torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
                  timestep=torch.tensor([10, 500]))
    return model, inputs


ARCHITECTURES = {
    "unet2d_condition": tiny_unet2d_condition,
    "pixart": tiny_pixart,
    "flux": tiny_flux,
    "sd3": tiny_sd3,
}


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model, inputs = ARCHITECTURES[name]()
    return model.eval(), inputs


@torch.no_grad()
def run(model, inputs) -> torch.Tensor:
    return model(**inputs, return_dict=False)[0]


def timestep_loop(inputs: dict, timesteps):
    """A forward_loop for calibrate(): one denoiser call per timestep, the whole batch at that timestep."""
    @torch.no_grad()
    def forward_loop(denoiser):
        batch = inputs["timestep"].shape[0]
        for t in timesteps:
            denoiser(**{**inputs, "timestep": torch.full((batch,), float(t))})
    return forward_loop
