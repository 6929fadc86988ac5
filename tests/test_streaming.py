"""Streaming compression: calibration-free plans tensor by tensor from (sharded) safetensors."""
import json

import pytest
import torch

import diffpress
import tiny_models
from diffpress.api import compress
from diffpress.compression.swap import quantize_
from diffpress.errors import InputError, IntegrityError
from diffpress.presets import preset
from diffpress.streaming import INDEX_NAME, ShardWriter


@pytest.fixture
def sharded_flux(tmp_path):
    """A tiny FLUX transformer saved by diffusers in bf16 shards of 20 KB (several files and an index)."""
    model, inputs = tiny_models.build("flux")
    model = model.to(torch.bfloat16)
    directory = tmp_path / "flux"
    model.save_pretrained(directory, max_shard_size="20KB")
    assert (directory / INDEX_NAME).is_file() and len(list(directory.glob("*.safetensors"))) > 2
    return directory, model, inputs


@pytest.mark.parametrize("name", ["w8a16-int8", "w8a8-fp8", "w4a16-uint4"])
def test_streamed_output_is_the_in_memory_result_bit_for_bit(sharded_flux, tmp_path, name):
    directory, model, inputs = sharded_flux
    streamed = compress(directory, name, tmp_path / "streamed", stream=True, shard_bytes=30_000)
    assert (tmp_path / "streamed" / INDEX_NAME).is_file()  # sharded output, a diffusers index
    in_memory = compress(directory, name, tmp_path / "in-memory")
    assert streamed.report.quantized == in_memory.report.quantized
    assert streamed.report.skipped == in_memory.report.skipped
    a, b = diffpress.load(tmp_path / "streamed"), diffpress.load(tmp_path / "in-memory")
    assert set(a.state_dict()) == set(b.state_dict())
    for key, tensor in b.state_dict().items():
        assert torch.equal(a.state_dict()[key], tensor), key
    bf16_inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    assert torch.equal(tiny_models.run(a, bf16_inputs), tiny_models.run(b, bf16_inputs))
    config = json.loads((tmp_path / "streamed" / "config.json").read_text())["quantization_config"]
    assert config["torch_dtype"] == "bfloat16" and set(config["layers"]) == set(streamed.report.quantized)


def test_streaming_refuses_plans_that_need_calibration_and_writes_nothing(sharded_flux, tmp_path):
    directory, _, _ = sharded_flux
    with pytest.raises(InputError, match="streaming applies calibration-free plans only"):
        compress(directory, "w4a8-int", tmp_path / "out", stream=True)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["flux"]  # no staging left behind


def test_a_missing_shard_is_one_clear_error(sharded_flux, tmp_path):
    directory, _, _ = sharded_flux
    next(p for p in sorted(directory.glob("*.safetensors"))).unlink()
    with pytest.raises((InputError, IntegrityError), match="missing"):
        compress(directory, "w8a16-int8", tmp_path / "out", stream=True)
    assert not (tmp_path / "out").exists()


def test_shard_writer_splits_by_size_and_keeps_one_file_when_small(tmp_path):
    writer = ShardWriter(tmp_path, shard_bytes=1000)
    for index in range(5):
        writer.add(f"t{index}", torch.zeros(100, dtype=torch.float32))  # 400 bytes each: two per shard
    files = writer.finish()
    assert [f.name for f in files] == [f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["weight_map"]["t4"] == files[2].name and index["metadata"]["total_size"] == 2000
    small = tmp_path / "small"
    small.mkdir()
    writer = ShardWriter(small, shard_bytes=1000)
    writer.add("x", torch.ones(3))
    assert [f.name for f in writer.finish()] == ["diffusion_pytorch_model.safetensors"]
    assert not (small / INDEX_NAME).exists()


def test_streamed_quantization_matches_quantize_on_a_loaded_model(sharded_flux, tmp_path):
    """The streamed layers are what quantize_ gives on the model loaded in memory (not only what compress gives)."""
    directory, model, _ = sharded_flux
    compress(directory, "w8a16-int8", tmp_path / "streamed", stream=True)
    quantize_(model, preset("w8a16-int8"))
    loaded = diffpress.load(tmp_path / "streamed")
    layer = "transformer_blocks.0.attn.to_q"
    assert torch.equal(loaded.get_submodule(layer).qdata, model.get_submodule(layer).qdata)
    assert torch.equal(loaded.get_submodule(layer).scales, model.get_submodule(layer).scales)


def test_cli_streams_a_pipeline_and_copies_its_other_components(tmp_path, capsys):
    from diffpress.cli.main import main

    out = tmp_path / "digits-int8"
    assert main(["compress", "builtin:digits", "--preset", "w8a16-int8", "--stream", "--shard-size", "1",
                 "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert "quantized" in capsys.readouterr().out
    compress("builtin:digits", "w8a16-int8", tmp_path / "in-memory")
    streamed, in_memory = diffpress.load(out), diffpress.load(tmp_path / "in-memory")
    for key, tensor in in_memory.unet.state_dict().items():
        assert torch.equal(streamed.unet.state_dict()[key], tensor), key
    assert (out / "recipe.yaml").is_file() and (out / "model_index.json").is_file()
    from diffpress.checkpoint import pipeline_class  # plain diffusers reads the sharded output too

    plain = pipeline_class(out).from_pretrained(out)
    labels, noise = torch.tensor([1, 7]), torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain.draw(labels, 3, 1.0, noise), in_memory.draw(labels, 3, 1.0, noise))
    assert main(["compress", "builtin:digits", "--preset", "mixed", "--avg-bits", "5", "--stream",
                 "--out", str(tmp_path / "x")]) == 2
    assert "pruning and mixed precision need the model in memory" in capsys.readouterr().err


def test_safetensors_written_tensor_by_tensor_read_back_exactly(tmp_path):
    from safetensors.torch import load_file

    from diffpress.streaming import write_safetensors

    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.randint(-8, 8, (7,), dtype=torch.int8),
               "c": torch.randn(2, 2).to(torch.float8_e4m3fn), "d": torch.tensor([True, False]),
               "e": torch.randn(4, 3).T, "empty": torch.zeros(0, 4)}  # "e": not contiguous
    write_safetensors(tmp_path / "x.safetensors", tensors, {"format": "pt"})
    loaded = load_file(tmp_path / "x.safetensors")
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name].view(torch.uint8) if tensor.dtype ==
                                                                   torch.float8_e4m3fn else loaded[name],
                                                                   tensor.view(torch.uint8) if tensor.dtype ==
                                                                   torch.float8_e4m3fn else tensor), name
