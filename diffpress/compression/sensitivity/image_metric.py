"""The image metric: final samples with one layer (or one allocation) quantized, against the float model's.

A probe is any callable `probe(denoiser) -> samples` that draws a few samples from fixed seeds
through the sampler; `pipeline_image_probe` makes one from a diffusers pipeline, and Python API
users with their own sampler pass their own (as `calibrate(..., forward_loop=)` takes a loop).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ... import distributed, metrics, resume
from ...errors import DiffpressError
from ...numerics import nonfinite_guard
from ...presets import candidate
from ..surgery import swapped
from .report import ImageScore, SensitivityReport

ImageProbe = Callable[[nn.Module], torch.Tensor]  # runs a few seeded samples through the denoiser
IDENTICAL_PSNR_DB = 200.0  # PSNR reported for identical samples: capped, as the output metric's SQNR
TYPICAL_ERROR_FLOOR = 1e-20  # per-sample relative error below float32's resolution of an image: identical


def pipeline_image_probe(pipe, items: Sequence, num_samples: int = 8, steps: int = 10, seed: int = 0) -> ImageProbe:
    """A probe that samples `pipe` on `num_samples` of `items` (prompts or class labels) for `steps` steps,
    generator seeded `seed`, whatever denoiser the pipeline holds when the probe is called."""
    chunk = [items[i % len(items)] for i in range(num_samples)]
    takes_labels = "class_labels" in inspect.signature(pipe.__call__).parameters

    @torch.no_grad()
    def probe(denoiser) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        if takes_labels:
            return pipe(class_labels=chunk, num_inference_steps=steps, generator=generator)
        result = pipe(prompt=list(chunk), num_inference_steps=steps, generator=generator, output_type="pt")
        return torch.as_tensor(result.images if hasattr(result, "images") else result[0])
    return probe


@torch.no_grad()
def sample(probe: ImageProbe, denoiser: nn.Module) -> torch.Tensor:
    return probe(denoiser).detach().float()


def image_score(reference: torch.Tensor, images: torch.Tensor) -> ImageScore:
    """PSNR over the reference's value range, SSIM where images are at least 11x11, the relative error pooled
    over the samples and its typical value per sample (`typical_error`)."""
    if not torch.isfinite(images).all():
        return ImageScore(-math.inf, None, math.inf, math.inf)
    low, high = float(reference.min()), float(reference.max())
    span = max(high - low, 1e-12)
    unit = lambda x: ((x - low) / span).clamp(0, 1)
    psnr = min(metrics.psnr_db(unit(reference), unit(images)), IDENTICAL_PSNR_DB)
    ssim = metrics.ssim(unit(reference), unit(images)) if reference.dim() == 4 and min(reference.shape[-2:]) >= 11 else None
    noise = float((reference.double() - images.double()).square().sum())
    relative = noise / max(float(reference.double().square().sum()), 1e-30)
    return ImageScore(psnr, ssim, relative, typical_error(reference, images))


def per_sample_error(reference: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Each sample's (the first dimension's) relative error |ref - x|^2 / |ref|^2, float64."""
    return (metrics.per_sample_mse(reference, images)
            / metrics.per_sample_mse(torch.zeros_like(reference), reference).clamp_min(1e-30))


def typical_error(reference: torch.Tensor, images: torch.Tensor) -> float:
    """The geometric mean over samples of `per_sample_error`, floored at TYPICAL_ERROR_FLOOR so that a sample
    left bit-identical does not send it to zero."""
    return float(per_sample_error(reference, images).clamp_min(TYPICAL_ERROR_FLOOR).log().mean().exp())


def float_reference(probe: ImageProbe, denoiser: nn.Module) -> torch.Tensor:
    """The float model's samples; DiffpressError if they are not finite."""
    with nonfinite_guard(denoiser, "the float model's image-metric samples"):
        reference = sample(probe, denoiser)
    if not torch.isfinite(reference).all():
        raise DiffpressError("the float model's samples are not finite (NaN/Inf); the image metric needs clean samples")
    return reference


