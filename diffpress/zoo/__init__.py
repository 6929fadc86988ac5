"""Built-in models shipped inside the package (`builtin:NAME` wherever a MODEL path is accepted)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .prompts import calibration_prompts

BUILTIN_PREFIX = "builtin:"
ZOO_DIR = Path(__file__).parent


@dataclass(frozen=True)
class BuiltinModel:
    """name: as in builtin:NAME. calibration_labels / calibration_prompts: what the model is calibrated on
    when the user names nothing (its classes, or prompts covering them). eval_steps / eval_guidance: how
    `diffpress eval` samples it by default."""

    name: str
    summary: str
    calibration_labels: tuple[int, ...] | None = None
    calibration_prompts: tuple[str, ...] | None = None
    eval_steps: int = 25
    eval_guidance: float = 1.0

    @property
    def path(self) -> Path:
        return ZOO_DIR / self.name


BUILTINS = {
    "digits": BuiltinModel("digits", "class-conditional UNet2DModel (1.2 M params, attention at 8x8/4x4) on 16x16 "
                                     "handwritten digits; DDIM sampler; ships a classifier for eval",
                           calibration_labels=tuple(range(10))),
    "digits-flux": BuiltinModel("digits-flux", "text-to-image FluxTransformer2DModel (4 double + 8 single blocks) "
                                               "with a small CLIP text encoder, flow matching, 16x16 digits from "
                                               "prompts; ships a classifier for eval",
                                calibration_prompts=calibration_prompts(),
                                eval_steps=20, eval_guidance=3.0),
}


def builtin(model: str) -> BuiltinModel:
    """The built-in named `builtin:NAME`; InputError lists the built-ins."""
    name = model[len(BUILTIN_PREFIX):]
    if name not in BUILTINS:
        raise InputError(f"unknown built-in model {model!r}; available: "
                         + ", ".join(BUILTIN_PREFIX + n for n in BUILTINS), "model")
    return BUILTINS[name]


def builtin_path(model: str) -> Path:
    """Path of `builtin:NAME`; InputError lists the built-ins."""
    return builtin(model).path


def pipeline_classes() -> dict[str, type]:
    """Pipeline classes diffpress defines, by the `_class_name` their model_index.json carries."""
    from .digits import DigitsPipeline
    from .digits_flux import DigitsFluxPipeline

    return {"DigitsPipeline": DigitsPipeline, "DigitsFluxPipeline": DigitsFluxPipeline}
