"""Built-in models shipped inside the package (`builtin:NAME` wherever a MODEL path is accepted)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

BUILTIN_PREFIX = "builtin:"
ZOO_DIR = Path(__file__).parent


@dataclass(frozen=True)
class BuiltinModel:
    """name: as in builtin:NAME. calibration_labels / calibration_prompts: what the model is calibrated on
    when the user names nothing (its classes, or prompts covering them)."""

    name: str
    summary: str
    calibration_labels: tuple[int, ...] | None = None
    calibration_prompts: tuple[str, ...] | None = None

    @property
    def path(self) -> Path:
        return ZOO_DIR / self.name


BUILTINS = {
    "digits": BuiltinModel("digits", "class-conditional UNet2DModel (1.2 M params, attention at 8x8/4x4) on 16x16 "
                                     "handwritten digits; DDIM sampler; ships a classifier for eval",
                           calibration_labels=tuple(range(10))),
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

    return {"DigitsPipeline": DigitsPipeline}
