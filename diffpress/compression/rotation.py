"""Rotations: an orthogonal transform of a layer's input channels that spreads outliers before quantization
(QuaRot, ConvRot/DiRotQ for diffusion models).

R = D H / sqrt(b), block-diagonal over the input channels: D is a fixed random diagonal of signs, H the
b x b Hadamard matrix (Sylvester), b the largest power of two that divides the channel count (and the
shortcut split point, so no block straddles the two separately quantized halves). R is orthogonal, so
x W^T = (x R)(W R)^T: the weight is rotated once, offline, and quantized rotated; the activation is rotated
at run time, after smoothing and before activation quantization. Both are the same operation on rows
(`rotate`), computed with a fast Walsh-Hadamard transform: O(K log b) per token, no b x b matrix.

Where it applies: Linear layers (over in_features) and Conv2d layers with groups == 1 (over input channels;
a conv is linear in its input channels, so each kh x kw tap is rotated alike). It is not folded into the
previous layer: in diffusers denoisers the layer before a projection is almost always a normalization with
an elementwise affine or a nonlinearity, which a rotation does not commute with; the run-time transform
is the general form. Static activation scales are not combined with it (per-channel calibration maxima do
not survive a rotation); activations with rotation are dynamic.
"""
from __future__ import annotations

import zlib

import torch
from torch import nn

SIGNS_DTYPE = torch.int8


def rotation_block(channels: int, act_split: int | None = None) -> int:
    """The block size b: the largest power of two dividing `channels` (and `act_split` when given)."""
    block = channels & -channels
    if act_split:
        block = min(block, act_split & -act_split)
    return block


def random_signs(channels: int, block: int) -> torch.Tensor:
    """The diagonal D as (channels // block, block) int8 signs from a generator seeded by the shape, so a
    layer's rotation is the same on every run; the buffer's shape carries the block size."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"rotation/{channels}/{block}".encode()))
    bits = torch.randint(0, 2, (channels // block, block), generator=generator)
    return (bits * 2 - 1).to(SIGNS_DTYPE)


def layer_signs(module: nn.Module, act_split: int | None = None) -> torch.Tensor:
    """The signs of a Linear's or (groups == 1) Conv2d's input rotation (float or quantized module)."""
    channels = module.in_features if hasattr(module, "in_features") else module.in_channels
    return random_signs(channels, rotation_block(channels, act_split))


def transformed_input(x: torch.Tensor, smooth: torch.Tensor | None, signs: torch.Tensor | None,
                      channel_dim: int = -1) -> torch.Tensor:
    """What a layer with smoothing and rotation feeds its quantizer: (x / smooth) R along `channel_dim`, float32."""
    x32 = x.float()
    if smooth is not None:
        shape = [1] * x32.dim()
        shape[channel_dim] = -1
        x32 = x32 / smooth.float().reshape(shape)
    return rotate(x32, signs, channel_dim) if signs is not None else x32


def hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """x @ H along the last dimension (a power of two), by butterflies; unnormalized, float32."""
    size = x.shape[-1]
    lead = x.shape[:-1]
    y = x.float().reshape(-1, size)
    half = 1
    while half < size:
        pairs = y.reshape(-1, size // (2 * half), 2, half)
        y = torch.stack((pairs[:, :, 0] + pairs[:, :, 1], pairs[:, :, 0] - pairs[:, :, 1]), dim=2).reshape(-1, size)
        half *= 2
    return y.reshape(*lead, size)


def hadamard_matrix(size: int) -> torch.Tensor:
    """The Sylvester Hadamard matrix (unnormalized, float32): the dense reference of `hadamard_transform`."""
    matrix = torch.ones(1, 1)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix


def rotate(x: torch.Tensor, signs: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
    """x R along `channel_dim` (float32), R = D H / sqrt(b) block-diagonal with `signs` of shape (blocks, b)."""
    blocks, block = signs.shape
    moved = x.float().movedim(channel_dim, -1)
    lead = moved.shape[:-1]
    grouped = moved.reshape(*lead, blocks, block) * signs.to(device=x.device, dtype=torch.float32)
    rotated = hadamard_transform(grouped) / block ** 0.5
    return rotated.reshape(*lead, blocks * block).movedim(-1, channel_dim)


def rotate_flat(rows: torch.Tensor, signs: torch.Tensor, patch: int) -> torch.Tensor:
    """`rotate` on flattened (M, C * patch) rows (a conv's flattened weight or im2col rows, channel-major):
    each of the `patch` kernel taps is rotated over the channels alike. patch = 1 for a linear."""
    if patch == 1:
        return rotate(rows, signs)
    return rotate(rows.reshape(rows.shape[0], -1, patch), signs, channel_dim=1).reshape(rows.shape[0], -1)
