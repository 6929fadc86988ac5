"""Per (layer, timestep bucket) input statistics, mergeable associatively.

Max/min/counts merge exactly; sums of squares are float32 per call and accumulated in float64 across
calls (merging partial runs matches one full run to ~1e-12 relative; one call's sum is within ~1e-7).
The histogram is over log2|x| with fixed edges (4 bins per octave from 2^-24 to 2^24), so histograms of
different runs add up without rebinning; quantiles of |x| for percentile clipping come from it. Every statistic is one reduction
over the input as it lies (no transposed or float64 copy of it), and the histogram reads at most
HIST_SAMPLE (4096) evenly strided elements of each call: the collector's cost per call is three passes
over the activation (bench/results/calibration-cost.json).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

HIST_LOG2_MIN, HIST_LOG2_MAX, HIST_BINS = -24.0, 24.0, 192
HIST_SAMPLE = 1 << 12  # elements of each call's input whose |x| goes into the histogram


@dataclass
class ActStats:
    channel_absmax: torch.Tensor  # (C,) float32, max |x| per input channel
    channel_sumsq: torch.Tensor  # (C,) float64, sum of x^2 per input channel
    tensor_min: torch.Tensor  # () float32
    tensor_max: torch.Tensor  # () float32
    abs_log2_hist: torch.Tensor  # (HIST_BINS,) int64, counts of log2|x| of the sampled elements (zeros: bin 0)
    tokens: torch.Tensor  # () int64, rows seen (tokens, or pixels for conv inputs)

    @classmethod
    def from_input(cls, x: torch.Tensor, channel_dim: int) -> "ActStats":
        """Statistics of one input tensor; `channel_dim` is the input-channel axis (-1 linear, 1 conv). A
        non-finite input gives a non-finite channel_absmax (the collector checks that, not every element)."""
        x = x.detach()
        x = x if x.dtype == torch.float32 else x.float()
        dim = channel_dim % x.dim()
        others = tuple(d for d in range(x.dim()) if d != dim)
        channel_max, channel_min = x.amax(dim=others), x.amin(dim=others)  # |x| max without an |x| copy
        flat = x.reshape(-1)
        sample = flat[::max(1, flat.numel() // HIST_SAMPLE)][:HIST_SAMPLE]
        log_abs = torch.log2(sample.abs()).clamp(HIST_LOG2_MIN, HIST_LOG2_MAX - 1e-3)
        hist = torch.histc(log_abs, bins=HIST_BINS, min=HIST_LOG2_MIN, max=HIST_LOG2_MAX)
        squares = torch.sum(x.square(), dim=others).double()  # float32 per call (8x faster), float64 across calls
        return cls(torch.maximum(channel_max, -channel_min), squares,
                   channel_min.min(), channel_max.max(), hist.to(torch.int64),
                   torch.tensor(x.numel() // x.shape[dim], dtype=torch.int64))

    def cpu(self) -> "ActStats":
        return ActStats(*(getattr(self, f.name).cpu() for f in fields(self)))

    def merge(self, other: "ActStats") -> "ActStats":
        return ActStats(torch.maximum(self.channel_absmax, other.channel_absmax),
                        self.channel_sumsq + other.channel_sumsq, torch.minimum(self.tensor_min, other.tensor_min),
                        torch.maximum(self.tensor_max, other.tensor_max), self.abs_log2_hist + other.abs_log2_hist,
                        self.tokens + other.tokens)

    @property
    def absmax(self) -> float:
        return float(self.channel_absmax.max())

    @property
    def channel_rms(self) -> torch.Tensor:
        return (self.channel_sumsq / self.tokens.clamp_min(1)).sqrt()

    def abs_quantile(self, q: float) -> float:
        """Upper edge of the histogram bin holding the q-quantile of |x| (for percentile clipping)."""
        cumulative = self.abs_log2_hist.cumsum(0).double()
        index = int(torch.searchsorted(cumulative, q * cumulative[-1]).clamp_max(HIST_BINS - 1))
        width = (HIST_LOG2_MAX - HIST_LOG2_MIN) / HIST_BINS
        return float(min(2.0 ** (HIST_LOG2_MIN + (index + 1) * width), self.absmax))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "ActStats":
        return cls(**{f.name: tensors[f.name] for f in fields(cls)})

    def equal(self, other: "ActStats") -> bool:
        return all(torch.equal(a, b) for a, b in zip(self.tensors().values(), other.tensors().values()))
