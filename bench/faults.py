"""Fault injection: kill real `diffpress` runs and check that nothing partial is ever left (CPU).

    python bench/faults.py [--kills 20] [--interrupts 5] [--races 3] [--seed 0] [--command compress|prune]

One uninterrupted run gives the reference output and its duration T. Then:
- kills: each run is killed with SIGKILL, a third of them at a random moment in the calibration window
  (between the reference run's start-up and its first checkpointed layer), a third at a random moment
  in (0, T), and a third just after the staging directory gets its first file (saving); the phase is
  read from what the run had written. After each kill: no directory at --out (or, for a kill that came
  after the publishing rename, the whole output, bit-identical to the reference),
  the input's files unchanged (sha256), and the next run (alternately a plain rerun and --resume)
  succeeds with output bit-identical to the reference and no hidden leftovers beside --out;
- interrupts: SIGINT at a random moment: exit status 130, a one-line message, nothing at --out and no
  staging directory;
- races: two runs with the same --out started together: one succeeds (bit-identical output), the other
  exits 2 with one line, and no mixed directory;
- disk: --out on a 1 MiB tmpfs and on a read-only tmpfs (needs root): exit 2, one line naming the path,
  nothing left.
Writes bench/results/faults-COMMAND.json (compress: faults.json).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "builtin:digits"
COMMANDS = {
    "compress": ["compress", MODEL, "--preset", "w4a8-int", "--calib-samples", "32", "--calib-steps", "10"],
    "prune": ["prune", MODEL, "--target-params", "0.8", "--iterations", "40", "--learn-samples", "4",
              "--batch-size", "2", "--steps", "10"],
}


def tree_hashes(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def input_root() -> Path:
    sys.path.insert(0, str(ROOT))
    from diffpress.checkpoint import resolve

    return resolve(MODEL).root


def hidden_beside(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def start(command: list[str], out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # SIGINT as a terminal's Ctrl-C delivers it: a benchmark started in the background inherits it ignored
    return subprocess.Popen([sys.executable, "-m", "diffpress", *command, "--out", str(out), "--quiet",
                             "--checkpoint-every", "0", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def run(command: list[str], out: Path, *extra: str) -> tuple[int, str, float]:
    began = time.perf_counter()
    process = start(command, out, *extra)
    _, stderr = process.communicate()
    return process.returncode, stderr, time.perf_counter() - began


def phase(out: Path) -> str:
    """What the killed run was doing, from what it had written."""
    staging = out.parent / f".{out.name}.diffpress-partial"
    work = out.parent / f".{out.name}.diffpress-work"
    if staging.is_dir() and any(staging.iterdir()):
        return "saving"
    stages = sorted(p.name for p in work.iterdir() if p.is_dir() and any(p.iterdir())) if work.is_dir() else []
    if any(name.startswith(("quantize", "mask-learning")) for name in stages):
        return "quantization" if any(n.startswith("quantize") for n in stages) else "mask learning"
    if any(name.startswith("calibration") for name in stages):
        return "calibration (after a checkpoint)"
    return "start-up or calibration"


def first_progress_seconds(command, root: Path) -> float:
    """When a run first has a checkpointed quantized layer or mask-learning state: calibration ends before."""
    out = root / "timing"
    process, began = start(command, out), time.perf_counter()
    work = out.parent / f".{out.name}.diffpress-work"
    while process.poll() is None:
        if any(p.is_dir() and p.name.startswith(("quantize", "mask-learning")) and any(p.iterdir())
               for p in (work.iterdir() if work.is_dir() else [])):
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - began
    process.kill()
    process.wait()
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return seconds


def wait_for_saving(process: subprocess.Popen, out: Path, rng) -> bool:
    """Wait until the staging directory holds a file, then a moment more; False if the run ended first."""
    staging = out.parent / f".{out.name}.diffpress-partial"
    while process.poll() is None:
        if staging.is_dir() and any(staging.rglob("*")):
            time.sleep(rng.uniform(0, 0.05))
            return process.poll() is None
        time.sleep(0.002)
    return False


def kills(command, count, duration, calibration_ends, reference, input_hashes, rng, root: Path) -> dict:
    records = []
    for index in range(count):
        out = root / f"kill-{index}"
        how = ("calibration window", "uniform", "on saving")[index % 3]
        moment = rng.uniform(0.3, 1.0) * calibration_ends if how == "calibration window" \
            else rng.uniform(0.02, 0.98) * duration
        process = start(command, out)
        if how == "on saving":
            finished_first = not wait_for_saving(process, out, rng)
        else:
            try:
                process.wait(timeout=moment)
                finished_first = True
            except subprocess.TimeoutExpired:
                finished_first = False
        if not finished_first:
            where = phase(out)
            process.send_signal(signal.SIGKILL)
            process.wait()
            if out.exists():  # killed after the rename that publishes it, before the process exited
                where = "after publishing"
        # an output at --out after a kill is partial unless it is the whole, bit-identical output
        record = {"schedule": how, "moment_s": None if how == "on saving" else round(moment, 2),
                  "phase": "finished before the kill" if finished_first else where,
                  "partial_output": out.exists() and tree_hashes(out) != reference,
                  "input_changed": tree_hashes(input_root()) != input_hashes}
        shutil.rmtree(out, ignore_errors=True)
        mode = "--resume" if index % 2 else "plain"
        code, stderr, seconds = run(command, out, *(["--resume"] if mode == "--resume" else []))
        if code and mode == "--resume" and "no interrupted run" in stderr:  # killed before its work dir existed
            mode = "plain (nothing to resume)"
            code, stderr, seconds = run(command, out)
        record.update({"next_run": mode, "next_run_status": code, "next_run_s": round(seconds, 1),
                       "next_run_identical": code == 0 and tree_hashes(out) == reference,
                       "leftovers_after_next_run": hidden_beside(out)})
        if code:
            record["next_run_error"] = stderr.strip()[-300:]
        records.append(record)
        print(f"kill {index + 1}/{count} ({how}, {record['phase']}): next {mode} -> "
              f"{'identical' if record['next_run_identical'] else 'DIFFERENT'} in {seconds:.1f} s", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return {"kills": len(records),
            "killed_in": {p: sum(r["phase"] == p for r in records) for p in sorted({r["phase"] for r in records})},
            "partial_outputs": sum(r["partial_output"] for r in records),
            "inputs_changed": sum(r["input_changed"] for r in records),
            "next_runs_failed": sum(r["next_run_status"] != 0 for r in records),
            "next_runs_not_identical": sum(not r["next_run_identical"] for r in records),
            "leftovers_after_next_run": sum(bool(r["leftovers_after_next_run"]) for r in records),
            "resumed": sum(r["next_run"] == "--resume" for r in records),
            "records": records}


def interrupts(command, count, duration, rng, root: Path) -> dict:
    records = []
    for index in range(count):
        out = root / f"interrupt-{index}"
        moment = rng.uniform(0.1, 0.9) * duration
        process = start(command, out)
        try:
            process.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
        _, stderr = process.communicate()
        lines = stderr.strip().splitlines()
        records.append({"moment_s": round(moment, 2), "status": process.returncode, "stderr_lines": len(lines),
                        "message": lines[-1] if lines else "", "output_exists": out.exists(),
                        "staging_left": (out.parent / f".{out.name}.diffpress-partial").exists()})
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.parent / f".{out.name}.diffpress-work", ignore_errors=True)
    interrupted = [r for r in records if r["status"] != 0]
    return {"interrupts": len(records), "exit_130": sum(r["status"] == 130 for r in interrupted),
            "finished_before_the_signal": len(records) - len(interrupted),
            "one_line_messages": sum(r["stderr_lines"] == 1 for r in interrupted),
            "partial_outputs": sum(r["output_exists"] or r["staging_left"] for r in interrupted), "records": records}


def races(command, count, reference, root: Path) -> dict:
    records = []
    for index in range(count):
        out = root / f"race-{index}"
        processes = [start(command, out) for _ in range(2)]
        results = [(p.wait(), p.stderr.read().strip()) for p in processes]
        codes = sorted(code for code, _ in results)
        loser = next((err for code, err in results if code), "")
        records.append({"statuses": codes, "loser_message": loser.splitlines()[-1] if loser else "",
                        "output_identical": out.exists() and tree_hashes(out) == reference,
                        "leftovers": hidden_beside(out)})
        shutil.rmtree(out, ignore_errors=True)
    return {"races": len(records), "one_won": sum(r["statuses"] == [0, 2] for r in records),
            "mixed_or_partial_outputs": sum(not r["output_identical"] for r in records),
            "leftovers": sum(bool(r["leftovers"]) for r in records), "records": records}


def disk(command, root: Path) -> dict:
    if os.geteuid() != 0:
        return {"skipped": "needs root to mount a tmpfs"}
    results = {}
    for name, options in (("1 MiB tmpfs", "size=1m"), ("read-only tmpfs", "ro,size=1m")):
        mount = root / name.replace(" ", "-")
        mount.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)]).returncode:
            return {"skipped": "mount failed"}
        try:
            code, stderr, seconds = run(command, mount / "out")
            lines = stderr.strip().splitlines()
            results[name] = {"status": code, "stderr_lines": len(lines), "message": lines[-1] if lines else "",
                             "seconds": round(seconds, 1), "left_behind": sorted(p.name for p in mount.iterdir())}
        finally:
            subprocess.run(["umount", str(mount)])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--command", choices=sorted(COMMANDS), default="compress")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--interrupts", type=int, default=5)
    parser.add_argument("--races", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    command, rng = COMMANDS[args.command], random.Random(args.seed)
    input_hashes = tree_hashes(input_root())
    with tempfile.TemporaryDirectory(prefix="diffpress-faults-") as temporary:
        root = Path(temporary)
        code, stderr, duration = run(command, root / "reference")
        if code:
            raise SystemExit(f"the uninterrupted run failed: {stderr}")
        reference = tree_hashes(root / "reference")
        calibration_ends = first_progress_seconds(command, root)
        print(f"uninterrupted run: {duration:.1f} s, {len(reference)} files; first layer checkpointed after "
              f"{calibration_ends:.1f} s", flush=True)
        result = {"command": "diffpress " + " ".join(command) + " --out OUT --quiet --checkpoint-every 0",
                  "uninterrupted_s": round(duration, 1), "first_layer_checkpoint_s": round(calibration_ends, 1),
                  "sigkill": kills(command, args.kills, duration, calibration_ends, reference, input_hashes, rng,
                                   root),
                  "sigint": interrupts(command, args.interrupts, duration, rng, root),
                  "concurrent_runs": races(command, args.races, reference, root),
                  "disk": disk(command, root)}
    result.update({"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                   "threads": 1, "how": "python bench/faults.py " + " ".join(sys.argv[1:])})
    name = "faults.json" if args.command == "compress" else f"faults-{args.command}.json"
    (ROOT / "bench" / "results" / name).write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: {m: v for m, v in result[k].items() if m != "records"} for k in ("sigkill", "sigint",
                                                                                  "concurrent_runs")}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
