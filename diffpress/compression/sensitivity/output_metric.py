"""The output metric: SQNR of the denoiser's output, per timestep bucket, with one layer quantized.

Calls from the calibration reservoir are replayed through the float denoiser once (the reference
outputs are cached), then once per (layer, candidate) with that layer swapped for its quantized
variant. Needs only the calibration set: no pipeline, no sampler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ... import distributed, resume
from ...calibration import CalibrationSet
from ...calibration.reservoir import ReservoirEntry
from ...errors import DiffpressError, InputError
from ..surgery import swapped

BIT_EXACT_DB = 200.0  # SQNR reported for identical outputs: capped so JSON and sums stay finite


@dataclass
class Replay:
    """The replayed calls, their buckets and the cached float outputs."""

    calls: list[ReservoirEntry]
    buckets: list[int]
    reference: list[torch.Tensor]


def replay_reference(denoiser: nn.Module, calibration: CalibrationSet, calls_per_bucket: int) -> Replay:
    """Up to `calls_per_bucket` reservoir calls per bucket and the float denoiser's outputs on them."""
    calls = calibration.entries(calls_per_bucket)
    if not calls:
        raise InputError("the calibration set has no reservoir entries to replay; calibrate with reservoir_size >= 1",
                         "calibration")
    reference = [denoise(denoiser, entry) for entry in calls]
    for entry, output in zip(calls, reference):
        if not torch.isfinite(output).all():
            raise DiffpressError(f"the float denoiser's output is not finite (NaN/Inf) on the reservoir call at "
                                 f"timestep {entry.timestep:g}; sensitivity needs a model that runs cleanly")
    return Replay(calls, [entry.bucket for entry in calls], reference)


@torch.no_grad()
def denoise(denoiser: nn.Module, entry: ReservoirEntry) -> torch.Tensor:
    return output_tensor(denoiser(**entry.call_kwargs())).float()


def output_tensor(output) -> torch.Tensor:
    """The predicted tensor of a denoiser's return value (tuple, diffusers output object or tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    for name in ("sample", "noise_pred"):
        if getattr(output, name, None) is not None:
            return getattr(output, name)
    return output[0]


def output_sensitivity(denoiser: nn.Module, layers, replay: Replay, candidates, variants,
                       progress: bool = False) -> dict[str, dict[str, list[float]]]:
    """fqn -> candidate -> SQNR (dB) per bucket, each layer quantized alone with each candidate."""
    result: dict[str, dict[str, list[float]]] = {}
    checkpoints = resume.stage("output-sensitivity")  # one record per measured layer
    with tqdm(total=len(layers) * len(candidates), desc="sensitivity", unit="layer x format",
              disable=not progress) as bar:
        for index, (info, _) in enumerate(layers):
            if not distributed.mine(index):  # several processes: layer i is rank i % N's
                continue
            if checkpoints.has(info.fqn):
                result[info.fqn] = checkpoints.load(info.fqn)[1]
                bar.update(len(candidates))
                continue
            result[info.fqn] = {}
            for name in candidates:
                with swapped(denoiser, {info.fqn: variants.module(info.fqn, name)}):
                    outputs = [denoise(denoiser, entry) for entry in replay.calls]
                result[info.fqn][name] = per_bucket_sqnr(replay.reference, outputs, replay.buckets)
                bar.update()
            checkpoints.save(info.fqn, {}, result[info.fqn])
    return distributed.merged_dicts(result, [info.fqn for info, _ in layers])


def per_bucket_sqnr(reference: list[torch.Tensor], outputs: list[torch.Tensor], buckets: list[int]) -> list[float]:
    """SQNR (dB) per bucket, summing signal and noise power over that bucket's calls; -inf if non-finite."""
    signal, noise = {}, {}
    for ref, out, bucket in zip(reference, outputs, buckets):
        signal[bucket] = signal.get(bucket, 0.0) + float(ref.double().square().sum())
        error = float((ref.double() - out.double()).square().sum()) if torch.isfinite(out).all() else math.inf
        noise[bucket] = noise.get(bucket, 0.0) + error
    return [_ratio_db(signal[b], noise[b]) for b in sorted(signal)]


def _ratio_db(signal: float, noise: float) -> float:
    if not math.isfinite(noise):
        return -math.inf
    if noise == 0:
        return BIT_EXACT_DB
    return 10 * math.log10(max(signal, 1e-30) / noise)
