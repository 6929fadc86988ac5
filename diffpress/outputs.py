"""Output directories that appear whole or not at all, one writer at a time, with the space checked first.

A run that writes DIR stages everything in the hidden sibling `.DIR.diffpress-partial` and publishes it
with one rename (an atomic exchange when DIR is being replaced). The staging directory is locked
(`flock`) for the whole run: a second run writing the same DIR fails at once with `OutputBusyError`
instead of racing, and the kernel drops the lock when a run dies, even by SIGKILL, so the next run
finds the stale staging directory unlocked, empties it and goes on. A write that runs out of space or
permission ends in one line naming the path and the bytes needed, and nothing is left behind.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import distributed
from .errors import InputError, OutputBusyError, OutputExistsError, OutputWriteError

STAGING_SUFFIX = ".diffpress-partial"
SPACE_MARGIN = 1.05  # free space wanted beyond the expected bytes (filesystem overhead, metadata)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def staging_path(out: Path) -> Path:
    return out.parent / f".{out.name}{STAGING_SUFFIX}"


def check_output(out: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Fail early (before any work) if `out` exists without overwrite or would touch an input."""
    out = Path(out).expanduser().resolve()
    for source in inputs:
        source = Path(source).expanduser().resolve()
        if out == source or source in out.parents or out in source.parents:
            raise InputError(f"--out {out} overlaps the input {source}; the input is never modified")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it")


@dataclass
class _Reservation:
    out: Path
    staging: Path
    descriptor: int


_HELD: dict[Path, _Reservation] = {}


@contextlib.contextmanager
def reserved_output(out: Path, overwrite: bool, inputs: tuple[Path, ...] = (),
                    expected_bytes: int = 0) -> Iterator[Path]:
    """Hold `out` for the whole `with` block: check it, take its lock, empty a stale staging directory
    left by a killed run, and check the free space against `expected_bytes`. Yields the staging
    directory; `atomic_directory(out)` inside the block writes there. On leaving, the staging directory
    is removed unless it was published. Re-entering for an `out` this process holds reuses the hold."""
    out = Path(out).expanduser().resolve()
    if out in _HELD:
        yield _HELD[out].staging
        return
    check_output(out, overwrite, inputs)
    if not distributed.is_main():  # several processes: rank 0 writes (the others check, then compute alongside)
        yield staging_path(out)
        return
    reservation = _reserve(out)
    _HELD[out] = reservation
    try:
        check_free_space(out.parent, expected_bytes, out)
        yield reservation.staging
    finally:
        del _HELD[out]
        if _same_directory(reservation.staging, reservation.descriptor):  # not published: remove what was staged
            shutil.rmtree(reservation.staging, ignore_errors=True)
        os.close(reservation.descriptor)


def _reserve(out: Path) -> _Reservation:
    staging = staging_path(out)
    with writable(out.parent, out):
        out.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            staging.mkdir(exist_ok=True)
            descriptor = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                raise OutputBusyError(f"{out}: another diffpress run is writing it (its staging directory "
                                      f"{staging} is locked); wait for it or choose another --out") from None
            if _same_directory(staging, descriptor):
                _empty(staging)  # what a killed run left
                return _Reservation(out, staging, descriptor)
            os.close(descriptor)  # the holder published or removed it between our mkdir and flock: retry
    raise OutputBusyError(f"{out}: its staging directory {staging} keeps changing; is another run writing it?")


def _same_directory(path: Path, descriptor: int) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    there = os.fstat(descriptor)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _empty(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextlib.contextmanager
def atomic_directory(out: Path, overwrite: bool, expected_bytes: int = 0) -> Iterator[Path]:
    """Yield a staging directory that becomes `out` only if the block finishes (within a reservation of
    `out`, its staging directory; otherwise one is reserved for the block)."""
    out = Path(out).expanduser().resolve()
    with reserved_output(out, overwrite, expected_bytes=expected_bytes) as staging:
        with writable(staging, out, expected_bytes):
            yield staging
            _fsync_tree(staging)
        _publish(staging, out, overwrite)


def _publish(staging: Path, out: Path, overwrite: bool) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    if not overwrite:
        raise OutputExistsError(f"{out} appeared while writing; pass --overwrite to replace it")
    if _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now the previous output
        return
    retired = out.parent / f".{out.name}.diffpress-replaced"
    shutil.rmtree(retired, ignore_errors=True)
    os.rename(out, retired)
    os.rename(staging, out)
    shutil.rmtree(retired, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_cwd, exchange = -100, 2
    return renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), exchange) == 0


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def check_free_space(directory: Path, expected_bytes: int, out: Path) -> None:
    """OutputWriteError naming the bytes when `directory`'s filesystem cannot hold `expected_bytes`."""
    if expected_bytes <= 0:
        return
    free = shutil.disk_usage(directory).free
    if free < expected_bytes * SPACE_MARGIN:
        raise OutputWriteError(f"{out}: not enough free space on {directory}: the output needs about "
                               f"{expected_bytes:,} bytes, {free:,} are free")


@contextlib.contextmanager
def writable(path: Path, out: Path, expected_bytes: int = 0) -> Iterator[None]:
    """Turn a full disk or a permission error while writing under `path` into one line naming it."""
    try:
        yield
    except OSError as error:
        if error.errno in _NO_SPACE:
            needed = f"; the output needs about {expected_bytes:,} bytes" if expected_bytes else ""
            free = shutil.disk_usage(path if path.exists() else out.parent).free
            raise OutputWriteError(f"{out}: no space left while writing {error.filename or _newest_file(path)} "
                                   f"({free:,} bytes free{needed}); nothing was written") from None
        if error.errno in _NOT_WRITABLE:
            raise OutputWriteError(f"{out}: cannot write {error.filename or path} ({error.strerror}); "
                                   "choose another --out") from None
        raise


def _newest_file(path: Path) -> Path:
    """The file written last under `path` (write errors carry no file name)."""
    if not path.is_dir():
        return path
    files = [p for p in path.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime_ns) if files else path


def write_file_atomically(path: Path, write) -> None:
    """Call `write(temporary)` then rename the temporary sibling onto `path`; a killed run's temporary
    (named after its dead process) is removed by the next write."""
    _remove_dead_temporaries(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with writable(path.parent, path):
            write(temporary)
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _remove_dead_temporaries(path: Path) -> None:
    for leftover in path.parent.glob(f".{path.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
