"""Quality harness: what compression costs in pictures, at identical seeds and noise.

Generates N samples from the reference pipeline and from the compressed one with the same labels
and the same initial noise (DDIM, deterministic), then reports fidelity to the reference (PSNR,
SSIM), classifier accuracy and a Frechet distance in the classifier's feature space against
held-out real data (an FID for a small domain), weight bytes and sampling seconds. Needs a model
that ships an evaluation classifier (the built-in models do).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import checkpoint as checkpoints
from . import metrics
from .calibration import find_denoiser
from .numerics import nonfinite_guard
from .errors import InputError, require_int


@dataclass(frozen=True)
class EvalSettings:
    """How the reference and the compressed model are sampled (`for_model` fills in a built-in's own steps
    and guidance)."""

    num_samples: int = 100
    steps: int = 25
    seed: int = 0
    guidance_scale: float = 1.0
    batch_size: int = 100

    @classmethod
    def for_model(cls, model, num_samples: int = 100, steps: int | None = None, seed: int = 0,
                  guidance_scale: float | None = None) -> "EvalSettings":
        """Settings for MODEL: steps and guidance as given, else the built-in's defaults, else 25 and 1."""
        from .zoo import BUILTIN_PREFIX, builtin

        known = builtin(model) if isinstance(model, str) and model.startswith(BUILTIN_PREFIX) else None
        steps = steps if steps is not None else (known.eval_steps if known else cls.steps)
        guidance = guidance_scale if guidance_scale is not None else (known.eval_guidance if known else cls.guidance_scale)
        return cls(num_samples=num_samples, steps=steps, seed=seed, guidance_scale=guidance)

    def __post_init__(self) -> None:
        for name, minimum in (("num_samples", 1), ("steps", 1), ("batch_size", 1), ("seed", 0)):
            require_int(getattr(self, name), name, minimum)
        if not (isinstance(self.guidance_scale, (int, float)) and math.isfinite(self.guidance_scale)
                and self.guidance_scale >= 0):
            raise InputError(f"guidance_scale must be a finite number >= 0 (1: no guidance), got "
                             f"{self.guidance_scale!r}", "guidance_scale")


@dataclass
class SideMetrics:
    """One column of the eval table; None where a value does not apply (PSNR of the reference)."""

    psnr_db: float | None
    ssim: float | None
    classifier_accuracy: float
    frechet_distance: float
    size_bytes: int
    seconds: float
    psnr_ci95_db: list[float] | None = None  # bootstrap 95% interval over the samples
    classifier_accuracy_ci95: list[float] | None = None
    sample_mse: torch.Tensor | None = None  # per sample, vs the reference (images in [0, 1]): paired comparisons
    psnr_typical_db: float | None = None  # mean of the per-sample PSNRs (`metrics.typical_psnr_db`)

    def to_dict(self) -> dict:
        """The metrics as JSON (the per-sample errors stay out)."""
        return {k: v for k, v in asdict(self).items() if k != "sample_mse"}


@dataclass
class EvalResult:
    reference: SideMetrics
    compressed: SideMetrics | None
    reference_images: torch.Tensor
    compressed_images: torch.Tensor | None
    captions: list[str] | None = None  # what each sample was drawn from (text-to-image models: the prompts)

    def to_dict(self) -> dict:
        return {"reference": self.reference.to_dict(),
                "compressed": self.compressed.to_dict() if self.compressed else None}

    def save_grid(self, path: str | Path) -> Path:
        """PNG beside the samples: top row reference, bottom row compressed, same seeds column by column."""
        if self.compressed_images is None:
            raise InputError("no compressed samples to compare: evaluate with a compressed model", "grid")
        return save_grid(self.reference_images, self.compressed_images, Path(path), captions=self.captions)


def load_reference_pipeline(model: str | Path):
    """The uncompressed pipeline and the directory it came from (which holds the eval kit)."""
    from .zoo.digits import CLASSIFIER_FILE

    source = checkpoints.resolve(model)
    if not (source.is_pipeline and (source.root / CLASSIFIER_FILE).is_file()):
        from .zoo import BUILTINS
        raise InputError(f"{source.root}: eval needs a pipeline that ships an evaluation classifier "
                         f"({CLASSIFIER_FILE}); available: " + ", ".join(f"builtin:{n}" for n in BUILTINS))
    return checkpoints.load_pipeline(source.root), source.root


def evaluate(model: str | Path, compressed: str | Path | None = None,
             settings: EvalSettings = EvalSettings(), progress: bool = False) -> EvalResult:
    """Compare the compressed pipeline (if given) with MODEL on identical seeds and noise."""
    from . import io

    candidate = io.load(compressed) if compressed is not None else None  # a bad directory fails before sampling
    reference = sample_reference(model, settings, progress)
    if candidate is None:
        return EvalResult(reference.metrics, None, reference.images, None, reference.captions)
    return evaluate_pipeline(reference, candidate, progress)


@dataclass
class ReferenceRun:
    """The reference side of an evaluation, sampled once: any number of candidates can be compared with it."""

    settings: EvalSettings
    labels: torch.Tensor
    noise: torch.Tensor
    images: torch.Tensor
    metrics: SideMetrics
    classifier: torch.nn.Module
    real_features: dict
    captions: list[str] | None = None


