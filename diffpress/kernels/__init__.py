"""Kernel layer: the packing contract (`layout`), the torch reference of every op (`reference`).

Nothing here imports triton at import time; Triton kernel modules are imported lazily by dispatch.
"""
