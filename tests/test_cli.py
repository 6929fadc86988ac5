"""The command line as a user runs it: a subprocess, exit codes, one-line errors."""
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


@pytest.mark.parametrize("make_input,message", [
    (lambda tmp: tmp / "missing", "no such file or directory"),
    (lambda tmp: tmp, "not a diffusers model or pipeline directory"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, make_input, message):
    result = diffpress("compress", make_input(tmp_path), "--preset", "w8a16-int8", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.startswith("diffpress: error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_preset_is_a_usage_error(unet_dir, tmp_path):
    result = diffpress("compress", unet_dir, "--preset", "w3a3", "--out", tmp_path / "out")
    assert result.returncode == 2 and "invalid choice" in result.stderr
