"""Faults: locked and atomic outputs, full disks, read-only directories, killed and resumed runs.

bench/faults.py kills real `diffpress compress` processes at random moments; these tests cover the
same promises in-process, on small runs."""
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import diffpress
from diffpress import resume
from diffpress.calibration import CalibrationOptions
from diffpress.calibration import drive
from diffpress.compression import ptq
from diffpress.errors import InputError, OutputExistsError
from diffpress.outputs import (OutputBusyError, OutputWriteError, atomic_directory, check_free_space,
                               reserved_output, staging_path)
from diffpress.presets import preset
from diffpress.recipe import Recipe, Rule

ROOT = Path(__file__).resolve().parents[1]
# learned rounding on a few layers of the built-in: a calibrating plan that runs in seconds
SMALL_PLAN = Recipe(default=None, rules=(Rule("down_blocks.0.resnets.*", preset("w4a8-int")),),
                    keep_default_skips=False)
SMALL_CALIBRATION = CalibrationOptions(num_samples=6, steps=3, batch_size=2, reservoir_size=2, buckets=2)


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- outputs


def test_a_second_writer_of_the_same_output_is_refused_at_once(tmp_path):
    out = tmp_path / "out"
    staging = staging_path(out)
    staging.mkdir()
    holder = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)  # another run's lock
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(OutputBusyError, match="another diffpress run is writing it"):
            with reserved_output(out, overwrite=False):
                pass
    finally:
        os.close(holder)
    assert not out.exists()
    with atomic_directory(out, overwrite=False) as writing:  # the lock is gone: the next run goes ahead
        (writing / "a").write_text("a")
    assert files_of(out) == {"a": b"a"} and leftovers(tmp_path) == []


