import pytest
import torch

from diffpress.compression.quantize import quantize_weight
from diffpress.formats import Granularity, QuantFormat, encode
from diffpress.kernels.layout import pack, pack_nibbles, unpack, unpack_nibbles

SHAPES = [(1, 1), (7, 33), (16, 128), (5, 129), (3, 257)]  # odd N, K not a multiple of any group


@pytest.mark.parametrize("fmt", list(QuantFormat))
@pytest.mark.parametrize("shape", SHAPES)
def test_pack_unpack_is_exact(fmt, shape):
    codes = encode(torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 10, fmt)
    restored = unpack(pack(codes, fmt), fmt, shape[1])
    assert restored.dtype == codes.dtype
    assert torch.equal(restored.view(torch.uint8), codes.view(torch.uint8))


def test_nibble_layout_is_low_nibble_first():
    codes = torch.tensor([[1, -2, 7]], dtype=torch.int8)
    packed = pack_nibbles(codes)
    assert packed.tolist() == [[0xE1, 0x07]]  # -2 -> 0xE in the high nibble of byte 0; odd K padded with 0
    assert unpack_nibbles(packed, 3, signed=True).tolist() == [[1, -2, 7]]


def test_all_int4_codes_roundtrip():
    codes = torch.arange(-8, 8, dtype=torch.int8).reshape(2, 8)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes), 8, signed=True), codes)


@pytest.mark.parametrize("fmt,granularity,group", [
    (QuantFormat.INT4, Granularity.PER_GROUP, 128), (QuantFormat.FP4_E2M1, Granularity.PER_GROUP, 16),
    (QuantFormat.INT8, Granularity.PER_CHANNEL, None), (QuantFormat.FP8_E4M3, Granularity.PER_TENSOR, None)])
def test_packed_weight_shapes(fmt, granularity, group):
    packed = quantize_weight(torch.randn(5, 129), fmt, granularity, group)
    bits = 4 if fmt in (QuantFormat.INT4, QuantFormat.FP4_E2M1) else 8
    assert packed.qdata.shape == (5, 65 if bits == 4 else 129)
    expected_scales = {Granularity.PER_GROUP: (5, -(-129 // (group or 1))), Granularity.PER_CHANNEL: (5,),
                       Granularity.PER_TENSOR: (1,)}[granularity]
    assert tuple(packed.scales.shape) == expected_scales
