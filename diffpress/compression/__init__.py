"""Compression passes: reference quantization, quantized modules, module swapping."""
