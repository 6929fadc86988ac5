"""The quantized module each (layer, candidate) is measured with, and which layers are measured."""
from __future__ import annotations

import copy
import time
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ...calibration import CalibrationSet
from ...errors import InputError
from ...presets import Candidate, SensitivityMethods, candidate
from ...recipe import Recipe, Rounding, Rule
from ..surgery import compressed_module, compressible_layers, unsupported_reason
from ..swap import skip_reason
from .report import LayerInfo


def measured_layers(denoiser: nn.Module, skip: Sequence) -> list[tuple[LayerInfo, nn.Module]]:
    """(info, float module) of every compressible layer not on the skip list, in module order."""
    result = []
    for fqn, module in compressible_layers(denoiser):
        if skip_reason(fqn, skip) is None and unsupported_reason(module) is None:
            shape = (module.weight.shape[0], module.weight[0].numel())
            result.append((LayerInfo(fqn, type(module).__name__, shape), module))
    return result


class LayerVariants:
    """The quantized module each (layer, candidate) is measured with.

    rtn: built on demand from the candidate's round-to-nearest plan. full: one module per (layer,
    candidate), from quantizing a copy of the model once per candidate with the candidate's full
    preset (`build`); `compress` with a mixed-precision plan assembles its model from them.
    """

    def __init__(self, layers: Sequence[tuple[LayerInfo, nn.Module]], modules: dict | None = None,
                 seconds: float = 0.0) -> None:
        self.float_modules = {info.fqn: module for info, module in layers}
        self.modules = modules  # (fqn, candidate) -> module; None: rtn, built on demand
        self.seconds = seconds  # spent quantizing up front

    @classmethod
    def build(cls, denoiser: nn.Module, calibration: CalibrationSet, candidates: Sequence[str],
              methods: SensitivityMethods, skip: Sequence, progress: bool = False) -> "LayerVariants":
        """The variants of every layer `measured_layers(denoiser, skip)` lists."""
        layers = measured_layers(denoiser, skip)
        if SensitivityMethods(methods) is SensitivityMethods.RTN:
            return cls(layers)
        started, modules = time.perf_counter(), {}
        for name in tqdm(candidates, desc="quantize per candidate", unit="candidate", disable=not progress):
            for fqn, module in _quantized_copy(denoiser, [info.fqn for info, _ in layers], candidate(name),
                                               calibration, progress).items():
                modules[fqn, name] = module
        return cls(layers, modules, time.perf_counter() - started)

    def module(self, fqn: str, name: str) -> nn.Module:
        if self.modules is not None:
            return self.modules[fqn, name]
        return quantized_for_measurement(self.float_modules[fqn], candidate(name))

    def full_modules(self, choice: dict[str, str]) -> dict[str, nn.Module] | None:
        """The full-method module of each chosen (layer, candidate), None if this run measured rtn."""
        if self.modules is None:
            return None
        return {fqn: self.modules[fqn, name] for fqn, name in choice.items() if not candidate(name).high_precision}


def _quantized_copy(denoiser: nn.Module, fqns: list[str], choice: Candidate, calibration: CalibrationSet,
                    progress: bool = False) -> dict[str, nn.Module]:
    """Every named layer under `choice`'s full preset, quantized together on a copy of the model."""
    from ..ptq import quantize_model

    if choice.high_precision:
        return {fqn: quantized_for_measurement(denoiser.get_submodule(fqn), choice) for fqn in fqns}
    if choice.full.rounding is Rounding.BLOCK:
        raise InputError(f"candidate {choice.name!r} uses block reconstruction, which depends on the whole block's "
                         "formats; measure it with methods='rtn' or pick a layer-wise preset", "candidates")
    copied = copy.deepcopy(denoiser)
    recipe = Recipe(default=None, rules=tuple(Rule(fqn, choice.full) for fqn in fqns), keep_default_skips=False)
    quantize_model(copied, recipe, calibration, progress=progress)
    return {fqn: copied.get_submodule(fqn) for fqn in fqns}


def quantized_for_measurement(module: nn.Module, choice: Candidate) -> nn.Module:
    """The layer under `choice`'s round-to-nearest plan; bf16: a copy whose weight went through bfloat16."""
    if not choice.high_precision:
        return compressed_module(module, choice.round_to_nearest)
    rounded = copy.deepcopy(module)
    with torch.no_grad():
        rounded.weight.copy_(module.weight.to(torch.bfloat16).to(module.weight.dtype))
    return rounded
