"""The command line as a user runs it: a subprocess, exit codes, one-line errors."""
import shutil
import subprocess
import sys

import pytest

import tiny_models


def diffpress(*args):
    return subprocess.run([sys.executable, "-m", "diffpress.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "unet"
    tiny_models.build("unet2d_condition")[0].save_pretrained(path)
    return path


def test_help_lists_presets_and_examples():
    result = diffpress("compress", "--help")
    assert result.returncode == 0
    assert "w4a16-int4" in result.stdout and "examples:" in result.stdout


def test_compress_prints_summary(unet_dir, tmp_path):
    result = diffpress("compress", unet_dir, "--preset", "w4a16-int4", "--out", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "UNet2DConditionModel: preset w4a16-int4: quantized 79 layers, skipped 4" in result.stdout
    assert "kept in high precision: conv_out" in result.stdout
    assert "x smaller)" in result.stdout and "saved" in result.stdout
    again = diffpress("compress", unet_dir, "--preset", "w4a16-int4", "--out", tmp_path / "out")
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "--overwrite" in again.stderr


def _pickle_only(tmp, unet_dir):
    target = tmp / "pickled"
    shutil.copytree(unet_dir, target)
    (target / "diffusion_pytorch_model.safetensors").rename(target / "diffusion_pytorch_model.bin")
    return target


def _truncated(tmp, unet_dir):
    target = tmp / "truncated"
    shutil.copytree(unet_dir, target)
    weights = target / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    return target


def _digest(path):
    return {p.name: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else None


@pytest.mark.parametrize("make_input,message", [
    (lambda tmp, unet: tmp / "missing", "no such file or directory"),
    (lambda tmp, unet: tmp, "not a diffusers model or pipeline directory"),
    (_pickle_only, "only pickled weights"),
    (_truncated, "truncated safetensors file"),
], ids=["missing", "not-diffusers", "pickle-only", "truncated"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, unet_dir, make_input, message):
    source = make_input(tmp_path, unet_dir)
    before = _digest(source)
    result = diffpress("compress", source, "--preset", "w8a16-int8", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.startswith("diffpress compress: error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert _digest(source) == before


def test_checksum_mismatch_at_load_is_one_line(unet_dir, tmp_path):
    out = tmp_path / "digits"
    assert diffpress("compress", "builtin:digits", "--preset", "w8a16-int8", "--out", out, "--quiet").returncode == 0
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    result = diffpress("eval", "builtin:digits", "--compressed", out, "--num-samples", "2", "--steps", "2")
    assert result.returncode == 2 and "sha256 does not match" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_preset_is_a_usage_error(unet_dir, tmp_path):
    result = diffpress("compress", unet_dir, "--preset", "w3a3", "--out", tmp_path / "out")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_calibrate_writes_a_loadable_file(tmp_path):
    from diffpress.calibration import CalibrationSet

    out = tmp_path / "calib.safetensors"
    args = ("calibrate", "builtin:digits", "--out", out, "--calib-samples", "4", "--calib-steps", "3", "--buckets", "3",
            "--reservoir-size", "1", "--quiet")
    result = diffpress(*args)
    assert result.returncode == 0, result.stderr
    assert "calibrated" in result.stdout and "denoiser calls" in result.stdout
    calibration = CalibrationSet.load(out)
    assert len(calibration.timesteps) == 3 and "mid_block.attentions.0.to_q" in calibration.layers
    again = diffpress(*args)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_calibrate_empty_prompts_file_is_a_clear_error(tmp_path):
    (tmp_path / "prompts.txt").write_text("\n\n")
    result = diffpress("calibrate", "builtin:digits", "--calib-prompts", tmp_path / "prompts.txt", "--out", tmp_path / "c")
    assert result.returncode == 2 and "--calib-prompts" in result.stderr and "is empty" in result.stderr
