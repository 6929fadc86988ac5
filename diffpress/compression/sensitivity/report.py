"""What a sensitivity run measured: the SensitivityReport and its JSON form (no measuring code here).

Per (layer, candidate): the denoiser-output SQNR per timestep bucket, and where measured the
final-image score. `cost` is what the allocator minimizes; see the package docstring for why it is
the image error wherever that was measured.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InputError


@dataclass(frozen=True)
class LayerInfo:
    fqn: str
    kind: str  # Linear / Conv2d
    shape: tuple[int, int]  # the (N, K) matrix the weight is stored as

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class ImageScore:
    psnr_db: float
    ssim: float | None
    relative_error: float  # |ref - x|^2 / |ref|^2 over the samples, comparable to 10^(-SQNR/10)
    typical_error: float | None = None  # geometric mean over samples of each sample's relative error

    @property
    def cost(self) -> float:
        """What an allocation is judged by: the typical per-sample error where measured (reports before it
        have the pooled relative error only). The pooled error is mostly one sample's when a perturbation
        moves that sample to another mode: on builtin:digits-flux, of 12 single-layer perturbations, the
        largest of 16 samples held 21-97% of the pooled error (median 64%;
        bench/results/image-metric-samples-digits-flux.json), and the 13 layers most sensitive to w4a8-int
        by pooled error sit within 1.7x of each other (1.6e-3 to 2.8e-3) while their typical errors span
        7.5x. The geometric mean over samples ranks what a layer does to every sample."""
        return self.relative_error if self.typical_error is None else self.typical_error


@dataclass
class SensitivityReport:
    """Per (layer, candidate): output SQNR per bucket; image scores for a few layers; activation ranges."""

    layers: list[LayerInfo]
    candidates: list[str]
    buckets: list[int]  # the timestep buckets measured, in order
    output_sqnr: dict[str, dict[str, list[float]]]  # fqn -> candidate -> dB per bucket (-inf: non-finite)
    image: dict[str, dict[str, ImageScore]] = field(default_factory=dict)
    activation_absmax: dict[str, list[float]] = field(default_factory=dict)  # fqn -> input absmax per bucket
    info: dict = field(default_factory=dict)

    def layer(self, fqn: str) -> LayerInfo:
        return next(layer for layer in self.layers if layer.fqn == fqn)

    def output_error(self, fqn: str, name: str) -> float:
        """Relative noise power of the denoiser output, averaged over buckets (inf if non-finite)."""
        values = self.output_sqnr[fqn][name]
        return sum(10 ** (-v / 10) if v != -math.inf else math.inf for v in values) / len(values)

    def output_sqnr_db(self, fqn: str, name: str) -> float:
        return db(self.output_error(fqn, name))

    def cost(self, fqn: str, name: str) -> float:
        """What the allocator minimizes: the image error (`ImageScore.cost`) where it was measured, otherwise
        the output relative error brought to image units (`output_to_image`)."""
        image = self.image.get(fqn, {}).get(name)
        if image is not None:
            return image.cost
        return self.output_to_image * self.output_error(fqn, name)

    @property
    def output_to_image(self) -> float:
        """One factor mapping output relative error onto image relative error: the ratio of their totals
        over every image-measured (layer, candidate); 1 when no layer has the image metric. It only
        matters when some layers have the image metric and others do not."""
        pairs = [(self.output_error(f, c), score.cost) for f, per in self.image.items()
                 for c, score in per.items() if math.isfinite(score.cost)]
        pairs = [(o, i) for o, i in pairs if math.isfinite(o)]
        output_total = sum(o for o, _ in pairs)
        return sum(i for _, i in pairs) / output_total if output_total > 0 else 1.0

    def ranking(self, name: str) -> list[str]:
        """Layers from most to least sensitive to candidate `name` (ties by name)."""
        return sorted(self.output_sqnr, key=lambda fqn: (-self.cost(fqn, name), fqn))

    def bucket_spread_db(self, fqn: str, name: str) -> float:
        finite = [v for v in self.output_sqnr[fqn][name] if math.isfinite(v)]
        return max(finite) - min(finite) if finite else 0.0

    def to_dict(self) -> dict:
        return {"layers": [{"fqn": l.fqn, "kind": l.kind, "shape": list(l.shape)} for l in self.layers],
                "candidates": self.candidates, "buckets": self.buckets,
                "output_sqnr_db": {f: {c: [_json_float(v) for v in vs] for c, vs in per.items()}
                                   for f, per in self.output_sqnr.items()},
                "image": {f: {c: {k: _json_float(v) if isinstance(v, float) else v for k, v in vars(s).items()}
                              for c, s in per.items()} for f, per in self.image.items()},
                "activation_absmax": self.activation_absmax, "info": self.info}

    @classmethod
    def from_dict(cls, data: dict) -> "SensitivityReport":
        layers = [LayerInfo(l["fqn"], l["kind"], tuple(l["shape"])) for l in data["layers"]]
        sqnr = {f: {c: [-math.inf if v is None else v for v in vs] for c, vs in per.items()}
                for f, per in data["output_sqnr_db"].items()}
        image = {f: {c: _image_score_from(s) for c, s in per.items()} for f, per in data.get("image", {}).items()}
        return cls(layers, list(data["candidates"]), list(data["buckets"]), sqnr, image,
                   data.get("activation_absmax", {}), data.get("info", {}))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityReport":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise InputError(f"{path}: not a readable sensitivity report ({type(error).__name__}: {error})") from None


def db(error: float) -> float:
    """Relative error -> dB (inf for zero error, -inf for non-finite)."""
    if error == 0:
        return math.inf
    return -10 * math.log10(error) if math.isfinite(error) else -math.inf


def _json_float(value: float) -> float | None:
    """JSON has no infinities: non-finite values (a layer that broke the model) are written as null."""
    return value if math.isfinite(value) else None


def _image_score_from(data: dict) -> ImageScore:
    broken = data["relative_error"] is None
    typical = data.get("typical_error")
    return ImageScore(-math.inf if broken else data["psnr_db"], data["ssim"],
                      math.inf if broken else data["relative_error"],
                      math.inf if broken and "typical_error" in data else typical)