def image_metric_layers(report: SensitivityReport, count: int | None) -> list[str]:
    """Every layer (count None), or half by largest per-bucket SQNR spread and half by largest output
    error (at the cheapest candidate): where the output metric is least trustworthy."""
    if count is None:
        return list(report.output_sqnr)
    if count == 0:
        return []
    cheapest = min(report.candidates, key=lambda name: (candidate(name).weight_bits, report.candidates.index(name)))
    by_spread = sorted(report.output_sqnr, key=lambda f: (-report.bucket_spread_db(f, cheapest), f))
    by_error = sorted(report.output_sqnr, key=lambda f: (-report.output_error(f, cheapest), f))
    chosen: list[str] = []
    for fqn in _interleave(by_spread, by_error):
        if fqn not in chosen:
            chosen.append(fqn)
        if len(chosen) == min(count, len(by_error)):
            break
    return chosen


def _interleave(first: list[str], second: list[str]):
    for a, b in zip(first, second):
        yield a
        yield b


def image_sensitivity(denoiser: nn.Module, report: SensitivityReport, probe: ImageProbe, image_layers: int | None,
                      variants, progress: bool = False) -> dict[str, dict[str, ImageScore]]:
    """fqn -> candidate -> image score for the layers `image_metric_layers` picks, each quantized alone."""
    reference = float_reference(probe, denoiser)
    chosen = image_metric_layers(report, image_layers)
    scores: dict[str, dict[str, ImageScore]] = {}
    checkpoints = resume.stage("image-sensitivity")  # one record per measured layer
    with tqdm(total=len(chosen) * len(report.candidates), desc="image metric", unit="layer x format",
              disable=not progress) as bar:
        for index, fqn in enumerate(chosen):
            if not distributed.mine(index):  # several processes: layer i is rank i % N's
                continue
            if checkpoints.has(fqn):
                scores[fqn] = {name: ImageScore(**fields) for name, fields in checkpoints.load(fqn)[1].items()}
                bar.update(len(report.candidates))
                continue
            scores[fqn] = {}
            for name in report.candidates:
                with swapped(denoiser, {fqn: variants.module(fqn, name)}):
                    scores[fqn][name] = image_score(reference, sample(probe, denoiser))
                bar.update()
            checkpoints.save(fqn, {}, {name: dataclasses.asdict(score) for name, score in scores[fqn].items()})
    return distributed.merged_dicts(scores, chosen)


def measure_choice(denoiser: nn.Module, variants, choice: dict[str, str], probe: ImageProbe,
                   reference: torch.Tensor) -> ImageScore:
    """Image score of the model with every layer of `choice` quantized at once (the float modules are
    put back afterwards): a measured point of the quality-vs-size curve."""
    with swapped(denoiser, {fqn: variants.module(fqn, name) for fqn, name in choice.items()}):
        return image_score(reference, sample(probe, denoiser))


def measured_curve(report: SensitivityReport, denoiser: nn.Module, variants, probe: ImageProbe,
                   progress: bool = False) -> list[dict]:
    """Each allocation of the quality-vs-size curve quantized as a whole, scored on the probe's samples."""
    from ..allocate import choices_from_report, curve_allocations

    reference = sample(probe, denoiser)
    points = []
    for kind, allocation in tqdm(curve_allocations(choices_from_report(report), report.candidates),
                                 desc="quality-vs-size curve", unit="allocation", disable=not progress):
        score = measure_choice(denoiser, variants, allocation.choice, probe, reference)
        psnr = round(score.psnr_db, 3) if math.isfinite(score.psnr_db) else None  # None: non-finite samples
        points.append({**allocation.curve_point(kind), "psnr_db": psnr,
                       "ssim": None if score.ssim is None else round(score.ssim, 5)})
    return points
