"""Bad inputs: each a clear error, the input unchanged, no partial output."""
import hashlib
import json

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler

import tiny_models
from diffpress.api import compress
from diffpress.checkpoint import check_safetensors, resolve
from diffpress.errors import InputError, OutputExistsError


def _tree_digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def model_dir(tmp_path):
    model, _ = tiny_models.build("pixart")
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def pipeline_dir(tmp_path):
    model, _ = tiny_models.tiny_unet2d()
    DDPMPipeline(unet=model, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        resolve(tmp_path / "nope")


def test_directory_that_is_not_a_diffusers_model(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a diffusers model or pipeline directory"):
        resolve(tmp_path / "junk")


def test_config_with_a_non_diffusers_class(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    config["_class_name"] = "os.system"
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="not a diffusers model class"):
        resolve(model_dir)


def test_pickled_weights_are_refused(model_dir):
    weights = model_dir / "diffusion_pytorch_model.safetensors"
    weights.rename(model_dir / "diffusion_pytorch_model.bin")
    with pytest.raises(InputError, match="only pickled weights.*safetensors"):
        resolve(model_dir)


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_corrupt_safetensors(model_dir, damage):
    weights = model_dir / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 16 + data[16:])
    with pytest.raises(InputError, match="corrupt or truncated|truncated safetensors"):
        check_safetensors(weights)
    with pytest.raises(InputError):
        resolve(model_dir)


def test_pipeline_without_denoiser(pipeline_dir):
    index = json.loads((pipeline_dir / "model_index.json").read_text())
    index.pop("unet")
    (pipeline_dir / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="pipeline has no denoiser"):
        resolve(pipeline_dir)


def test_compress_pipeline_copies_other_components_and_loads(pipeline_dir, tmp_path):
    import diffpress

    before = _tree_digest(pipeline_dir)
    result = compress(pipeline_dir, "w8a16-int8", tmp_path / "out")
    assert _tree_digest(pipeline_dir) == before
    out = _tree_digest(tmp_path / "out")
    assert out["scheduler/scheduler_config.json"] == before["scheduler/scheduler_config.json"]
    assert out["model_index.json"] == before["model_index.json"]
    pipe = diffpress.load(tmp_path / "out")
    assert isinstance(pipe, DDPMPipeline)
    assert result.report.quantized and type(pipe.unet.mid_block.resnets[0].conv1).__name__ == "QuantConv2d"
    images = pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert images.images.shape == (1, 8, 8, 1)


def test_compress_refuses_existing_output_and_overlap(model_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError):
        compress(model_dir, "w8a16-int8", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    with pytest.raises(InputError, match="overlaps the input"):
        compress(model_dir, "w8a16-int8", model_dir, overwrite=True)
    with pytest.raises(InputError, match="overlaps the input"):
        compress(model_dir, "w8a16-int8", model_dir / "sub")


def test_compressing_a_compressed_model_is_refused(model_dir, tmp_path):
    compress(model_dir, "w8a16-int8", tmp_path / "out")
    with pytest.raises(InputError, match="already compressed"):
        compress(tmp_path / "out", "w8a16-int8", tmp_path / "again")


def test_bfloat16_checkpoint_keeps_its_dtype(tmp_path):
    from diffpress.checkpoint import load_denoiser

    model, _ = tiny_models.build("pixart")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    loaded = load_denoiser(resolve(tmp_path / "bf16"))
    assert loaded.transformer_blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
