"""quantize -> save -> load -> forward on every tiny architecture, plus the integrity checks."""
import json

import pytest
import torch

import tiny_models
import diffpress
from diffpress.compression.swap import quantize_
from diffpress.errors import InputError, IntegrityError, OutputExistsError
from diffpress.metrics import sqnr_db
from diffpress.presets import preset
from diffpress.compression.modules import QuantConv2d, QuantLinear


def _state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k].view(torch.uint8) if sa[k].dtype == torch.float8_e4m3fn
                                                   else sa[k], sb[k].view(torch.uint8) if sb[k].dtype == torch.float8_e4m3fn
                                                   else sb[k]) for k in sa)


@pytest.mark.parametrize("arch", list(tiny_models.ARCHITECTURES))
@pytest.mark.parametrize("preset_name", ["w8a16-int8", "w4a16-int4", "w4a16-uint4", "w4a16-fp4", "w8a8-fp8"])
def test_save_load_is_bit_exact(tmp_path, arch, preset_name):
    model, inputs = tiny_models.build(arch)
    quantize_(model, preset(preset_name))
    expected = tiny_models.run(model, inputs)
    diffpress.save(model, tmp_path / "out")
    loaded = diffpress.load(tmp_path / "out")
    assert type(loaded) is type(model)
    assert _state_equal(model, loaded)
    assert torch.equal(tiny_models.run(loaded, inputs), expected)
    kinds = {type(m) for m in loaded.modules()}
    assert QuantLinear in kinds


@pytest.mark.parametrize("arch", list(tiny_models.ARCHITECTURES))
def test_w8a16_int8_close_to_float(arch):
    model, inputs = tiny_models.build(arch)
    reference = tiny_models.run(model, inputs)
    quantize_(model, preset("w8a16-int8"))
    assert sqnr_db(reference, tiny_models.run(model, inputs)) >= 30


def test_bfloat16_model_roundtrip(tmp_path):
    model, inputs = tiny_models.build("pixart")
    model = model.to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    quantize_(model, preset("w4a16-int4"))
    diffpress.save(model, tmp_path / "out")
    loaded = diffpress.load(tmp_path / "out")
    assert loaded.transformer_blocks[0].ff.net[2].bias.dtype == torch.bfloat16
    assert torch.equal(tiny_models.run(loaded, inputs), tiny_models.run(model, inputs))


def test_quantization_config_records_every_layer(tmp_path):
    model, _ = tiny_models.build("unet2d_condition")
    report = quantize_(model, preset("w4a16-int4"))
    diffpress.save(model, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    qconfig = config["quantization_config"]
    assert qconfig["quant_method"] == "diffpress" and qconfig["format_version"] == 1
    assert qconfig["producer_version"] == diffpress.__version__
    assert set(qconfig["layers"]) == set(report.quantized)
    assert qconfig["layers"]["down_blocks.0.resnets.0.conv1"] == {
        "module": "conv2d", "layout": "nibbles_k_v1", "weight_format": "int4", "granularity": "per_group",
        "group_size": 128, "act_format": None, "scale_method": "mse", "act_mode": "dynamic", "smoothing": None,
        "low_rank": 0, "rounding": "nearest", "split_shortcuts": False, "bos_aware": False}
    assert qconfig["torch_dtype"] == "float32"
    assert config["_class_name"] == "UNet2DConditionModel"


def _saved(tmp_path):
    model, inputs = tiny_models.build("pixart")
    quantize_(model, preset("w8a16-int8"))
    return diffpress.save(model, tmp_path / "out"), model, inputs


def test_corrupted_weights_fail_the_checksum(tmp_path):
    out, _, _ = _saved(tmp_path)
    weights = out / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 does not match"):
        diffpress.load(out)


def test_missing_file_and_missing_manifest(tmp_path):
    out, _, _ = _saved(tmp_path)
    (out / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        diffpress.load(out)
    (out / "diffpress_manifest.json").unlink()
    with pytest.raises(IntegrityError, match="not a diffpress-compressed model"):
        diffpress.load(out)


def test_config_naming_a_layer_the_model_lacks(tmp_path):
    out, _, _ = _saved(tmp_path)
    manifest = json.loads((out / "diffpress_manifest.json").read_text())
    config = json.loads((out / "config.json").read_text())
    layers = config["quantization_config"]["layers"]
    layers["not.a.layer"] = next(iter(layers.values()))
    (out / "config.json").write_text(json.dumps(config))
    manifest["sha256"].pop("config.json")  # simulate an edited config that slipped past the manifest
    (out / "diffpress_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="not.a.layer"):
        diffpress.load(out)


def test_existing_output_is_kept_without_overwrite(tmp_path):
    out, model, _ = _saved(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputExistsError, match="--overwrite"):
        diffpress.save(model, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    diffpress.save(model, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or retired directories left


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    model, _ = tiny_models.build("pixart")
    quantize_(model, preset("w8a16-int8"))

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("diffpress.io.save_file", explode)
    with pytest.raises(KeyboardInterrupt):
        diffpress.save(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_saving_an_unquantized_model_is_refused(tmp_path):
    model, _ = tiny_models.build("pixart")
    with pytest.raises(InputError, match="neither quantized nor pruned"):
        diffpress.save(model, tmp_path / "out")
