"""Several processes share calibration and sensitivity work through torch.distributed.

    torchrun --nproc-per-node 2 -m diffpress sensitivity builtin:digits --out report/

Every rank runs the same command on the same model. Work is split by index -- calibration batch j and
sensitivity layer i go to rank j % N and i % N -- and the parts are gathered and merged in a fixed order
on every rank, so every rank ends with the same calibration set and the same report, and only rank 0
writes files. Results equal one process's:

- sensitivity: each (layer, candidate) score is computed by one rank exactly as one process computes it
  (same float model, same calibration set, same replayed calls), so the report and the allocation are
  identical;
- calibration: batch j is generated with seed `seed + j` whichever rank runs it; statistics merge
  associatively (max/min/counts exactly; float64 sums in rank order, so equal to one process up to
  float summation order and bit-identical between runs with the same number of processes); the
  reservoir keeps, per bucket, the calls with the smallest keys of a hash of (seed, call id), a choice
  that does not depend on which process saw the call (calibration.reservoir).

The process group starts on first use when torchrun's environment (WORLD_SIZE > 1) is set: NCCL when
CUDA is available (each rank on cuda:LOCAL_RANK), else gloo. Without it, everything is one process.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def _wanted() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available()


def ensure_initialized() -> None:
    """Start the process group from torchrun's environment (once); nothing in a single process."""
    if _wanted() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend)


def active() -> bool:
    ensure_initialized()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """The process that writes files and prints summaries (rank 0, or the only process)."""
    return rank() == 0


def mine(index: int) -> bool:
    """Whether this process does work item `index` (round robin over the ranks)."""
    return index % world_size() == rank()


def gather(value) -> list:
    """`value` of every rank, in rank order, on every rank (a list of one in a single process). Objects are
    pickled (gloo carries them on the CPU)."""
    if not active():
        return [value]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def merged_dicts(part: dict, order) -> dict:
    """The union of every rank's `part`, keyed in `order` (the keys every rank knows, in one-process order)."""
    union = {}
    for piece in gather(part):
        union.update(piece)
    return {key: union[key] for key in order if key in union}
