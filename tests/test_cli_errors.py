"""Every command-line option given an invalid value: one line on stderr naming the option, the value and
what is allowed; exit status 2; nothing written (the working directory is unchanged)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import tiny_models
from diffpress.cli.main import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs shared by the cases: a bare denoiser dir, calibration sets, bad recipe and prompts files."""
    import diffpress

    root = tmp_path_factory.mktemp("inputs")
    model, inputs = tiny_models.build("unet2d_condition")
    model.save_pretrained(root / "unet")
    diffpress.calibrate("builtin:digits", num_samples=2, steps=2, buckets=2, reservoir_size=0,
                        out=root / "empty-reservoir.safetensors")
    calibration = diffpress.calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [100, 700]), buckets=2,
                                      reservoir_size=1, progress=False)
    calibration.save(root / "unet-calibration.safetensors")
    (root / "bad-recipe.yaml").write_text("default: {weight_format: int4, granularity: per_group, bits: 3}\n")
    (root / "prune-recipe.yaml").write_text("prune: [{method: learned}]\n"
                                            "default: {weight_format: int8, granularity: per_channel}\n")
    (root / "empty-prompts.txt").write_text("\n\n")
    (root / "not-calibration.safetensors").write_bytes((root / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())
    (root / "latency.json").write_text("[1, 2]")
    (root / "existing").write_text("keep me")
    (root / "report").mkdir()
    (root / "report" / "keep.txt").write_text("keep me")
    return root


def run_cli(argv, workdir: Path, capsys):
    before = snapshot(workdir)
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err, snapshot(workdir) == before


def snapshot(directory: Path) -> dict:
    return {p.relative_to(directory).as_posix(): p.stat().st_mtime_ns if p.is_file() else None
            for p in sorted(directory.rglob("*"))}


DIGITS = "builtin:digits"
# (argv with {f} for the shared inputs and {o} for an output in the work dir, the substrings stderr must hold)
CASES = [
    # calibrate
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--buckets", "0"], ["--buckets", "'0'", ">= 1"]),
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--reservoir-size", "-1"], ["--reservoir-size", "'-1'", ">= 0"]),
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--calib-labels", "12"], ["--calib-labels", "12", "0..9"]),
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--calib-labels", "x"], ["--calib-labels", "'x'", "integer"]),
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--calib-samples", "0"], ["--calib-samples", "'0'", ">= 1"]),
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--calib-steps", "many"], ["--calib-steps", "'many'", "integer"]),
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--calib-seed", "-3"], ["--calib-seed", "'-3'", ">= 0"]),
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--calib-strategy", "best"],
     ["--calib-strategy", "'best'", "uniform", "eda"]),
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--calib-prompts", "{f}/missing.txt"],
     ["--calib-prompts", "missing.txt", "no such file"]),
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--calib-prompts", "{f}/empty-prompts.txt"],
     ["--calib-prompts", "empty-prompts.txt", "one prompt per line"]),
    (["calibrate", DIGITS, "--out", "{f}/existing"], ["--out", "existing", "--overwrite"]),
    (["calibrate", "builtin:nope", "--out", "{o}/c.safetensors"], ["builtin:nope", "available: builtin:digits"]),
    (["calibrate", "{f}/unet", "--out", "{o}/c.safetensors"], ["unet", "needs a pipeline", "bare denoiser"]),
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--calibration", "{f}/empty-reservoir.safetensors"],
     ["--calibration", "empty-reservoir.safetensors", "give --out only"]),
    # compress: plan
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w3a3"], ["--preset", "'w3a3'", "w8a16-int8"]),
    (["compress", DIGITS, "--out", "{o}/out", "--recipe", "{f}/missing.yaml"], ["--recipe", "missing.yaml", "no such file"]),
    (["compress", DIGITS, "--out", "{o}/out", "--recipe", "{f}/bad-recipe.yaml"],
     ["--recipe", "bad-recipe.yaml", "unknown key 'bits'", "allowed:"]),
    (["compress", DIGITS, "--out", "{o}/out", "--recipe", "{f}/prune-recipe.yaml"],
     ["--recipe", "prune", "exactly one of target_params, target_macs"]),
    (["compress", DIGITS, "--out", "{o}/out"], ["--preset", "--recipe", "required"]),
    (["compress", DIGITS, "--out", "{f}/existing", "--preset", "w8a16-int8"], ["existing", "--overwrite"]),
    (["compress", "{f}/unet", "--out", "{f}/unet/inside", "--preset", "w8a16-int8"], ["--out", "overlaps the input"]),
    # compress: calibration
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--calibration", "{f}/empty-reservoir.safetensors"],
     ["--calibration", "reservoir", "reservoir_size >= 1"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--calibration", "{f}/not-calibration.safetensors"],
     ["--calibration", "not-calibration.safetensors", "not a diffpress calibration file"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--calibration", "{f}/unet-calibration.safetensors"],
     ["--calibration", "another model"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--calib-labels", "12"],
     ["--calib-labels", "12", "0..9"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--calibration", "{f}/unet-calibration.safetensors",
      "--calib-labels", "3"], ["--calibration", "--calib-labels"]),
    (["compress", "{f}/unet", "--out", "{o}/out", "--preset", "w4a8-int"], ["--calibration FILE", "bare denoiser"]),
    # compress: mixed precision
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w8a8-int8", "--avg-bits", "5"], ["--avg-bits", "--preset mixed"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed"], ["--avg-bits", "--max-bytes", "budget"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "0"], ["--avg-bits", "'0'", "> 0"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "nan"], ["--avg-bits", "'nan'", "finite"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "3"],
     ["--avg-bits", "3", "smallest feasible", "4"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--max-bytes", "-5"], ["--max-bytes", "'-5'", ">= 1"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w8a8-int8", "--avg-act-bits", "6"],
     ["--avg-act-bits", "--preset mixed"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5", "--avg-act-bits", "6"],
     ["avg_act_bits 6", "smallest feasible", "8 bits"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5", "--max-latency", "-1"],
     ["--max-latency", "'-1'", "> 0"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5", "--latency-table",
      "{f}/missing.json"], ["--latency-table", "missing.json", "no such file"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5", "--latency-table",
      "{f}/latency.json"], ["--latency-table", "latency.json", "expected a JSON object"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5", "--candidates", "int3"],
     ["--candidates", "'int3'", "allowed: bf16"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5", "--candidates", "w4a8-int-rtn"],
     ["--candidates", "w4a8-int-rtn", "name the preset"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5", "--methods", "best"],
     ["--methods", "'best'", "rtn", "full"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5", "--calls-per-bucket", "0"],
     ["--calls-per-bucket", "'0'", ">= 1"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5", "--image-layers", "some"],
     ["--image-layers", "'some'", "'all'"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5", "--image-samples", "0"],
     ["--image-samples", "'0'", ">= 1"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5", "--image-steps", "-2"],
     ["--image-steps", "'-2'", ">= 1"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5", "--validation-samples", "-1"],
     ["--validation-samples", "'-1'", ">= 0"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w8a16-int8", "--stream", "--shard-size", "0"],
     ["--shard-size", "'0'", ">= 1"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--rounding-iterations", "0"],
     ["--rounding-iterations", "'0'", ">= 1"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--rounding-rows", "x"],
     ["--rounding-rows", "'x'", "integer"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--rounding-batch", "-5"],
     ["--rounding-batch", "'-5'", ">= 1"]),
    (["compress", "{f}/unet", "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "6", "--calibration",
      "{f}/unet-calibration.safetensors", "--methods", "rtn"], ["--image-layers", "--image-layers 0", "image_probe"]),
    # sensitivity
    (["sensitivity", DIGITS, "--out", "{f}/report"], ["--out", "report", "not empty", "--overwrite"]),
    (["sensitivity", DIGITS, "--out", "{o}/r", "--top-k", "-1"], ["--top-k", "'-1'", ">= 0"]),
    # interrupted runs
    (["sensitivity", DIGITS, "--out", "{o}/r", "--checkpoint-every", "-1"], ["--checkpoint-every", "'-1'", ">= 0"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--checkpoint-every", "soon"],
     ["--checkpoint-every", "'soon'", "number"]),
    (["prune", DIGITS, "--out", "{o}/out", "--target-params", "0.8", "--checkpoint-every", "inf"],
     ["--checkpoint-every", "'inf'", "finite"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--resume"],
     ["--resume", "no interrupted run to continue"]),
    (["prune", DIGITS, "--out", "{o}/out", "--target-params", "0.8", "--resume"],
     ["--resume", "no interrupted run to continue"]),
    (["sensitivity", DIGITS, "--out", "{o}/r", "--avg-bits", "-5"], ["--avg-bits", "'-5'", "> 0"]),
    (["sensitivity", DIGITS, "--out", "{o}/r", "--candidates", "bf17"], ["--candidates", "'bf17'", "allowed: bf16"]),
    (["sensitivity", DIGITS, "--out", "{o}/r", "--methods", "exact"], ["--methods", "'exact'", "rtn", "full"]),
    (["sensitivity", DIGITS, "--out", "{o}/r", "--calls-per-bucket", "x"], ["--calls-per-bucket", "'x'", "integer"]),
    (["sensitivity", DIGITS, "--out", "{o}/r", "--image-layers", "-1"], ["--image-layers", "'-1'", "'all'"]),
    (["sensitivity", "{f}/unet", "--out", "{o}/r"], ["--calibration FILE", "bare denoiser"]),
    (["sensitivity", "{f}/unet", "--out", "{o}/r", "--calibration", "{f}/unet-calibration.safetensors"],
     ["--image-layers", "--image-layers 0"]),
    # eval
    (["eval", DIGITS, "--num-samples", "0"], ["--num-samples", "'0'", ">= 1"]),
    (["eval", DIGITS, "--steps", "0"], ["--steps", "'0'", ">= 1"]),
    (["eval", DIGITS, "--seed", "-1"], ["--seed", "'-1'", ">= 0"]),
    (["eval", DIGITS, "--guidance-scale", "-1"], ["--guidance-scale", "'-1'", ">= 0"]),
    (["eval", DIGITS, "--guidance-scale", "inf"], ["--guidance-scale", "'inf'", "finite"]),
    (["eval", DIGITS, "--compressed", "{f}/missing-dir"], ["missing-dir", "no such directory"]),
    (["eval", "{f}/unet"], ["unet", "evaluation classifier", "builtin:digits"]),
    # prune
    (["prune", DIGITS, "--out", "{o}/p"], ["--target-params", "--target-macs", "required"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0"], ["--target-params", "'0'", "> 0"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "1.5"], ["--target-params", "1.5", "(0, 1]"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.01", "--method", "magnitude"],
     ["--target-params", "0.01", "cannot be reached", "smallest reachable is 0.2"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-macs", "most"], ["--target-macs", "'most'", "number"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--method", "obs"],
     ["--method", "'obs'", "learned", "taylor"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--scope", "wide"], ["--scope", "'wide'", "global"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--steps", "0"], ["--steps", "'0'", ">= 1"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--guidance-scale", "-2"],
     ["--guidance-scale", "'-2'", ">= 0"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--iterations", "0"], ["--iterations", "'0'", ">= 1"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--learn-samples", "0"],
     ["--learn-samples", "'0'", ">= 1"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--batch-size", "x"], ["--batch-size", "'x'", "integer"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--learning-rate", "0"],
     ["--learning-rate", "'0'", "> 0"]),
    (["prune", DIGITS, "--out", "{f}/existing", "--target-params", "0.8"], ["existing", "--overwrite"]),
    (["prune", "{f}/unet", "--out", "{o}/p", "--target-params", "0.8"], ["unet", "needs a pipeline", "--calibration FILE"]),
    (["prune", "{f}/unet", "--out", "{o}/p", "--target-params", "0.8", "--objective", "trajectory"],
     ["unet", "needs a pipeline", "objective replay", "--method taylor"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--step-loss", "-1"], ["--step-loss", "'-1'", ">= 0"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--budget-control", "soft"],
     ["--budget-control", "'soft'", "penalty"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--warmup", "2"], ["warmup", "fraction in [0, 1]"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--warm-start", "hot"], ["--warm-start", "'hot'", "candidate"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--mask-checks", "-1"], ["--mask-checks", "'-1'", ">= 0"]),
    (["prune", DIGITS, "--out", "{o}/p", "--remove-blocks", "2", "--depth-pattern", "zigzag"],
     ["--depth-pattern", "'zigzag'", "free"]),
    (["prune", DIGITS, "--out", "{o}/p", "--remove-blocks", "2", "--depth-init", "warm"],
     ["--depth-init", "'warm'", "uniform"]),
    (["prune", DIGITS, "--out", "{o}/p", "--remove-blocks", "2", "--lora-rank", "-1"], ["--lora-rank", "'-1'", ">= 0"]),
    (["prune", "{f}/unet", "--out", "{o}/p", "--target-params", "0.8", "--method", "taylor"],
     ["--calibration FILE", "bare denoiser"]),
    (["prune", DIGITS, "--out", "{o}/p", "--remove-blocks", "0"], ["--remove-blocks", "'0'", ">= 1"]),
    (["prune", DIGITS, "--out", "{o}/p", "--remove-blocks", "11", "--method", "random"],
     ["--remove-blocks", "between 1 and 10", "11 removable blocks"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-latency", "x"], ["--target-latency", "'x'", "number"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--unit", "deep"], ["--unit", "'deep'", "blocks"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--unit", "width", "--method", "oneshot"],
     ["--method", "'oneshot'", "does not prune width", "learned"]),
    (["prune", DIGITS, "--out", "{o}/p", "--remove-blocks", "2", "--method", "taylor"],
     ["--method", "'taylor'", "does not prune blocks", "oneshot"]),
    (["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--unit", "blocks", "--method", "learned"],
     ["--method", "learned depth mask", "remove_blocks"]),
    (["prune", DIGITS, "--out", "{o}/p", "--remove-blocks", "2", "--recover-steps", "-1"],
     ["--recover-steps", "'-1'", ">= 0"]),
    (["prune", DIGITS, "--out", "{o}/p", "--remove-blocks", "2", "--recover-lr", "0"], ["--recover-lr", "'0'", "> 0"]),
    # inspect
    (["inspect", DIGITS], ["--preset", "--recipe", "--prunable"]),
    (["inspect", DIGITS, "--preset", "mixed"], ["--preset", "'mixed'", "w8a16-int8"]),
    (["inspect", DIGITS, "--recipe", "{f}/bad-recipe.yaml"], ["--recipe", "unknown key 'bits'"]),
    (["eval", DIGITS, "--compressed", "{f}/missing-dir", "--grid", "{o}/grid.jpg"], ["--grid", "grid.jpg", ".png"]),
    # where it computes
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--device", "gpu0"], ["--device", "'gpu0'", "cpu, cuda"]),
    (["calibrate", DIGITS, "--out", "{o}/c.safetensors", "--compute-dtype", "int8"], ["--compute-dtype", "'int8'"]),
    (["sensitivity", DIGITS, "--out", "{o}/r", "--device", "meta"], ["--device", "'meta'", "cpu or cuda"]),
    (["sensitivity", DIGITS, "--out", "{o}/r", "--compute-dtype", "half"], ["--compute-dtype", "'half'"]),
    (["prune", DIGITS, "--out", "{o}/p", "--remove-blocks", "2", "--device", "cuda:x"], ["--device", "'cuda:x'"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--device", "gpu"], ["--device", "'gpu'"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--compute-dtype", "fp8"],
     ["--compute-dtype", "'fp8'", "bfloat16"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--inputs-from", "both"],
     ["--inputs-from", "'both'", "quantized"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int", "--capture-memory", "0"],
     ["--capture-memory", "'0'", ">= 1"]),
    # usage
    (["frobnicate"], ["'frobnicate'", "compress"]),
    (["compress", DIGITS, "--out", "{o}/out", "--preset", "w8a16-int8", "--no-such-option"], ["--no-such-option"]),
]


# the shared option groups, given bad values in every other command that has them
SHARED = [(["--calib-prompts", "{f}/missing.txt"], ["--calib-prompts", "no such file"]),
          (["--calib-labels", "-1"], ["--calib-labels", "'-1'", ">= 0"]),
          (["--calib-samples", "-1"], ["--calib-samples", "'-1'", ">= 1"]),
          (["--calib-steps", "0"], ["--calib-steps", "'0'", ">= 1"]),
          (["--calib-seed", "x"], ["--calib-seed", "'x'", "integer"]),
          (["--calib-strategy", "random"], ["--calib-strategy", "'random'", "uniform", "eda"]),
          (["--buckets", "-2"], ["--buckets", "'-2'", ">= 1"]),
          (["--reservoir-size", "many"], ["--reservoir-size", "'many'", "integer"]),
          (["--calibration", "{f}/missing.safetensors"], ["--calibration", "no such file"]),
          (["--image-samples", "-4"], ["--image-samples", "'-4'", ">= 1"]),
          (["--image-steps", "zero"], ["--image-steps", "'zero'", "integer"])]
HEADS = {"compress": ["compress", DIGITS, "--out", "{o}/out", "--preset", "w4a8-int"],
         "prune": ["prune", DIGITS, "--out", "{o}/p", "--target-params", "0.8", "--method", "taylor"],
         "sensitivity": ["sensitivity", DIGITS, "--out", "{o}/r"],
         "inspect": ["inspect", DIGITS, "--blocks", "--losses"]}
CASES += [(HEADS[command] + tail, expected) for command in HEADS for tail, expected in SHARED
          if not (command in ("compress", "prune", "inspect") and tail[0].startswith("--image"))]
CASES += [(["compress", DIGITS, "--out", "{o}/out", "--preset", "mixed", "--avg-bits", "5"] + tail, expected)
          for tail, expected in SHARED if tail[0].startswith("--image")]


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(c[0][:1] + c[0][3:][:4]) for c in CASES])
def test_invalid_value_is_one_line_exit_2_nothing_written(argv, expected, files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(f=files, o=tmp_path) for a in argv]
    inputs_before = snapshot(files)
    code, err, unchanged = run_cli(argv, tmp_path, capsys)
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith("diffpress"), err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert unchanged, f"something was written in {tmp_path}: {sorted(p.name for p in tmp_path.rglob('*'))}"
    assert snapshot(files) == inputs_before
    assert not [p for p in tmp_path.rglob(".*tmp*")], "a temporary file was left behind"


def test_every_option_of_every_command_has_a_case():
    """The table above covers each option that takes a value (flags and positional MODEL aside)."""
    from diffpress.cli.main import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    covered = {(argv[0], arg) for argv, _ in CASES for arg in argv if arg.startswith("--")}
    missing = []
    for name, command in commands.items():
        for action in command._actions:
            takes_value = action.option_strings and action.nargs != 0 and action.dest != "help"
            if takes_value and not any((name, flag) in covered for flag in action.option_strings):
                missing.append(f"{name} {action.option_strings[-1]}")
    assert missing == []


def test_bare_denoiser_mixed_precision_and_sensitivity_work_with_output_metric_only(files, tmp_path, capsys):
    """A custom denoiser with no pipeline: mixed precision from a saved calibration set, no sampler needed."""
    import diffpress

    out = tmp_path / "mixed"
    code = main(["compress", str(files / "unet"), "--preset", "mixed", "--avg-bits", "6", "--calibration",
                 str(files / "unet-calibration.safetensors"), "--image-layers", "0", "--methods", "rtn",
                 "--candidates", "w8a8-int8", "w4a8-int", "--calls-per-bucket", "1", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "allocation: " in captured.out and (out / "allocation.json").is_file()
    model = diffpress.load(out)
    assert any(type(m).__name__ == "QuantLinear" for m in model.modules())
    report_dir = tmp_path / "report"
    code = main(["sensitivity", str(files / "unet"), "--calibration", str(files / "unet-calibration.safetensors"),
                 "--image-layers", "0", "--candidates", "w8a8-int8", "w4a8-int", "--out", str(report_dir), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (report_dir / "report.json").is_file() and (report_dir / "recipe.yaml").is_file()
