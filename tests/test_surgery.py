"""Module surgery (compression/surgery.py): the replacement table, replace-by-name, swap-and-restore."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from diffpress.compression.modules import QuantConv2d, QuantLinear
from diffpress.compression.surgery import (compressed_layers, compressed_module, compressible_layers, kind_of,
                                           replace_module, replacement_by_kind, replacement_for, swapped)
from diffpress.compression.swap import quantize_
from diffpress.errors import IntegrityError
from diffpress.presets import preset


class LinearSubclass(nn.Linear):
    """What diffusers' LoRA-compatible layers are: a subclass of nn.Linear."""


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU(), LinearSubclass(8, 8))
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.reflect = nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect")
        self.norm = nn.LayerNorm(8)


def test_the_table_finds_subclasses_and_skips_what_it_cannot_replace():
    net = Net()
    assert [name for name, _ in compressible_layers(net)] == ["block.0", "block.2", "conv", "reflect"]
    assert replacement_for(net.block[2]).compressed_class is QuantLinear
    assert replacement_for(net.norm) is None
    report = quantize_(net, preset("w8a16-int8"), skip=())
    assert report.quantized == ["block.0", "block.2", "conv"]
    assert "padding_mode 'reflect'" in report.skipped["reflect"]
    assert [kind_of(m) for _, m in compressed_layers(net)] == ["linear", "linear", "conv2d"]
    assert replacement_by_kind("conv2d").compressed_class is QuantConv2d
    with pytest.raises(IntegrityError, match="unknown module kind 'conv3d'"):
        replacement_by_kind("conv3d")


def test_compressed_module_matches_the_float_layer():
    linear = nn.Linear(16, 8)
    quantized = compressed_module(linear, preset("w8a16-int8"))
    x = torch.randn(3, 16)
    assert isinstance(quantized, QuantLinear)
    assert torch.allclose(quantized(x), linear(x), atol=0.05)
    with pytest.raises(TypeError, match="no compressed replacement"):
        compressed_module(nn.LayerNorm(4), preset("w8a16-int8"))


def test_replace_and_swap_restore_even_when_the_block_raises():
    net = Net()
    original, identity = net.block[0], nn.Identity()
    old = replace_module(net, "block.0", identity)
    assert old is original and net.block[0] is identity
    replace_module(net, "block.0", original)
    with pytest.raises(RuntimeError, match="boom"):
        with swapped(net, {"block.0": nn.Identity(), "conv": nn.Identity()}):
            assert isinstance(net.conv, nn.Identity)
            raise RuntimeError("boom")
    assert net.block[0] is original and isinstance(net.conv, nn.Conv2d)
    with swapped(net, {"norm": nn.Identity()}):
        assert isinstance(net.norm, nn.Identity)
    assert isinstance(net.norm, nn.LayerNorm)
