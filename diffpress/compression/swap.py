"""`quantize_`: swap a model's Linear/Conv2d layers for quantized ones in place.

The default skip list keeps the layers that every diffusion quantization study keeps in high
precision (they are small and errors there hit every token/pixel): time/text/class embedders, the
input/patch embedding, and the final output projection. Norm layers are never Linear/Conv2d and
stay as they are. Patterns are regexes on the module's fully qualified name (fqn).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError
from ..numerics import check_weights
from ..recipe import QuantSpec, Recipe
from .surgery import compressed_module, compressible_layers, replace_module, unsupported_reason

DEFAULT_SKIP: tuple[tuple[str, str], ...] = (
    (r"(^|\.)(time_embedding|time_embed|time_proj|timestep_embedder|time_text_embed|text_embedder|"
     r"guidance_embedder|class_embedding|class_embedder|label_emb|add_embedding|add_time_proj|"
     r"adaln_single|caption_projection|context_embedder|encoder_hid_proj)(\.|$)", "time/text/class embedder"),
    (r"^(conv_in|x_embedder|pos_embed|patch_embed|img_in|txt_in)(\.|$)", "input/patch embedding"),
    (r"^(conv_out|proj_out|proj_out_\d+|norm_out|final_layer)(\.|$)", "final output projection"),
)


@dataclass
class QuantizationReport:
    """Which layers were quantized and which were skipped (fqn -> reason)."""

    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def skip_reason(fqn: str, skip: Iterable[tuple[str, str] | str]) -> str | None:
    """The reason of the first skip pattern matching `fqn`, or None."""
    for entry in skip:
        pattern, reason = (entry, "user skip pattern") if isinstance(entry, str) else entry
        if re.search(pattern, fqn):
            return reason
    return None


def quantize_(model: nn.Module, spec: QuantSpec | Recipe | Callable[[str], QuantSpec | None],
              skip: Iterable[tuple[str, str] | str] | None = None, progress: bool = False) -> QuantizationReport:
    """Quantize `model` in place; `spec` is one QuantSpec, a Recipe, or a function fqn -> QuantSpec | None.

    `skip` defaults to DEFAULT_SKIP (for a Recipe: DEFAULT_SKIP if it keeps the default skips);
    pass extra regex strings (or (regex, reason) pairs) to skip more, or an empty tuple to skip
    nothing. Returns what was quantized and what was skipped, with the reason.
    """
    if skip is None:
        skip = DEFAULT_SKIP if not isinstance(spec, Recipe) or spec.keep_default_skips else ()
    skip = tuple(skip)
    report = QuantizationReport()
    layers = list(compressible_layers(model))
    for fqn, module in tqdm(layers, desc="quantize", unit="layer", disable=not progress):
        layer_spec, reason = plan_of(spec, fqn, skip, module)
        if layer_spec is None:
            report.skipped[fqn] = reason
            continue
        if layer_spec.needs_calibration or layer_spec.low_rank:
            raise InputError(f"{fqn}: plan '{layer_spec.describe()}' uses methods quantize_ does not apply; use "
                             "diffpress.compress(...) or diffpress.compression.ptq.quantize_model(model, recipe, "
                             "calibration_set)", "spec")
        check_weights(fqn, module)
        replace_module(model, fqn, compressed_module(module, layer_spec))
        report.quantized.append(fqn)
    return report


def plan_of(spec, fqn: str, skip: tuple, module: nn.Module | None = None) -> tuple[QuantSpec | None, str]:
    """(the layer's plan, or None and why it stays in high precision)."""
    reason = skip_reason(fqn, skip) or (unsupported_reason(module) if module is not None else None)
    if reason:
        return None, reason
    if isinstance(spec, Recipe):
        rule = spec.rule_for(fqn)
        plan = rule.plan if rule else spec.default
        why = f"recipe rule {rule.match!r}" if rule else "recipe default is skip"
        return plan, ("" if plan else why)
    plan = spec(fqn) if callable(spec) else spec
    return plan, ("" if plan else "no plan for this layer")
