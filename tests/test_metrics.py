import math

import pytest
import torch

from diffpress.metrics import (feature_statistics, frechet_distance, paired_psnr_difference, per_sample_mse, psnr_db,
                               psnr_from_mse, psnr_interval, sqnr_db, ssim)


def test_sqnr_known_value_and_identity():
    x = torch.ones(100)
    assert math.isinf(sqnr_db(x, x))
    assert abs(sqnr_db(x, x * 1.1) - 20.0) < 1e-5  # noise 0.01 of signal power -> 20 dB (1.1 rounded to float32)


def test_psnr_and_ssim():
    a = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert abs(psnr_db(a, (a + 0.1).clamp(0, 1)) - psnr_db(a, (a + 0.1).clamp(0, 1))) == 0
    assert abs(psnr_db(a, a + 0.01) - 40.0) < 1e-3
    assert ssim(a, a) > 0.9999 and ssim(a, torch.rand_like(a)) < 0.5


def test_frechet_distance_closed_form_for_diagonal_covariances():
    mean_a, mean_b = torch.zeros(3), torch.tensor([1.0, 0.0, 2.0])
    var_a, var_b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 4.0, 1.0])
    expected = 5.0 + sum((va.sqrt() - vb.sqrt()) ** 2 for va, vb in zip(var_a, var_b)).item()
    assert abs(frechet_distance(mean_a, torch.diag(var_a), mean_b, torch.diag(var_b)) - expected) < 1e-9


def test_frechet_distance_of_a_sample_with_itself_is_zero():
    features = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    mean, cov = feature_statistics(features)
    assert abs(frechet_distance(mean, cov, mean, cov)) < 1e-9
    shifted_mean, shifted_cov = feature_statistics(features + 1)
    assert abs(frechet_distance(mean, cov, shifted_mean, shifted_cov) - 8.0) < 1e-6


def test_psnr_interval_brackets_the_batch_psnr_and_narrows_with_more_samples():
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(400, 1, 8, 8, generator=generator)
    noisy = (reference + 0.05 * torch.randn(reference.shape, generator=generator) * torch.rand(400, 1, 1, 1,
                                                                                               generator=generator))
    mse = per_sample_mse(reference, noisy)
    assert abs(psnr_from_mse(float(mse.mean())) - psnr_db(reference, noisy)) < 1e-3
    low, high = psnr_interval(mse)
    assert low < psnr_db(reference, noisy) < high
    small_low, small_high = psnr_interval(mse[:25])
    assert small_high - small_low > 2 * (high - low)  # ~sqrt(16) = 4x wider on 16x fewer samples


def test_paired_difference_sees_a_consistent_gain_that_unpaired_intervals_hide():
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(200, generator=generator).square() * 1e-3  # per-sample MSE varies a lot between samples
    better = base * 0.9  # 10% less error on every sample: +0.46 dB
    paired = paired_psnr_difference(better, base)
    assert abs(paired["difference_db"] - 10 * math.log10(1 / 0.9)) < 1e-6
    assert paired["ci95_db"][0] > 0.4  # paired: certain
    low_better, _ = psnr_interval(better)
    _, high_base = psnr_interval(base)
    assert low_better < high_base  # unpaired intervals overlap


def test_typical_psnr_is_the_mean_per_sample_psnr_and_shrugs_off_one_flipped_sample():
    from diffpress.metrics import psnr_from_mse, typical_psnr_db

    mse = torch.full((100,), 1e-4, dtype=torch.float64)
    assert typical_psnr_db(mse) == pytest.approx(40.0) and float(psnr_from_mse(mse.mean())) == pytest.approx(40.0)
    flipped = mse.clone()
    flipped[0] = 0.1  # one sample went to another mode
    assert float(psnr_from_mse(flipped.mean())) < 30.5  # the batch PSNR falls by ~10 dB
    assert typical_psnr_db(flipped) == pytest.approx(40.0 - 0.3)  # the typical sample's by 30 dB / 100
    assert typical_psnr_db(torch.zeros(4, dtype=torch.float64)) == pytest.approx(200.0)  # identical: capped
