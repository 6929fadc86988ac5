"""diffpress inside other libraries, registered when they are imported (see `diffpress._hooks`):

- `diffusers_backend`: the diffusers quantizer backend for `quant_method: "diffpress"` (plain
  `from_pretrained` of diffpress output, quantize on load, `save_pretrained`);
- `peft_lora`: LoRA adapters on diffpress's quantized layers (`load_lora_weights`, `set_adapters`).

Nothing here is imported by `import diffpress`; the callbacks below import the integration
modules only once the library they extend has been imported.
"""
from __future__ import annotations

import sys


def on_diffusers_quantizers(auto_module) -> None:
    """`diffusers.quantizers.auto` has loaded: add the diffpress backend to its two tables."""
    integration = sys.modules.get(__name__ + ".diffusers_backend")
    if integration is not None and not hasattr(integration, "register_backend"):
        return  # it is being imported right now, and registers itself at the end of its import
    from . import diffusers_backend

    diffusers_backend.register_backend(auto_module)


def on_modeling_utils(modeling_utils) -> None:
    """`diffusers.models.modeling_utils` has loaded: `save_pretrained` learns to write diffpress models."""
    from . import diffusers_backend

    diffusers_backend.patch_save_pretrained(modeling_utils.ModelMixin)


def on_peft_lora_model(lora_model) -> None:
    """`peft.tuners.lora.model` has loaded: LoRA adapters can wrap diffpress's quantized layers."""
    from . import peft_lora

    if hasattr(peft_lora, "register_dispatch"):
        peft_lora.register_dispatch(lora_model)
    # else peft_lora is importing peft itself: it registers at the end of its own import
