import pytest
import torch

from diffpress.formats import (FORMAT_SPECS, Granularity, QuantFormat, check_granularity, decode, encode,
                               grid_values, spec_of)


@pytest.mark.parametrize("fmt", list(QuantFormat))
def test_encode_lands_on_the_nearest_grid_value(fmt):
    grid = grid_values(fmt)
    x = torch.linspace(-1.2, 1.2, 4001) * grid.max()
    decoded = decode(encode(x, fmt), fmt)
    nearest = grid[(x.clamp(grid.min(), grid.max())[:, None] - grid[None]).abs().argmin(1)]
    # ties may go either way; everything else must be the nearest grid value
    distance_gap = (x.clamp(grid.min(), grid.max()) - decoded).abs() - (x.clamp(grid.min(), grid.max()) - nearest).abs()
    assert distance_gap.abs().max() < 1e-6
    assert set(decoded.unique().tolist()) <= set(grid.tolist())


@pytest.mark.parametrize("fmt", list(QuantFormat))
def test_every_grid_value_roundtrips_exactly(fmt):
    grid = grid_values(fmt)
    assert torch.equal(decode(encode(grid, fmt), fmt), grid)


def test_grid_sizes_and_extremes():
    assert grid_values(QuantFormat.INT8).numel() == 255  # symmetric: -127..127
    assert grid_values(QuantFormat.INT4).numel() == 15  # -7..7
    assert grid_values(QuantFormat.FP4_E2M1).tolist()[8:] == [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert grid_values(QuantFormat.FP8_E4M3).max().item() == 448.0
    assert spec_of("fp4_e2m1").codes_per_byte == 2 and spec_of("int8").codes_per_byte == 1


def test_fp4_codes_are_4_bit_sign_magnitude():
    codes = encode(torch.tensor([-6.0, -0.5, 0.0, 0.5, 6.0]), QuantFormat.FP4_E2M1)
    assert codes.tolist() == [0xF, 0x9, 0x0, 0x1, 0x7]


def test_fp8_saturates_instead_of_nan():
    codes = encode(torch.tensor([1e6, -1e6]), QuantFormat.FP8_E4M3)
    assert decode(codes, QuantFormat.FP8_E4M3).tolist() == [448.0, -448.0]


def test_unknown_format_and_bad_granularity_are_named():
    with pytest.raises(ValueError, match="int3.*allowed: int8"):
        spec_of("int3")
    with pytest.raises(ValueError, match="fp4_e2m1 does not support granularity per_channel"):
        check_granularity(QuantFormat.FP4_E2M1, Granularity.PER_CHANNEL, None)
    with pytest.raises(ValueError, match="group size 48"):
        check_granularity(QuantFormat.INT4, Granularity.PER_GROUP, 48)
    assert set(FORMAT_SPECS) == set(QuantFormat)
