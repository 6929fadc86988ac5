"""LoRA on quantized denoisers (integrations/peft_lora.py): diffusers' load_lora_weights, set_adapters,
disable, unload and fuse on a compressed pipeline, against the same LoRA on the float pipeline."""
from __future__ import annotations

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

import diffpress
import tiny_pipelines
from diffpress.compression.modules import QuantLinear
from diffpress.errors import DiffpressError
from diffpress.metrics import sqnr_db

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_FILE = "pytorch_lora_weights.safetensors"  # named: diffusers 0.39 offline mode needs the file name


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """A float tiny SD pipeline, its w8a8-int8 compression, and a diffusers-format LoRA made with peft."""
    root = tmp_path_factory.mktemp("lora")
    pipe = tiny_pipelines.tiny_sd_pipeline(root / "tokenizer")
    pipe.save_pretrained(root / "float")
    diffpress.compress(root / "float", "w8a8-int8", root / "int8")
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights="gaussian"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in pipe.unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (no effect); make the adapter do something
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    StableDiffusionPipeline.save_lora_weights(root / "adapter", unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return root


def sample(pipe) -> torch.Tensor:
    return pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent",
                height=16, width=16).images


def test_lora_on_quantized_layers_tracks_the_float_lora(pipelines):
    float_pipe = DiffusionPipeline.from_pretrained(pipelines / "float")
    float_pipe.load_lora_weights(pipelines / "adapter", weight_name=LORA_FILE, adapter_name="style")
    quantized = DiffusionPipeline.from_pretrained(pipelines / "int8")
    base = sample(quantized)
    quantized.load_lora_weights(pipelines / "adapter", weight_name=LORA_FILE, adapter_name="style")
    wrapped = quantized.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert type(wrapped).__name__ == "QuantLoraLinear" and isinstance(wrapped.get_base_layer(), QuantLinear)
    assert wrapped.lora_A["style"].weight.dtype == torch.float32  # the adapter runs in high precision
    with_lora, float_lora = sample(quantized), sample(float_pipe)
    assert sqnr_db(float_lora, base) < 10  # the adapter changes the output a lot
    assert sqnr_db(float_lora, with_lora) > 20  # and the quantized model with it follows the float one


def test_set_adapters_disable_unload_and_fuse(pipelines):
    quantized = DiffusionPipeline.from_pretrained(pipelines / "int8")
    base = sample(quantized)
    quantized.load_lora_weights(pipelines / "adapter", weight_name=LORA_FILE, adapter_name="style")
    with_lora = sample(quantized)
    quantized.set_adapters(["style"], adapter_weights=[0.0])
    assert torch.equal(sample(quantized), base)
    quantized.set_adapters(["style"], adapter_weights=[1.0])
    assert torch.equal(sample(quantized), with_lora)
    quantized.disable_lora()
    assert torch.equal(sample(quantized), base)
    quantized.enable_lora()
    with pytest.raises(DiffpressError, match="cannot fuse a LoRA into the quantized layer"):
        quantized.fuse_lora()
    assert torch.equal(sample(quantized), with_lora)  # nothing was fused
    quantized.unload_lora_weights()
    assert isinstance(quantized.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q, QuantLinear)
    assert torch.equal(sample(quantized), base)


def test_lora_on_a_quantized_convolution_is_refused_with_its_name(pipelines):
    from peft import inject_adapter_in_model

    quantized = DiffusionPipeline.from_pretrained(pipelines / "int8")
    config = LoraConfig(r=2, target_modules=["conv1"])
    with pytest.raises(DiffpressError, match=r"LoRA on the quantized convolution down_blocks\.0\.resnets\.0\.conv1"):
        inject_adapter_in_model(config, quantized.unet)
