"""Peak memory of one mask-learning iteration against the number of sampling steps (CPU).

    python bench/prune_memory.py [--model builtin:digits] [--steps 10 25 50] [--batch-size 4]

Each (steps, timestep checkpointing on/off) runs in a fresh process: it loads the model, computes
resets the kernel's peak-RSS counter (/proc/self/clear_refs), then computes the float targets and
runs one learning iteration (sampling with grad, backward), and reports the peak resident memory
above the resident memory before it (VmHWM - VmRSS, Linux; the same one-time allocations are in
every row). With checkpointing the iteration keeps
one denoiser step's graph plus the latents, so the figure should stay flat in the steps; without
it every step's graph is alive at once.

Writes bench/results/prune-memory-NAME.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def one_iteration(model: str, steps: int, checkpoint: bool, batch_size: int) -> dict:
    import time

    import torch

    from diffpress import checkpoint as checkpoints
    from diffpress.calibration import find_denoiser
    from diffpress.pruning import LearnOptions, find_groups
    from diffpress.pruning.learn import learn_mask
    from diffpress.pruning.select import PruneBudget
    from diffpress.subject import Subject

    torch.set_num_threads(2)
    subject = Subject.open(model)
    pipe = checkpoints.load_pipeline(model)
    denoiser = find_denoiser(pipe)
    groups = find_groups(denoiser)
    items = list(subject.default_items)[:batch_size]
    _, guidance = subject.sampling_defaults
    from diffpress.pruning.trajectory import Trajectory

    trajectory = Trajectory(steps, guidance)
    total = sum(p.numel() for p in denoiser.parameters())
    options = LearnOptions(iterations=1, batch_size=batch_size, samples=batch_size, checkpoint_steps=checkpoint)
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is what is in use
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    learn_mask(pipe, denoiser, groups, items, trajectory, PruneBudget(0.8), total, options)
    seconds = time.perf_counter() - started
    return {"steps": steps, "timestep_checkpointing": checkpoint, "batch_size": batch_size,
            "peak_above_baseline_mib": round((_status_kib("VmHWM") - before) / 1024, 1),
            "iteration_seconds_incl_targets": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:digits")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--child", nargs=3, metavar=("STEPS", "CHECKPOINT", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        steps, checkpoint, batch = args.child
        print(json.dumps(one_iteration(args.model, int(steps), checkpoint == "1", int(batch))))
        return
    rows = []
    for checkpoint in (True, False):
        for steps in args.steps:
            output = subprocess.run([sys.executable, __file__, "--model", args.model, "--child", str(steps),
                                     "1" if checkpoint else "0", str(args.batch_size)],
                                    capture_output=True, text=True, check=True).stdout
            row = json.loads(output.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"benchmark": "prune-memory", "model": args.model, "date": date.today().isoformat(), "commit": commit,
              "machine": f"{platform.machine()} CPU, torch {torch.__version__}",
              "command": "python bench/prune_memory.py " + " ".join(sys.argv[1:]), "rows": rows}
    name = args.model.split(":")[-1]
    out = Path(__file__).parent / "results" / f"prune-memory-{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
