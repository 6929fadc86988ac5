import math

import torch

from diffpress.metrics import feature_statistics, frechet_distance, psnr_db, sqnr_db, ssim


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
