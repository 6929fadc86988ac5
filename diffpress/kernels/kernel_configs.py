"""Launch configurations: a shipped per-GPU cache, a fixed interpreter config, tuning on unknown shapes.

`configs/<device-slug>.json` (slug of `torch.cuda.get_device_name()`, e.g. `nvidia-h100-80gb-hbm3`)
holds, per kernel family, a `default` config and `shapes` keyed by `shape_key(M, N, K)` (M rounded
up to a power of two). A shape found there launches with its config at once (no tuning); an
unknown shape uses the family default, or, where a launcher passes `tune`, is tuned once per process
over `candidates(kernel)` with `triton.testing.do_bench` (`DIFFPRESS_AUTOTUNE=0` turns that off;
the shipped launchers do not pass `tune` yet). Under `TRITON_INTERPRET=1` the
`INTERPRETER` config always runs: autotuning needs a GPU driver.
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
# FP8 on Hopper: wgmma accumulates in ~22-bit precision; promote to fp32 every 128 products (DeepGEMM's interval)
FP8_PROMOTION_INTERVAL = 128

INTERPRETER = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4, "num_stages": 1}

# Used when neither the cache nor tuning gives a config (and as the first tuning candidate).
FALLBACK = {
    "w8a8": {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    "w4a8": {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    "w4a16": {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    "w4a16_small_m": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 4},
}

_TUNED: dict[tuple, dict] = {}


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def shape_key(m: int, n: int, k: int) -> str:
    return f"m{1 << max(m - 1, 0).bit_length()}_n{n}_k{k}"


@functools.lru_cache(maxsize=None)
def load_cache(device_name: str) -> dict:
    """The shipped cache for a GPU name ({} when none ships); exact slug first, then the longest prefix match."""
    slug = device_slug(device_name)
    files = sorted(CONFIG_DIR.glob("*.json"), key=lambda p: -len(p.stem))
    for path in files:
        if slug == path.stem or slug.startswith(path.stem):
            return json.loads(path.read_text())
    return {}


def cached_config(kernel: str, device_name: str, m: int, n: int, k: int) -> dict | None:
    family = load_cache(device_name).get("kernels", {}).get(kernel, {})
    return family.get("shapes", {}).get(shape_key(m, n, k))


def config_for(kernel: str, device: torch.device, m: int, n: int, k: int, group: int = 0,
               tune=None) -> dict:
    """The launch config of `kernel` for an (M, N, K) problem; `group` (>0) caps BLOCK_K to divide it.

    `tune(config) -> None` launches the kernel with a config; given, unknown shapes are tuned with it.
    """
    from .dispatch import interpreting

    if interpreting() or device.type != "cuda":
        return _fit_group(dict(INTERPRETER), group)
    name = torch.cuda.get_device_name(device)
    config = cached_config(kernel, name, m, n, k)
    if config is None:
        key = (kernel, name, shape_key(m, n, k), group)
        if key not in _TUNED:
            family_default = load_cache(name).get("kernels", {}).get(kernel, {}).get("default", FALLBACK[kernel])
            autotune = tune is not None and os.environ.get("DIFFPRESS_AUTOTUNE", "1") != "0"
            _TUNED[key] = _tune(kernel, group, tune) if autotune else family_default
        config = _TUNED[key]
    return _fit_group(dict(config), group)


def candidates(kernel: str) -> list[dict]:
    """Tuning candidates: the fallback and a few tile shapes around it."""
    base = FALLBACK[kernel]
    shapes = [(128, 128, 128), (128, 256, 64), (256, 128, 64), (64, 128, 128), (128, 64, 128), (64, 64, 128)]
    if kernel == "w4a16_small_m":
        shapes = [(16, 64, 128), (16, 128, 128), (16, 32, 256), (16, 64, 256)]
    out = [dict(base)]
    for bm, bn, bk in shapes:
        for warps, stages in ((4, 4), (8, 3)):
            config = {**base, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages}
            if config not in out:
                out.append(config)
    return out


def _tune(kernel: str, group: int, launch) -> dict:
    import triton
    from triton.runtime.errors import OutOfResources

    timings = []
    for config in candidates(kernel):
        try:
            timings.append((triton.testing.do_bench(lambda: launch(_fit_group(dict(config), group)), warmup=5, rep=20),
                            config))
        except OutOfResources:
            continue
    return min(timings, key=lambda pair: pair[0])[1]


def _fit_group(config: dict, group: int) -> dict:
    """Per-group scales are applied per K tile, so BLOCK_K must divide the group size (groups >= 16)."""
    while group and group % config["BLOCK_K"]:
        config["BLOCK_K"] //= 2
    return config
