"""LoRA adapters on diffpress's quantized linear layers (peft, and through it diffusers' `load_lora_weights`).

peft picks the LoRA layer class for a target module with a list of dispatchers and raises for a type
none of them knows. `register_dispatch` (run when peft's LoRA model module loads) puts a dispatcher
for QuantLinear in front of peft's default one. The adapter layer is peft's own LoRA Linear: the
quantized base layer runs as it is and the low-rank branch runs beside it in high precision, so
`load_lora_weights`, `set_adapters`, `disable_lora`, `unload_lora_weights` and `delete_adapters`
work unchanged. Fusing (`fuse_lora`) is refused: it would have to re-quantize the fused weight and
could not be undone exactly. LoRA on a quantized convolution is refused with the layer's name.
"""
from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer

from ..compression.modules import QuantConv2d, QuantLinear
from ..errors import DiffpressError


class QuantLoraLinear(LoraLinear):
    """peft's LoRA Linear around a QuantLinear; adapters only (no DoRA or other variants), never fused."""

    @property
    def lora_variants(self):
        return {(): None}

    def _get_in_out_features(self, module):
        return module.in_features, module.out_features

    def _get_base_layer_device_and_dtype(self, base_layer):
        """The adapters live on the quantized layer's device, in its compute dtype (the bias's; else float32)."""
        dtype = base_layer.bias.dtype if base_layer.bias is not None else torch.float32
        return base_layer.qdata.device, dtype

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise DiffpressError(f"cannot fuse a LoRA into the quantized layer {self.get_base_layer().fqn or '?'} "
                             f"({self.get_base_layer().spec.describe()}): the fused weight would have to be "
                             "re-quantized, and could not be unfused exactly. Keep the adapter unfused (it runs beside "
                             "the quantized layer in high precision), or fuse it into the float model and compress that")


def dispatch_quantized(target, adapter_name: str, config, **kwargs):
    """A QuantLoraLinear for a QuantLinear target; None for anything else (peft's own dispatchers decide)."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, QuantConv2d):
        raise DiffpressError(f"LoRA on the quantized convolution {base.fqn or '?'} is not supported: keep the layers "
                             "the LoRA targets in high precision (a recipe rule with plan: skip), or load it on the "
                             "float model")
    if isinstance(base, QuantLinear):
        return QuantLoraLinear(target, adapter_name, config=config, **kwargs)
    return None


def register_dispatch(lora_model_module) -> None:
    """Wrap peft's `dispatch_default` (the last dispatcher tried) so QuantLinear targets get a QuantLoraLinear."""
    original = lora_model_module.dispatch_default
    if getattr(original, "diffpress_wrapped", False):
        return

    def dispatch_default(target, adapter_name, config, **kwargs):
        return dispatch_quantized(target, adapter_name, config, **kwargs) or original(target, adapter_name, config,
                                                                                      **kwargs)

    dispatch_default.diffpress_wrapped = True
    lora_model_module.dispatch_default = dispatch_default


def _register_if_loaded() -> None:
    """When importing this module is what loaded peft, the import hook found it half-initialized: register now."""
    import sys

    lora_model = sys.modules.get("peft.tuners.lora.model")
    if lora_model is not None:
        register_dispatch(lora_model)


_register_if_loaded()
