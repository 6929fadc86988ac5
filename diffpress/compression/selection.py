"""Choosing among allocations by measuring them, on samples the sensitivity run did not use.

The integer program trusts each layer's cost to add up with the others' and the image metric's few
samples to speak for every prompt; neither is exact. So the allocation is not taken on the program's word
alone: the program is solved with three cost tables (the image metric where measured, the output metric
only, and their geometric mean), each distinct allocation is assembled from the measured modules and
sampled on a held-out probe (other seeds than the sensitivity probe's), and the one with the smallest
measured image error (the geometric mean over samples of each sample's error) is kept. The contenders all
meet the budget, so the choice never spends more.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from torch import nn
from tqdm.auto import tqdm

from .allocate import Allocation, LayerChoices, allocate, choices_from_report
from .sensitivity.image_metric import ImageProbe, float_reference, measure_choice
from .sensitivity.report import ImageScore, SensitivityReport

IMAGE_METRIC, OUTPUT_METRIC, GEOMETRIC_MEAN = "image metric", "output metric", "geometric mean"


@dataclass
class Selection:
    """Which contender was kept, and each contender's measured score on the held-out samples."""

    chosen: str
    scores: dict[str, ImageScore]  # contender -> score (contenders with the same allocation share one)
    same_as: dict[str, str]  # contender -> the earlier contender it duplicates
    samples: int

    def to_dict(self) -> dict:
        psnr = lambda s: round(s.psnr_db, 3) if math.isfinite(s.psnr_db) else None
        return {"chosen": self.chosen, "held_out_samples": self.samples, "same_as": self.same_as,
                "psnr_db": {name: psnr(score) for name, score in self.scores.items()},
                "relative_error": {name: score.relative_error for name, score in self.scores.items()},
                "typical_error": {name: score.typical_error for name, score in self.scores.items()}}


def contenders(report: SensitivityReport, budget, candidates: Sequence[str] | None = None,
               latency_table: Mapping[str, float] | None = None) -> dict[str, Allocation]:
    """The allocation under `budget` of each cost table (only the image metric's when no layer has it... and
    then the output metric is the same table, so one contender)."""
    image = choices_from_report(report, candidates, latency_table)
    result = {IMAGE_METRIC: allocate(image, budget)}
    if not report.image:
        return result
    output_report = SensitivityReport.from_dict({**report.to_dict(), "image": {}})
    output = choices_from_report(output_report, candidates, latency_table)
    result[OUTPUT_METRIC] = allocate(output, budget)
    result[GEOMETRIC_MEAN] = allocate(_geometric_mean(image, output), budget)
    return result


def _geometric_mean(first: list[LayerChoices], second: list[LayerChoices]) -> list[LayerChoices]:
    """Per (layer, candidate): sqrt(cost in `first` x cost in `second`) (scale-free: each table's units cancel
    out of the program)."""
    result = []
    for a, b in zip(first, second):
        other = {option.candidate: option.cost for option in b.options}
        options = tuple(replace(option, cost=math.sqrt(option.cost * other[option.candidate]))
                        for option in a.options if option.candidate in other)
        result.append(replace(a, options=options))
    return result


def select(denoiser: nn.Module, allocations: dict[str, Allocation], variants, probe: ImageProbe, samples: int,
           progress: bool = False) -> tuple[Allocation, Selection]:
    """Measure each distinct allocation on `probe` (its layers quantized together, the float modules put back
    afterwards) and keep the smallest image error (`ImageScore.cost`: the typical per-sample error); on a tie
    the earlier contender (the image metric's)."""
    reference = float_reference(probe, denoiser)
    scores: dict[str, ImageScore] = {}
    same_as: dict[str, str] = {}
    for name, allocation in tqdm(allocations.items(), desc="measure allocations", unit="allocation",
                                 disable=not progress):
        earlier = next((other for other in scores if allocations[other].choice == allocation.choice), None)
        if earlier is not None:
            same_as[name] = earlier
            continue
        scores[name] = measure_choice(denoiser, variants, allocation.choice, probe, reference)
    chosen = min(scores, key=lambda name: (scores[name].cost, list(allocations).index(name)))
    return allocations[chosen], Selection(chosen, scores, same_as, samples)
