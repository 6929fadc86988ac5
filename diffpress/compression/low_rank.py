"""A high-precision low-rank branch that absorbs weight outliers (SVDQuant).

W = U_r S_r V_r^T + R: the top-`rank` singular directions stay in high precision as
`up` (N, r) = U_r S_r and `down` (r, K) = V_r^T, and only the residual R, whose outliers the
branch took, is quantized. The layer computes Q(x) Q(R)^T + (x down^T) up^T.
"""
from __future__ import annotations

import torch


def split_low_rank(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(down (r, K), up (N, r), residual (N, K)) of a float (N, K) weight; rank is capped at min(N, K)."""
    rank = min(rank, *weight.shape)
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    up = (u[:, :rank] * s[:rank]).float()
    down = vh[:rank].float()
    return down, up, (weight.double() - up.double() @ down.double()).float()
