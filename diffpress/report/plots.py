"""Matplotlib figures of a sensitivity report, returned as PNG bytes (Agg backend, no display)."""
from __future__ import annotations

import io
import math

from ..compression.sensitivity.report import SensitivityReport


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    _pyplot().close(figure)
    return buffer.getvalue()


def _short(fqn: str, width: int = 42) -> str:
    return fqn if len(fqn) <= width else "..." + fqn[-(width - 3):]


def sensitivity_bars(report: SensitivityReport, layers: list[str]) -> bytes:
    """Grouped horizontal bars: output SQNR (dB) per layer and candidate; lower = more sensitive."""
    plt = _pyplot()
    height = max(3.0, 0.28 * len(layers) * max(1, len(report.candidates)) / 2 + 1)
    figure, axis = plt.subplots(figsize=(8, height))
    step = 0.8 / len(report.candidates)
    for index, name in enumerate(report.candidates):
        values = [_finite(report.output_sqnr_db(fqn, name)) for fqn in layers]
        axis.barh([i + index * step for i in range(len(layers))], values, height=step, label=name)
    axis.set_yticks([i + 0.4 - step / 2 for i in range(len(layers))], [_short(f) for f in layers], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("denoiser output SQNR (dB) with only this layer quantized")
    axis.legend(fontsize=7)
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def bucket_heatmap(report: SensitivityReport, layers: list[str], name: str) -> bytes:
    """Layer x timestep-bucket heatmap of output SQNR (dB) for one candidate."""
    plt = _pyplot()
    grid = [[_finite(v) for v in report.output_sqnr[fqn][name]] for fqn in layers]
    figure, axis = plt.subplots(figsize=(8, max(3.0, 0.22 * len(layers) + 1.2)))
    image = axis.imshow(grid, aspect="auto", cmap="viridis")
    axis.set_xticks(range(len(report.buckets)), [str(b) for b in report.buckets])
    axis.set_yticks(range(len(layers)), [_short(f) for f in layers], fontsize=7)
    axis.set_xlabel("timestep bucket (0 = least noisy)")
    axis.set_title(f"output SQNR (dB) per bucket, {name}")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    return _png(figure)


def activation_ranges(report: SensitivityReport, layers: list[str]) -> bytes:
    """Input absmax per timestep bucket for the given layers (the most sensitive ones)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 3.5))
    for fqn in layers:
        values = report.activation_absmax.get(fqn, [])
        points = [(b, v) for b, v in enumerate(values) if v is not None]
        axis.plot([b for b, _ in points], [v for _, v in points], "o-", label=_short(fqn))
    return _line_chart_png(figure, axis, "timestep bucket (0 = least noisy)", "input absmax")


def size_curve(curve: list[dict]) -> bytes:
    """Quality vs average bits: mixed (ILP) line, uniform candidates as points. Measured PSNR where the
    points carry it, else the allocator's predicted SNR."""
    plt = _pyplot()
    key, label = ("psnr_db", "measured PSNR vs float samples (dB)") if "psnr_db" in curve[0] else \
        ("predicted_sqnr_db", "predicted SNR (dB)")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    mixed = [p for p in curve if p["kind"] == "mixed"]
    axis.plot([p["avg_bits"] for p in mixed], [p[key] for p in mixed], "o-", label="mixed (ILP)")
    for point in (p for p in curve if p["kind"] != "mixed"):
        axis.plot(point["avg_bits"], point[key], "s", label=f"uniform {point['kind']}")
    return _line_chart_png(figure, axis, "average weight bits", label)


def _line_chart_png(figure, axis, xlabel: str, ylabel: str) -> bytes:
    """Axis labels, a light grid and a legend, then the figure as PNG bytes."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return _png(figure)