def test_two_processes_racing_for_one_output_one_wins_and_nothing_is_mixed(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from diffpress.outputs import atomic_directory
        name = sys.argv[1]
        with atomic_directory(Path({str(tmp_path / 'out')!r}), overwrite=False) as staging:
            for i in range(20):
                (staging / f"part-{{i}}").write_text(name)
                time.sleep(0.05)
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script, name], stderr=subprocess.PIPE, text=True)
            for name in ("first", "second")]
    results = [(run.wait(timeout=60), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 1]
    loser = next(err for code, err in results if code)
    assert "OutputBusyError" in loser or "OutputExistsError" in loser
    written = {p.read_text() for p in (tmp_path / "out").iterdir()}
    assert len(written) == 1 and len(list((tmp_path / "out").iterdir())) == 20
    assert leftovers(tmp_path) == []


def test_a_killed_runs_staging_directory_is_emptied_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    stale = staging_path(out)
    (stale / "unet").mkdir(parents=True)
    (stale / "unet" / "half-written.safetensors").write_bytes(b"\0" * 100)
    with atomic_directory(out, overwrite=False) as writing:
        (writing / "model.json").write_text("{}")
    assert files_of(out) == {"model.json": b"{}"} and leftovers(tmp_path) == []


def test_overwrite_swaps_the_whole_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(OutputExistsError):
        with atomic_directory(out, overwrite=False):
            pass
    with atomic_directory(out, overwrite=True) as writing:
        (writing / "new").write_text("new")
    assert files_of(out) == {"new": b"new"} and leftovers(tmp_path) == []


def test_an_error_while_writing_leaves_the_previous_output_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(out, overwrite=True) as writing:
            (writing / "new").write_text("new")
            raise RuntimeError("boom")
    assert files_of(out) == {"old": b"old"} and leftovers(tmp_path) == []


def test_free_space_is_checked_before_the_work(tmp_path):
    with pytest.raises(OutputWriteError, match=r"needs about 1,000,000,000,000,000 bytes"):
        check_free_space(tmp_path, 10 ** 15, tmp_path / "out")
    check_free_space(tmp_path, 1000, tmp_path / "out")  # plenty: no error


FILL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    from diffpress.outputs import atomic_directory, OutputWriteError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    try:
        with atomic_directory(Path(sys.argv[1]), overwrite=False, expected_bytes=1 << 20) as staging:
            (staging / "weights.bin").write_bytes(b"x" * (1 << 20))
    except OutputWriteError as error:
        print(error)
        sys.exit(3)
""")


def test_a_full_disk_ends_in_one_line_naming_the_path_and_the_bytes(tmp_path):
    run = subprocess.run([sys.executable, "-c", FILL_DISK, str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 3, run.stderr
    message = run.stdout.strip()
    assert "\n" not in message and "no space left while writing" in message and "weights.bin" in message
    assert "1,048,576 bytes" in message
    assert list(tmp_path.iterdir()) == []


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode:
        pytest.skip("needs root and tmpfs mounts")


def test_a_read_only_filesystem_ends_in_one_line_and_leaves_nothing(tmp_path):
    target = tmp_path / "ro"
    _mount_tmpfs(target, "ro,size=1m")
    try:
        with pytest.raises(OutputWriteError, match="cannot write .*Read-only file system.*choose another --out"):
            with atomic_directory(target / "out", overwrite=False):
                pass
        assert list(target.iterdir()) == []
    finally:
        subprocess.run(["umount", str(target)])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_ends_in_one_line(tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        with pytest.raises(OutputWriteError, match="Permission denied"):
            with atomic_directory(target / "out", overwrite=False):
                pass
    finally:
        target.chmod(0o700)


def test_compressing_onto_a_small_filesystem_is_refused_before_the_work(tmp_path):
    target = tmp_path / "small"
    _mount_tmpfs(target, "size=256k")
    try:
        with pytest.raises(OutputWriteError, match="not enough free space .* needs about"):
            diffpress.compress("builtin:digits", "w8a16-int8", target / "out")
        assert list(target.iterdir()) == []
    finally:
        subprocess.run(["umount", str(target)])


# ---------------------------------------------------------------- resume


def _interrupt_on_call(monkeypatch, module, name: str, call: int) -> None:
    """Make module.name raise KeyboardInterrupt on its `call`-th call (1-based), as Ctrl-C would."""
    original, calls = getattr(module, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    monkeypatch.setattr(module, name, interrupted)


def _compress(out: Path, **kwargs):
    return diffpress.compress("builtin:digits", SMALL_PLAN, out, calibration=SMALL_CALIBRATION, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("reference") / "out"
    _compress(out, checkpoint_every=None)
    return files_of(out)


@pytest.mark.parametrize("where", ["calibration", "quantization"])
def test_a_resumed_compress_is_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch, uninterrupted, where):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        if where == "calibration":
            _interrupt_on_call(patch, drive, "_call", 3)  # the third of three batches
        else:
            _interrupt_on_call(patch, ptq, "finish_layer", 3)
        with pytest.raises(KeyboardInterrupt):
            _compress(out, checkpoint_every=0)
    assert not out.exists() and leftovers(tmp_path) == [".out.diffpress-work"]
    work = resume.work_path(out)
    finished = {"calibration": "calibration-1", "quantization": "quantize-1"}[where]
    assert any((work / finished).iterdir())
    with monkeypatch.context() as patch:
        calls = []
        original = drive._call
        patch.setattr(drive, "_call", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
        _compress(out, resume=True, checkpoint_every=0)
    assert len(calls) == (1 if where == "calibration" else 0)  # only what had not been checkpointed was redone
    assert files_of(out) == uninterrupted
    assert leftovers(tmp_path) == []  # the work directory goes once the output is published


def test_resume_refuses_a_run_with_other_arguments_or_none_to_continue(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="no interrupted run to continue"):
        _compress(out, resume=True)
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, ptq, "finish_layer", 1)
        with pytest.raises(KeyboardInterrupt):
            _compress(out)
    with pytest.raises(InputError, match="started with a different calibration"):
        diffpress.compress("builtin:digits", SMALL_PLAN, out, calibration=CalibrationOptions(num_samples=4, steps=3),
                           resume=True)
    assert not out.exists()


def test_resume_refuses_a_changed_calibration_file(tmp_path, monkeypatch):
    calibration = diffpress.calibrate("builtin:digits", num_samples=2, steps=3, buckets=2, reservoir_size=1,
                                      out=tmp_path / "calibration.safetensors")
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, ptq, "finish_layer", 2)
        with pytest.raises(KeyboardInterrupt):
            diffpress.compress("builtin:digits", SMALL_PLAN, out, calibration=tmp_path / "calibration.safetensors")
    calibration.save(tmp_path / "calibration.safetensors")  # rewritten: same content, a new file
    with pytest.raises(InputError, match="started with a different calibration"):
        diffpress.compress("builtin:digits", SMALL_PLAN, out, calibration=tmp_path / "calibration.safetensors",
                           resume=True)


def test_a_run_without_resume_discards_an_old_work_directory(tmp_path, monkeypatch, uninterrupted):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, ptq, "finish_layer", 2)
        with pytest.raises(KeyboardInterrupt):
            _compress(out)
    stale = resume.work_path(out) / "quantize-1" / "bogus.safetensors"
    stale.write_bytes(b"junk")
    _compress(out)
    assert files_of(out) == uninterrupted and leftovers(tmp_path) == []


def _interrupted_at_5_then_resumed(monkeypatch, module, run, out: Path, stage: str):
    """Interrupt `run(out)` in the 5th call of module.fit_step (checkpointing after every iteration), check the
    stage's snapshot holds 4 iterations, then resume; (the snapshot, the resumed outcome, fit_step calls on
    resume)."""
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, module, "fit_step", 5)
        with pytest.raises(KeyboardInterrupt):
            run(out, checkpoint_every=0)
    snapshot = resume.StageCheckpoints(resume.work_path(out) / stage).latest_snapshot()
    assert snapshot is not None and snapshot[1]["iteration"] == 4
    with monkeypatch.context() as patch:
        steps, original = [], module.fit_step
        patch.setattr(module, "fit_step", lambda *a, **k: (steps.append(1), original(*a, **k))[1])
        resumed = run(out, resume=True)
    return snapshot, resumed, len(steps)


def test_mask_learning_resumes_to_the_same_mask(tmp_path, monkeypatch):
    from diffpress.pruning import learn

    def run(out, **kwargs):
        return diffpress.prune("builtin:digits", 0.8, out, learn={"iterations": 6, "samples": 2, "batch_size": 1},
                               steps=3, **kwargs)

    reference = run(tmp_path / "reference", checkpoint_every=None)
    out = tmp_path / "out"
    rankings, original = [], learn.one_shot_candidates
    monkeypatch.setattr(learn, "one_shot_candidates", lambda *a, **k: (rankings.append(1), original(*a, **k))[1])
    _, resumed, steps = _interrupted_at_5_then_resumed(monkeypatch, learn, run, out, "mask-learning-1")
    assert steps == 2  # iterations 5 and 6 only
    assert len(rankings) == 1  # measured by the interrupted run; the resumed one reads its checks from the snapshot
    assert resumed.result.params_after == reference.result.params_after
    assert files_of(out) == files_of(tmp_path / "reference")


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_depth_learning_resumes_to_the_same_blocks(tmp_path, monkeypatch, lora_rank):
    from diffpress.pruning import depth_learn

    learn = {"iterations": 6, "objective": "replay", "mask_checks": 3, "lora_rank": lora_rank, "depth_init": "uniform"}

    def run(out, **kwargs):
        return diffpress.prune("builtin:digits", None, out, remove_blocks=3, method="learned", learn=learn,
                               calibration=CalibrationOptions(num_samples=2, steps=4, buckets=2, reservoir_size=4),
                               **kwargs)

    reference = run(tmp_path / "reference", checkpoint_every=None)
    out = tmp_path / "out"
    snapshot, resumed, steps = _interrupted_at_5_then_resumed(monkeypatch, depth_learn, run, out, "depth-learning-1")
    assert any("adapters" in key for key in snapshot[0]) == bool(lora_rank)
    assert steps == 2  # iterations 5 and 6 only
    ours, theirs = resumed.result.learned_depth, reference.result.learned_depth
    assert ours.losses == theirs.losses and ours.checks == theirs.checks
    assert resumed.result.removed == reference.result.removed
    assert files_of(out) == files_of(tmp_path / "reference")


def test_sensitivity_resumes_to_the_same_allocation(tmp_path, monkeypatch):
    from diffpress.compression.sensitivity import output_metric
    from diffpress.compression.sensitivity.measure import SensitivityOptions

    options = SensitivityOptions(candidates=("w8a8-int8", "w4a16-int4"), methods="rtn", image_layers=0,
                                 calls_per_bucket=1)
    calibration = CalibrationOptions(num_samples=2, steps=3, buckets=2, reservoir_size=1)

    def run(out, **kwargs):
        return diffpress.sensitivity("builtin:digits", calibration, options, curve=False, out=out, **kwargs)

    reference = run(tmp_path / "reference", checkpoint_every=None)
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, output_metric, "swapped", 40)
        with pytest.raises(KeyboardInterrupt):
            run(out, checkpoint_every=0)
    assert len(list((resume.work_path(out) / "output-sensitivity-1").iterdir())) == 19  # 2 candidates per layer
    resumed = run(out, resume=True)
    assert resumed.output_sqnr == reference.output_sqnr
    assert (out / "recipe.yaml").read_text() == (tmp_path / "reference" / "recipe.yaml").read_text()


# ---------------------------------------------------------------- the command line, killed for real


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffpress", *args]


def test_ctrl_c_prints_one_line_exits_130_and_leaves_nothing_partial(tmp_path):
    out = tmp_path / "out"
    # learned rounding: seconds per layer, so the run is still quantizing when the signal lands (GPTQ, the
    # w4a8-int preset's rounding, can finish every remaining layer within one polling interval)
    command = _cli("compress", "builtin:digits", "--preset", "w8a8-int8-learned", "--calib-samples", "4",
                   "--calib-steps", "3",
                   "--out", str(out), "--quiet")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the default SIGINT handler in the child: a test run started in the background has SIGINT ignored, and
    # children inherit that
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    work = resume.work_path(out)
    for _ in range(600):  # wait until quantization has checkpointed a layer
        if (work / "quantize-1").is_dir() and any((work / "quantize-1").iterdir()):
            break
        if process.poll() is not None:
            pytest.fail(process.stderr.read())
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    lines = stderr.strip().splitlines()
    assert lines == ["diffpress compress: interrupted; no output was written; rerun with --resume to continue from "
                     "its checkpoints"]
    assert not out.exists() and not staging_path(out).exists() and work.is_dir()


# ---------------------------------------------------------------- numeric faults

import tiny_models  # noqa: E402
import torch  # noqa: E402

from diffpress.compression.swap import quantize_  # noqa: E402
from diffpress.numerics import NumericError, nonfinite_guard  # noqa: E402


def test_a_nan_weight_is_named_before_quantizing():
    model, _ = tiny_models.build("pixart")
    with torch.no_grad():
        model.transformer_blocks[0].attn1.to_k.weight[3, 5] = float("nan")
    with pytest.raises(NumericError, match=r"layer 'transformer_blocks.0.attn1.to_k': the weight holds 1 NaN"):
        quantize_(model, preset("w8a16-int8"))


def test_a_nan_during_sampling_is_named_with_its_layer_and_timestep():
    model, inputs = tiny_models.build("pixart")
    with torch.no_grad():
        model.transformer_blocks[0].ff.net[2].bias[0] = float("nan")
    with pytest.raises(NumericError) as caught, nonfinite_guard(model, "sampling"):
        tiny_models.run(model, inputs)
    message = str(caught.value)
    assert "\n" not in message
    assert f"at timestep {float(inputs['timestep'].flatten()[0]):g}" in message
    assert "first produced by layer 'transformer_blocks.0.ff.net.2' (Linear" in message


def test_an_fp16_overflow_is_named_as_one():
    model, inputs = tiny_models.build("pixart")
    model = model.half()
    inputs = {k: v.half() if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        model.transformer_blocks[0].ff.net[2].weight.fill_(6e4)
    with pytest.raises(NumericError, match=r"'transformer_blocks.0.ff.net.2' \(Linear, \d+ Inf in its output\): "
                                           r"fp16 overflow"), nonfinite_guard(model):
        tiny_models.run(model, inputs)


def test_the_guard_costs_nothing_when_outputs_are_finite():
    model, inputs = tiny_models.build("pixart")
    expected = tiny_models.run(model, inputs)
    with nonfinite_guard(model):
        assert torch.equal(tiny_models.run(model, inputs), expected)
    assert not model._forward_hooks and not model._forward_pre_hooks


@pytest.mark.parametrize("name", ["w8a16-int8", "w4a16-int4", "w4a16-fp4", "w8a8-int8", "w8a8-fp8", "w8a16-fp8"])
def test_an_all_zero_layer_and_zero_activations_do_not_divide_by_zero(name):
    model, inputs = tiny_models.build("pixart")
    layer = model.transformer_blocks[0].attn1.to_q
    with torch.no_grad():
        layer.weight.zero_()
    quantize_(model, preset(name))
    quantized = model.transformer_blocks[0].attn1.to_q
    assert all(torch.isfinite(t.float()).all() for t in quantized.state_dict().values() if t.is_floating_point())
    zeros = torch.zeros(2, 3, quantized.in_features)
    assert torch.equal(quantized(zeros), layer.bias.expand(2, 3, -1) if layer.bias is not None else zeros[..., :0])
    assert torch.isfinite(tiny_models.run(model, inputs)).all()