def sample_reference(model: str | Path, settings: EvalSettings = EvalSettings(),
                     progress: bool = False) -> ReferenceRun:
    """Sample MODEL's own pipeline with the settings' labels and noise and score it."""
    from .zoo.digits import load_eval_kit

    reference_pipe, root = load_reference_pipeline(model)
    classifier, real_features = load_eval_kit(root)
    labels, noise = _labels_and_noise(settings)
    images, seconds = _sample(reference_pipe, labels, noise, settings, progress)
    side = _side(None, images, labels, classifier, real_features, reference_pipe, seconds)
    captions = reference_pipe.prompts_for(labels) if hasattr(reference_pipe, "prompts_for") else None
    return ReferenceRun(settings, labels, noise, images, side, classifier, real_features, captions)


def evaluate_pipeline(reference: ReferenceRun, pipe, progress: bool = False) -> EvalResult:
    """Compare an in-memory candidate pipeline (its denoiser compressed by any means) with `reference`."""
    images, seconds = _sample(pipe, reference.labels, reference.noise, reference.settings, progress)
    side = _side(reference.images, images, reference.labels, reference.classifier, reference.real_features,
                 pipe, seconds)
    return EvalResult(reference.metrics, side, reference.images, images, reference.captions)


def _labels_and_noise(settings: EvalSettings) -> tuple[torch.Tensor, torch.Tensor]:
    from .zoo.digits import IMAGE_SIZE, NUM_CLASSES

    labels = torch.arange(settings.num_samples) % NUM_CLASSES
    generator = torch.Generator().manual_seed(settings.seed)
    return labels, torch.randn(settings.num_samples, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


@torch.no_grad()
def _sample(pipe, labels, noise, settings: EvalSettings, progress: bool) -> tuple[torch.Tensor, float]:
    pipe.draw(labels[:1], 1, settings.guidance_scale, noise[:1])  # warm-up: one-time costs stay out of the timing
    started = time.perf_counter()
    batches = []
    with nonfinite_guard(find_denoiser(pipe), "evaluation sampling"):  # NaN/Inf named where it appears
        for start in range(0, len(labels), settings.batch_size):
            chunk = slice(start, start + settings.batch_size)
            batches.append(pipe.draw(labels[chunk], settings.steps, settings.guidance_scale, noise[chunk], progress,
                                     first_index=start))
    return torch.cat(batches), time.perf_counter() - started


@torch.no_grad()
def _side(reference_images, images, labels, classifier, real_features, pipe, seconds) -> SideMetrics:
    mean, cov = metrics.feature_statistics(classifier.features(images))
    correct = (classifier(images).argmax(1) == labels).double()
    fidelity = reference_images is not None
    to_unit = lambda x: (x + 1) / 2  # [-1, 1] -> [0, 1]
    sample_mse = metrics.per_sample_mse(to_unit(reference_images), to_unit(images)) if fidelity else None
    return SideMetrics(
        psnr_db=metrics.psnr_db(to_unit(reference_images), to_unit(images)) if fidelity else None,
        ssim=metrics.ssim(to_unit(reference_images), to_unit(images)) if fidelity else None,
        classifier_accuracy=correct.mean().item(),
        frechet_distance=metrics.frechet_distance(mean, cov, real_features["mean"], real_features["cov"]),
        size_bytes=metrics.state_bytes(find_denoiser(pipe)),
        seconds=seconds,
        psnr_ci95_db=_rounded(metrics.psnr_interval(sample_mse)) if fidelity else None,
        classifier_accuracy_ci95=_rounded(metrics.interval(metrics.bootstrap_means(correct))),
        sample_mse=sample_mse, psnr_typical_db=metrics.typical_psnr_db(sample_mse) if fidelity else None)


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


def save_grid(reference_images: torch.Tensor, compressed_images: torch.Tensor, path: Path,
              columns: int = 20, zoom: int = 4, captions: list[str] | None = None) -> Path:
    """PNG: top row reference, bottom row compressed, same seeds column by column; with `captions`,
    a numbered legend below (column i: what sample i was drawn from)."""
    from PIL import Image

    count = min(columns, len(reference_images))
    rows = torch.stack([reference_images[:count], compressed_images[:count]])  # (2, count, 1, H, W)
    pixels = ((rows + 1) / 2).clamp(0, 1)[:, :, 0]
    pixels = torch.nn.functional.pad(pixels, (1, 1, 1, 1), value=1.0)  # white gutter between digits
    grid = pixels.permute(0, 2, 1, 3).reshape(2 * pixels.shape[2], count * pixels.shape[3])
    image = Image.fromarray((grid * 255).round().byte().numpy(), mode="L")
    image = image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)
    if captions:
        image = _with_legend(image, captions[:count])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _with_legend(image, captions: list[str], line_height: int = 14):
    """The grid with two columns of 'i: caption' lines under it (columns numbered from 1, left to right)."""
    from PIL import Image, ImageDraw

    rows = (len(captions) + 1) // 2
    canvas = Image.new("L", (image.width, image.height + rows * line_height + 8), color=255)
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for index, caption in enumerate(captions):
        x = 6 + (index // rows) * (image.width // 2)
        y = image.height + 4 + (index % rows) * line_height
        draw.text((x, y), f"{index + 1}: {caption}", fill=0)
    return canvas
