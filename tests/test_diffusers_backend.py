"""Plain diffusers calls on diffpress output (integrations/diffusers_backend.py): from_pretrained of
models and pipelines bit-exact against diffpress.load, quantize on load, save_pretrained round trips,
tampering refused, dtype and device moves. The loading path uses no diffpress function: only
`import diffpress` (which registers the backend) and diffusers."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import (DiffusionPipeline, FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel,
                       UNet2DConditionModel, UNet2DModel)

import diffpress
import tiny_models
import tiny_pipelines
from diffpress.compression.modules import QuantConv2d, QuantLinear
from diffpress.errors import DiffpressError, InputError, IntegrityError

CLASSES = {"unet2d_condition": UNet2DConditionModel, "pixart": PixArtTransformer2DModel,
           "flux": FluxTransformer2DModel, "sd3": SD3Transformer2DModel}


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """name -> (float dir, compressed dir, example inputs) for every tiny architecture, w8a8-int8."""
    root = tmp_path_factory.mktemp("compressed")
    result = {}
    for name in CLASSES:
        model, inputs = tiny_models.build(name)
        model.save_pretrained(root / f"{name}-float")
        diffpress.compress(root / f"{name}-float", "w8a8-int8", root / name)
        result[name] = (root / f"{name}-float", root / name, inputs)
    return result


def outputs(model, inputs):
    return tiny_models.run(model, inputs)


@pytest.mark.parametrize("name", list(CLASSES))
def test_from_pretrained_is_bit_exact_with_diffpress_load(compressed, name):
    _, directory, inputs = compressed[name]
    model = CLASSES[name].from_pretrained(directory)
    assert any(isinstance(m, (QuantLinear, QuantConv2d)) for m in model.modules())
    assert torch.equal(outputs(model, inputs), outputs(diffpress.load(directory), inputs))


def test_torch_dtype_and_device_map_are_honoured(compressed):
    _, directory, inputs = compressed["pixart"]
    model = PixArtTransformer2DModel.from_pretrained(directory, torch_dtype=torch.bfloat16, device_map="cpu")
    layer = model.transformer_blocks[0].attn1.to_q
    assert isinstance(layer, QuantLinear) and layer.qdata.dtype == torch.int8 and layer.scales.dtype == torch.float32
    assert layer.bias.dtype == torch.bfloat16 and model.pos_embed.proj.weight.dtype == torch.bfloat16
    reference = diffpress.load(directory, torch_dtype=torch.bfloat16)
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    assert torch.equal(outputs(model, bf16), outputs(reference, bf16))
    cast = diffpress.load(directory).to(torch.bfloat16)  # a dtype cast keeps the quantization buffers too
    assert cast.transformer_blocks[0].attn1.to_q.scales.dtype == torch.float32
    assert cast.transformer_blocks[0].attn1.to_q.bias.dtype == torch.bfloat16


def test_pipeline_from_pretrained_and_the_builtin_pipeline_class(tmp_path):
    pipe = tiny_pipelines.tiny_sd_pipeline(tmp_path / "tok")
    pipe.save_pretrained(tmp_path / "sd")
    diffpress.compress(tmp_path / "sd", "w8a8-int8", tmp_path / "sd-int8")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "sd-int8")
    assert isinstance(loaded.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k, QuantLinear)
    run = lambda p: p("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                      output_type="latent", height=16, width=16).images
    assert torch.equal(run(loaded), run(diffpress.load(tmp_path / "sd-int8")))

    from diffpress.zoo.digits import DigitsPipeline

    diffpress.compress("builtin:digits", "w4a16-int4", tmp_path / "digits")
    digits = DigitsPipeline.from_pretrained(tmp_path / "digits")
    noise = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(digits([1, 2, 3], 3, noise=noise), diffpress.load(tmp_path / "digits")([1, 2, 3], 3, noise=noise))


def _rewrite_manifest(directory):
    from diffpress.io import write_manifest

    (directory / "diffpress_manifest.json").unlink()
    write_manifest(directory)


def test_tampered_missing_extra_and_pickled_checkpoints_are_refused(compressed, tmp_path):
    _, directory, _ = compressed["unet2d_condition"]
    cases = {}
    for case in ("config", "weights", "extra", "missing", "pickled", "no-manifest"):
        cases[case] = tmp_path / case
        shutil.copytree(directory, cases[case])
    config = json.loads((cases["config"] / "config.json").read_text())
    config["quantization_config"]["layers"]["conv_in"] = {"module": "conv2d", "weight_format": "int8",
                                                          "granularity": "per_channel"}
    (cases["config"] / "config.json").write_text(json.dumps(config))
    weights = cases["weights"] / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 1
    weights.write_bytes(bytes(data))
    from safetensors.torch import load_file, save_file

    for case, edit in (("extra", lambda s: {**s, "stray.tensor": torch.zeros(3)}),
                       ("missing", lambda s: {k: v for k, v in s.items() if not k.endswith("to_q.scales")})):
        path = cases[case] / "diffusion_pytorch_model.safetensors"
        save_file(edit(load_file(path)), path)
        _rewrite_manifest(cases[case])
    pickled = cases["pickled"] / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(pickled), cases["pickled"] / "diffusion_pytorch_model.bin")
    pickled.unlink()
    (cases["no-manifest"] / "diffpress_manifest.json").unlink()
    expected = {"config": "sha256 does not match", "weights": "sha256 does not match", "extra": "unexpected",
                "missing": "missing", "pickled": "safetensors", "no-manifest": "diffpress_manifest.json"}
    for case, message in expected.items():
        with pytest.raises(DiffpressError, match=message):
            UNet2DConditionModel.from_pretrained(cases[case])


def test_quantize_on_load_matches_compress_and_refuses_calibrating_presets(compressed):
    from diffpress import DiffpressConfig

    float_dir, directory, inputs = compressed["unet2d_condition"]
    model = UNet2DConditionModel.from_pretrained(float_dir, quantization_config=DiffpressConfig(preset="w8a8-int8"))
    assert torch.equal(outputs(model, inputs), outputs(diffpress.load(directory), inputs))
    assert not any(p.is_meta for p in model.parameters())
    with pytest.raises(InputError, match="needs calibration data.*diffpress compress"):
        DiffpressConfig(preset="w4a8-int")
    skipped = UNet2DConditionModel.from_pretrained(float_dir, quantization_config=DiffpressConfig(
        preset="w8a16-int8", modules_to_not_convert=[r"attn2\."]))
    assert isinstance(skipped.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k, torch.nn.Linear)
    assert isinstance(skipped.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_k, QuantLinear)


def test_pipeline_quantization_config_quantizes_the_denoiser(tmp_path):
    from diffusers import PipelineQuantizationConfig

    from diffpress import DiffpressConfig

    pipe = tiny_pipelines.tiny_sd_pipeline(tmp_path / "tok")
    pipe.save_pretrained(tmp_path / "sd")
    config = PipelineQuantizationConfig(quant_mapping={"unet": DiffpressConfig(preset="w8a16-fp8")})
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "sd", quantization_config=config)
    to_q = loaded.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert isinstance(to_q, QuantLinear) and to_q.qdata.dtype == torch.float8_e4m3fn
    assert not any(isinstance(m, QuantLinear) for m in loaded.text_encoder.modules())


def test_save_pretrained_round_trips_loaded_and_in_memory_models(compressed, tmp_path):
    float_dir, directory, inputs = compressed["flux"]
    loaded = FluxTransformer2DModel.from_pretrained(directory)
    loaded.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())["quantization_config"]
    original = json.loads((directory / "config.json").read_text())["quantization_config"]
    assert saved["layers"] == original["layers"] and saved["quant_method"] == "diffpress"
    assert (tmp_path / "again" / "diffpress_manifest.json").is_file()
    expected = outputs(diffpress.load(directory), inputs)
    assert torch.equal(outputs(FluxTransformer2DModel.from_pretrained(tmp_path / "again"), inputs), expected)
    assert torch.equal(outputs(diffpress.load(tmp_path / "again"), inputs), expected)

    model = FluxTransformer2DModel.from_pretrained(float_dir)
    diffpress.quantize_(model, diffpress.PRESETS["w8a8-int8"].spec)
    model.save_pretrained(tmp_path / "in-memory")
    assert torch.equal(outputs(FluxTransformer2DModel.from_pretrained(tmp_path / "in-memory"), inputs),
                       outputs(model, inputs))
    with pytest.raises(InputError, match="safetensors only"):
        model.save_pretrained(tmp_path / "pickle", safe_serialization=False)
    assert not (tmp_path / "pickle").exists()


def test_pipeline_dtype_cast_changes_the_compute_dtype(tmp_path):
    pipe = tiny_pipelines.tiny_sd_pipeline(tmp_path / "tok")
    pipe.save_pretrained(tmp_path / "sd")
    diffpress.compress(tmp_path / "sd", "w8a8-int8", tmp_path / "sd-int8")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "sd-int8")
    loaded.to(torch.bfloat16)  # the text encoder, then the quantized unet: nothing raises half-way
    layer = loaded.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_out[0]
    assert loaded.text_encoder.dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
    assert layer.qdata.dtype == torch.int8 and layer.scales.dtype == torch.float32
    images = loaded("a cat", num_inference_steps=2, output_type="latent", height=16, width=16).images
    assert images.dtype == torch.bfloat16 and torch.isfinite(images).all()


def test_moving_a_model_resolves_its_backend_again(compressed, monkeypatch):
    from diffpress.kernels import dispatch

    _, directory, inputs = compressed["pixart"]
    model = diffpress.load(directory, backend="triton")  # the tests run Triton in its CPU interpreter
    layer = model.transformer_blocks[0].attn1.to_q
    assert layer.backend == "triton"
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    model.to("cpu")  # triton cannot run here any more: the move succeeds, the call says why
    assert layer.backend is None
    with pytest.raises(DiffpressError, match="triton backend needs a CUDA GPU"):
        outputs(model, inputs)
    monkeypatch.undo()
    model.to("cpu")
    assert layer.backend == "triton"


@pytest.mark.gpu
def test_a_model_loaded_on_the_cpu_runs_triton_after_moving_to_the_gpu(compressed):
    _, directory, inputs = compressed["pixart"]
    model = PixArtTransformer2DModel.from_pretrained(directory)
    assert model.transformer_blocks[0].attn1.to_q.backend == "reference"
    model.to("cuda")
    assert model.transformer_blocks[0].attn1.to_q.backend == "triton"
    cuda_inputs = {k: v.cuda() for k, v in inputs.items()}
    assert torch.isfinite(outputs(model, cuda_inputs)).all()


@pytest.mark.parametrize("order", ["diffpress first", "diffusers first"])
def test_import_diffpress_registers_the_backend_in_either_order(order):
    import subprocess
    import sys

    imports = ["import diffpress", "from diffusers import UNet2DModel"]
    code = "; ".join(imports if order == "diffpress first" else imports[::-1]) + (
        "; from diffusers.quantizers import auto; from diffusers.models.modeling_utils import ModelMixin"
        "; print('diffpress' in auto.AUTO_QUANTIZER_MAPPING, 'diffpress' in auto.AUTO_QUANTIZATION_CONFIG_MAPPING,"
        " getattr(ModelMixin.save_pretrained, 'diffpress_wrapped', False))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]


def test_a_bfloat16_model_loads_as_saved_through_diffusers(tmp_path):
    """No torch_dtype: the saved dtype, non-persistent buffers included, exactly as diffpress.load gives it."""
    model, inputs = tiny_models.build("pixart")
    model = model.to(torch.bfloat16)
    diffpress.quantize_(model, diffpress.PRESETS["w4a16-int4"].spec)
    diffpress.save(model, tmp_path / "bf16")
    loaded = PixArtTransformer2DModel.from_pretrained(tmp_path / "bf16")
    assert loaded.pos_embed.pos_embed.dtype == torch.bfloat16 and loaded.dtype == torch.bfloat16
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    assert torch.equal(outputs(loaded, inputs), outputs(model, inputs))
    assert torch.equal(outputs(loaded, inputs), outputs(diffpress.load(tmp_path / "bf16"), inputs))
