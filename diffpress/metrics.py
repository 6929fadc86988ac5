"""Error metrics shared by quantizers, sensitivity, eval, tests and benchmarks."""
from __future__ import annotations

import math

import torch


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(|ref|^2 / |ref - approx|^2); inf if equal."""
    reference, approximation = reference.double(), approximation.double()
    noise = (reference - approximation).square().sum().item()
    signal = reference.square().sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def relative_error(reference: torch.Tensor, approximation: torch.Tensor) -> torch.Tensor:
    """|approx - ref|^2 / |ref|^2 as a differentiable tensor (float32 at least): 10^(-SQNR/10)."""
    reference = reference.float().to(approximation.device)
    return (approximation.float() - reference).square().sum() / reference.square().sum().clamp_min(1e-30)


def psnr_db(reference: torch.Tensor, approximation: torch.Tensor, data_range: float = 1.0) -> float:
    """PSNR (dB) of images in [0, data_range], over the whole batch (torchmetrics)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    value = peak_signal_noise_ratio(approximation.float(), reference.float(), data_range=data_range)
    return float(value)


def per_sample_mse(reference: torch.Tensor, approximation: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample of a batch (float64, (B,))."""
    return (approximation.double() - reference.double()).square().flatten(1).mean(1)


def psnr_from_mse(mse: float | torch.Tensor, data_range: float = 1.0) -> float | torch.Tensor:
    """10 log10(range^2 / mse): the batch PSNR when `mse` is the mean of equal-sized samples' MSEs."""
    if isinstance(mse, torch.Tensor):
        return 10 * torch.log10(data_range ** 2 / mse)
    return 10 * math.log10(data_range ** 2 / mse) if mse > 0 else math.inf


BOOTSTRAP_RESAMPLES = 2000


def bootstrap_means(values: torch.Tensor, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> torch.Tensor:
    """The means of `resamples` resamples (with replacement, same size) of per-sample `values`, float64."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, len(values), (resamples, len(values)), generator=generator)
    return values.double()[index].mean(1)


def interval(samples: torch.Tensor, level: float = 0.95) -> list[float]:
    """The central `level` percentile interval of bootstrap statistics."""
    tail = (1 - level) / 2
    return [float(torch.quantile(samples, tail)), float(torch.quantile(samples, 1 - tail))]


def typical_psnr_db(sample_mse: torch.Tensor, data_range: float = 1.0, ceiling: float = 200.0) -> float:
    """The mean over samples of each sample's PSNR (each capped at `ceiling` dB for identical samples): the
    typical sample's fidelity. The batch PSNR is that of the mean MSE, so a few samples that went to another
    mode set it; this one moves with the samples that did not."""
    per_sample = psnr_from_mse(sample_mse.double().clamp_min(data_range ** 2 * 10 ** (-ceiling / 10)), data_range)
    return float(per_sample.mean())


def psnr_interval(sample_mse: torch.Tensor, level: float = 0.95, data_range: float = 1.0) -> list[float]:
    """Bootstrap `level` interval over samples of the batch PSNR whose per-sample MSEs are `sample_mse`."""
    finite = psnr_from_mse(bootstrap_means(sample_mse).clamp_min(1e-30), data_range)
    return interval(finite, level)


def paired_psnr_difference(mse_a: torch.Tensor, mse_b: torch.Tensor, level: float = 0.95) -> dict:
    """PSNR(a) - PSNR(b) over the same samples (same seeds), with its paired bootstrap `level` interval: the
    samples are resampled together, so what both rows share does not widen the interval."""
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(0, len(mse_a), (BOOTSTRAP_RESAMPLES, len(mse_a)), generator=generator)
    a, b = mse_a.double()[index].mean(1), mse_b.double()[index].mean(1)
    difference = psnr_from_mse(a.clamp_min(1e-30)) - psnr_from_mse(b.clamp_min(1e-30))
    point = psnr_from_mse(float(mse_a.double().mean())) - psnr_from_mse(float(mse_b.double().mean()))
    return {"difference_db": point, "ci95_db": interval(difference, level)}


def ssim(reference: torch.Tensor, approximation: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM (11x11 Gaussian window, sigma 1.5) of (B, C, H, W) images (torchmetrics)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(approximation.float(), reference.float(), data_range=data_range))


def frechet_distance(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians: |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)).

    tr((C_a C_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of
    C_a^(1/2) C_b C_a^(1/2), which is symmetric PSD, so no complex matrix square root is needed.
    """
    mean_a, cov_a, mean_b, cov_b = (t.double() for t in (mean_a, cov_a, mean_b, cov_b))
    root_a = _psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (rows are samples) in float64."""
    features = features.double()
    return features.mean(0), torch.cov(features.T)


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; for a wrapper tensor subclass (e.g. a peer's quantized weight), the sum over its
    inner tensors."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(stored_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def state_bytes(module: torch.nn.Module) -> int:
    """Bytes of every parameter and persistent buffer of `module` (what its safetensors file holds)."""
    return sum(stored_bytes(t) for t in module.state_dict().values())
