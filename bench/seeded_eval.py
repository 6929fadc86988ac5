"""Shared by the pruning benchmarks (bench/pruning.py, bench/layer_pruning.py): a candidate pipeline evaluated
against the float model at several seeds, with bootstrap intervals, and paired comparisons between rows."""
from __future__ import annotations

import torch

from diffpress.evaluation import EvalSettings, evaluate_pipeline, sample_reference
from diffpress.metrics import paired_psnr_difference


class SeededReferences:
    """The float model sampled once per evaluation seed; `evaluate` compares a candidate at every seed."""

    def __init__(self, model: str, num_samples: int, seeds: list[int]) -> None:
        self.seeds = list(seeds)
        self.settings = EvalSettings.for_model(model, num_samples, seed=self.seeds[0])
        self.references = {seed: sample_reference(model, EvalSettings.for_model(model, num_samples, seed=seed))
                           for seed in self.seeds}
        self.errors: dict[str, dict[int, torch.Tensor]] = {}  # row key -> seed -> per-sample MSE

    @property
    def first(self):
        return self.references[self.seeds[0]]

    def evaluate(self, key: str, pipe) -> tuple[object, dict]:
        """(the first seed's compressed-side metrics, JSON columns: headline metrics with intervals at the first
        seed, and PSNR / accuracy at every seed). The per-sample errors are kept under `key` for `paired`."""
        sides = {seed: evaluate_pipeline(reference, pipe).compressed for seed, reference in self.references.items()}
        self.errors[key] = {seed: side.sample_mse for seed, side in sides.items()}
        first = sides[self.seeds[0]]
        columns = {"psnr_db": round(first.psnr_db, 2), "psnr_ci95_db": first.psnr_ci95_db,
                   "psnr_typical_db": round(first.psnr_typical_db, 2),
                   "ssim": round(first.ssim, 4), "accuracy": first.classifier_accuracy,
                   "accuracy_ci95": first.classifier_accuracy_ci95, "frechet": round(first.frechet_distance, 3),
                   "seconds_per_step": round(first.seconds / self.settings.steps, 4)}
        if len(self.seeds) > 1:
            columns["by_seed"] = [{"seed": seed, "psnr_db": round(side.psnr_db, 3), "psnr_ci95_db": side.psnr_ci95_db,
                                   "psnr_typical_db": round(side.psnr_typical_db, 3),
                                   "accuracy": side.classifier_accuracy} for seed, side in sides.items()]
        return first, columns

    def paired(self, key: str, other: str) -> list[dict]:
        """PSNR(key) - PSNR(other) over the same samples at each seed, with paired bootstrap 95% intervals."""
        result = []
        for seed in self.seeds:
            difference = paired_psnr_difference(self.errors[key][seed], self.errors[other][seed])
            result.append({"seed": seed, "difference_db": round(difference["difference_db"], 3),
                           "ci95_db": [round(x, 3) for x in difference["ci95_db"]]})
        return result
