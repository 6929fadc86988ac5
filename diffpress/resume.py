"""Checkpoints of the long stages, so that a killed run continues where it stopped (`--resume`).

A run that writes DIR keeps its progress in the hidden sibling `.DIR.diffpress-work/`: `run.json` (what
the run was started with: the model, the plan, the options and the size and time of every input file)
and one directory per stage, holding safetensors files whose metadata carries the JSON the stage needs.
A stage asks `stage(name)` for its `StageCheckpoints` and uses two kinds of record:

- pieces (`save` / `has` / `load`): one finished unit of work each, e.g. one quantized layer or one
  layer's sensitivity; a resumed run loads them instead of redoing them;
- snapshots (`snapshot_due` / `write_snapshot` / `latest_snapshot`): the whole state of a stage that
  runs in steps (calibration batches, mask-learning iterations), written at most every
  `every_seconds`, and never more often than keeps the writing under 5% of the stage's time (0: after
  every step, whatever it costs).

Every stage that checkpoints is deterministic given its inputs, so a resumed run gives a bit-identical
result. Outside a `checkpointing` block, `stage()` returns records that do nothing. The work directory
is removed when the run's output is published; a run started without `--resume` discards an old one.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import distributed
from .errors import InputError
from .outputs import write_file_atomically

WORK_SUFFIX = ".diffpress-work"
RUN_FILE = "run.json"
SNAPSHOT_POINTER = "latest.json"
DEFAULT_EVERY_SECONDS = 60.0
MAX_OVERHEAD = 0.05  # a snapshot waits until writing it costs at most this fraction of the time since the last


def work_path(out: Path) -> Path:
    out = Path(out).expanduser().resolve()
    return out.parent / f".{out.name}{WORK_SUFFIX}"


def input_fingerprint(root: Path | None) -> list:
    """(relative path, bytes, mtime_ns) of every file under `root`: a changed input is not resumed from."""
    if root is None:
        return []
    root = Path(root)
    return [[p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(root.rglob("*")) if p.is_file()]


@dataclass
class StageCheckpoints:
    """One stage's records in the work directory (`directory` None: checkpointing is off)."""

    directory: Path | None
    every_seconds: float = DEFAULT_EVERY_SECONDS
    _last_snapshot: float = field(default_factory=time.monotonic)
    _snapshot_cost: float = 0.0
    _serial: int = 0

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    # ---------------------------------------------------------------- pieces

    def _piece(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.enabled and self._piece(key).is_file()

    def save(self, key: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        if self.enabled:
            _write(self._piece(key), tensors, meta)

    def load(self, key: str) -> tuple[dict[str, torch.Tensor], dict]:
        return _read(self._piece(key))

    # ---------------------------------------------------------------- snapshots

    def snapshot_due(self) -> bool:
        if not self.enabled:
            return False
        if self.every_seconds == 0:  # after every step, whatever it costs
            return True
        waited = time.monotonic() - self._last_snapshot
        return waited >= max(self.every_seconds, self._snapshot_cost / MAX_OVERHEAD)

    def write_snapshot(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Write the stage's whole state; the previous snapshot stays valid until this one is complete."""
        if not self.enabled:
            return
        started = time.monotonic()
        self._serial += 1
        name = f"snapshot-{time.time_ns()}-{self._serial}.safetensors"
        _write(self.directory / name, tensors, meta)
        previous = self._pointer()
        write_file_atomically(self.directory / SNAPSHOT_POINTER,
                              lambda temporary: temporary.write_text(json.dumps({"file": name})))
        if previous and previous != name:
            (self.directory / previous).unlink(missing_ok=True)
        self._last_snapshot = time.monotonic()
        self._snapshot_cost = self._last_snapshot - started

    def latest_snapshot(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        name = self._pointer() if self.enabled else None
        return _read(self.directory / name) if name else None

    def _pointer(self) -> str | None:
        path = self.directory / SNAPSHOT_POINTER
        if not path.is_file():
            return None
        try:
            name = json.loads(path.read_text())["file"]
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}: unreadable checkpoint pointer; rerun without --resume") from None
        if not isinstance(name, str) or "/" in name or not name.startswith("snapshot-"):
            raise InputError(f"{path}: names {name!r}, not a snapshot of this stage; rerun without --resume")
        return name


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    metadata = {"meta": json.dumps(meta)}
    write_file_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from .checkpoint import check_safetensors

    check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("meta", "{}"))
            return {key: handle.get_tensor(key) for key in handle.keys()}, meta
    except (SafetensorError, ValueError) as error:
        raise InputError(f"{path}: unreadable checkpoint ({error}); rerun without --resume") from None


@dataclass
class WorkDir:
    """The active work directory. A stage that runs more than once in a run (calibration before and after
    pruning) gets one directory per run, numbered in the order the run asks for them."""

    root: Path
    every_seconds: float
    _asked: dict[str, int] = field(default_factory=dict)

    def stage(self, name: str) -> StageCheckpoints:
        self._asked[name] = self._asked.get(name, 0) + 1
        directory = self.root / f"{name}-{self._asked[name]}"
        directory.mkdir(parents=True, exist_ok=True)
        return StageCheckpoints(directory, self.every_seconds)


_ACTIVE: contextvars.ContextVar[WorkDir | None] = contextvars.ContextVar("diffpress_work_dir", default=None)


def stage(name: str) -> StageCheckpoints:
    """The checkpoints of stage `name` in the active work directory (records that do nothing if none)."""
    work = _ACTIVE.get()
    return work.stage(name) if work is not None else StageCheckpoints(None)


@contextlib.contextmanager
def checkpointing(root: Path, run: dict, resume: bool,
                  every_seconds: float | None = DEFAULT_EVERY_SECONDS) -> Iterator[WorkDir | None]:
    """Make `root` the work directory of the stages run inside the block. `run` describes the run (JSON);
    with `resume`, `root` must hold a run started with the same description, and its records are used.
    Without, an old work directory is discarded. every_seconds None: no checkpoints (with resume refused).
    On a clean exit the directory is removed; after an error or interrupt it stays for `--resume`."""
    if not distributed.is_main():  # several processes: rank 0 keeps the checkpoints
        yield None
        return
    if every_seconds is None:
        if resume:
            raise InputError("resume needs checkpoints; do not turn them off", "resume")
        yield None
        return
    if every_seconds < 0:
        raise InputError(f"checkpoint interval must be >= 0 seconds, got {every_seconds}", "checkpoint_every")
    root = Path(root)
    run = json.loads(json.dumps(run))  # the form it has once read back
    if resume:
        _check_resumable(root, run)
    else:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        write_file_atomically(root / RUN_FILE, lambda temporary: temporary.write_text(json.dumps(run, indent=1)))
    work = WorkDir(root, every_seconds)
    token = _ACTIVE.set(work)
    try:
        yield work
    except BaseException:
        if not has_progress(root):  # stopped before any checkpoint: nothing to resume, nothing left behind
            shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        _ACTIVE.reset(token)
    shutil.rmtree(root, ignore_errors=True)


def has_progress(root: Path) -> bool:
    """Whether `root` holds a checkpoint a resumed run would use."""
    return root.is_dir() and any(path.is_file() for stage in root.iterdir() if stage.is_dir() for path in stage.iterdir())


def _check_resumable(root: Path, run: dict) -> None:
    path = root / RUN_FILE
    if not path.is_file():
        raise InputError(f"--resume: no interrupted run to continue ({path} does not exist); run without --resume",
                         "resume")
    try:
        recorded = json.loads(path.read_text())
    except ValueError:
        raise InputError(f"--resume: {path} is unreadable; run without --resume", "resume") from None
    if not isinstance(recorded, dict):
        raise InputError(f"--resume: {path} is not a run description; run without --resume", "resume")
    differing = sorted(key for key in set(run) | set(recorded) if run.get(key) != recorded.get(key))
    if differing:
        raise InputError(f"--resume: the interrupted run was started with a different {', '.join(differing)}; "
                         "rerun it with the same arguments, or without --resume", "resume")
