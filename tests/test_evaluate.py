"""The quality harness on the built-in model."""
import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from diffpress.api import compress, evaluate, models as list_builtins
from diffpress.errors import InputError
from diffpress.zoo import BUILTINS

SMALL = dict(num_samples=20, steps=8)


@pytest.fixture(scope="module")
def compressed_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "digits-int8"
    compress("builtin:digits", "w8a16-int8", out)
    return out


def test_builtin_digits_is_small_and_real():
    path = BUILTINS["digits"].path
    shipped = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert shipped <= 20_000_000
    weights = load_file(path / "unet" / "diffusion_pytorch_model.safetensors")
    parameters = sum(t.numel() for t in weights.values())
    assert 1_000_000 <= parameters <= 10_000_000
    assert [name for name, _ in list_builtins()] == ["builtin:digits", "builtin:digits-flux"]


def test_reference_samples_are_the_requested_digits():
    result = evaluate("builtin:digits", num_samples=100, steps=25)
    assert result.compressed is None
    assert result.reference.classifier_accuracy >= 0.9


def test_int8_weights_draw_the_same_digits(compressed_int8):
    result = evaluate("builtin:digits", compressed_int8, **SMALL)
    assert result.compressed.psnr_db >= 30
    assert result.compressed.ssim >= 0.98
    assert abs(result.compressed.classifier_accuracy - result.reference.classifier_accuracy) <= 0.05
    assert result.compressed.size_bytes < 0.35 * result.reference.size_bytes


def test_eval_json_is_deterministic_and_writes_a_grid(compressed_int8, tmp_path):
    command = [sys.executable, "-m", "diffpress.cli.main", "eval", "builtin:digits", "--compressed",
               str(compressed_int8), "--num-samples", "20", "--steps", "8", "--json", "--grid", str(tmp_path / "g.png")]
    runs = [json.loads(subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stdout)
            for _ in range(2)]
    for run in runs:
        assert set(run) == {"reference", "compressed"}
        assert set(run["compressed"]) == {"psnr_db", "ssim", "classifier_accuracy", "frechet_distance",
                                          "size_bytes", "seconds", "psnr_ci95_db", "classifier_accuracy_ci95",
                                          "psnr_typical_db"}
        assert run["reference"]["psnr_db"] is None and run["reference"]["ssim"] is None
        assert run["reference"]["psnr_typical_db"] is None
        low, high = run["compressed"]["psnr_ci95_db"]
        assert low < run["compressed"]["psnr_db"] < high
        assert run["compressed"]["psnr_typical_db"] >= run["compressed"]["psnr_db"]  # mean of logs >= log of mean
        for side in run.values():
            side.pop("seconds")
    assert runs[0] == runs[1]
    from PIL import Image

    grid = Image.open(tmp_path / "g.png")
    assert grid.size == (20 * 18 * 4, 2 * 18 * 4)


def test_eval_needs_a_model_with_a_classifier(tmp_path):
    import tiny_models
    from diffusers import DDPMPipeline, DDPMScheduler

    model, _ = tiny_models.tiny_unet2d()
    DDPMPipeline(unet=model, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "pipe")
    with pytest.raises(InputError, match="evaluation classifier.*builtin:digits"):
        evaluate(tmp_path / "pipe", **SMALL)


def test_unknown_builtin_is_named():
    with pytest.raises(InputError, match="unknown built-in model 'builtin:cats'; available: builtin:digits"):
        evaluate("builtin:cats", **SMALL)
