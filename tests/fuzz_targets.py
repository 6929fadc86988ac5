"""Fuzz targets for every reader of user files (tests/test_fuzz.py runs a few hundred cases per reader,
bench/fuzz.py tens of thousands).

A target owns a valid seed input (built once from a tiny model), a way to mutate it from a stream of
random choices, and the reader under test. The property, checked by `run_case`: the reader returns, or
raises a DiffpressError subclass whose message is one line; never another exception, never more than
`TIME_LIMIT` seconds, and it writes nothing.
"""
from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import diffpress
import tiny_models
from diffpress.errors import DiffpressError

TIME_LIMIT = 2.0

# YAML that must be refused (or read as plain data), never executed or expanded without bound
HOSTILE_YAML = [
    "!!python/object/apply:os.system ['echo pwned']",
    "default: !!python/object/new:list [[1, 2]]",
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
    "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
    "default: [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n",
    "default: {format: int8, granularity: !!binary aGVsbG8=}",
    "\x00\x01\x02",
    "default: [" * 200,
    "prune: [{remove_blocks: 3, method: oneshot, recover_steps: 1e309}]",
]


@dataclass
class Target:
    name: str
    seed: Callable[[Path], Path]  # writes a valid input under the directory, returns the path to read
    mutate: Callable[[Path, random.Random], None]  # mutates that input in place
    read: Callable[[Path], object]


def _flip_bytes(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if not data:
        return
    choice = rng.randrange(6)
    if choice == 0:  # flip a few bytes
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice == 1:  # truncate
        del data[rng.randrange(len(data)):]
    elif choice == 2:  # a lying header length
        data[:8] = struct.pack("<Q", rng.choice([0, 1, 2 ** 63, 2 ** 64 - 1, len(data), rng.randrange(2 ** 32)]))
    elif choice == 3:  # append garbage
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif choice == 4:  # duplicate a slice
        start = rng.randrange(len(data))
        data[start:start] = data[start:start + rng.randint(1, 64)]
    else:
        _mutate_safetensors_header(data, rng)
    path.write_bytes(bytes(data))


def _mutate_safetensors_header(data: bytearray, rng: random.Random) -> None:
    """Rewrite one field of the JSON header (shape, dtype, offsets, metadata) and keep the framing valid."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
    except Exception:  # already broken: flip instead
        data[rng.randrange(len(data))] ^= 0xFF
        return
    names = [k for k in header if k != "__metadata__"]
    if names and rng.random() < 0.8:
        entry = header[rng.choice(names)]
        field = rng.choice(["dtype", "shape", "data_offsets"])
        entry[field] = _json_value(rng, field, entry.get(field))
    else:
        meta = header.setdefault("__metadata__", {})
        key = rng.choice(list(meta) or ["format"])
        meta[key] = rng.choice(["", "{", "[]", "{}", '{"num_buckets": -1}', "diffpress-calibration", "null",
                                json.dumps(_json_value(rng, key, None))])
    encoded = json.dumps(header).encode()
    data[:8 + length] = struct.pack("<Q", len(encoded)) + encoded


def _json_value(rng: random.Random, field: str, current):
    options = [None, True, -1, 0, 2 ** 62, 1.5, float("nan") if rng.random() < 0.1 else 3, "x", "F16", "I8", "U8",
               "BOOL", [], [0], [-1, 4], [2 ** 40, 2 ** 40], [0, 2 ** 60], {"a": 1}, "../../etc/passwd"]
    if isinstance(current, list) and current and rng.random() < 0.5:
        mutated = list(current)
        mutated[rng.randrange(len(mutated))] = rng.choice([0, -1, 1, 7, 2 ** 31, None, "1"])
        return mutated
    return rng.choice(options)


def _mutate_json(path: Path, rng: random.Random) -> None:
    try:
        data = json.loads(path.read_text())
    except Exception:
        _flip_bytes(path, rng)
        return
    if rng.random() < 0.15:
        path.write_text(rng.choice(["", "[]", "null", "{", '"text"', "1e400", "{}", "[" * 5000]))
        return
    _mutate_tree(data, rng, depth=0)
    path.write_text(json.dumps(data))


def _mutate_tree(node, rng: random.Random, depth: int) -> None:
    """Replace, delete or add one entry somewhere in a JSON tree."""
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        child = node[key]
        action = rng.random()
        if action < 0.3 or not isinstance(child, (dict, list)) or depth > 6:
            if action < 0.15:
                del node[key]
            else:
                node[key] = _json_value(rng, key, child)
        else:
            _mutate_tree(child, rng, depth + 1)
        if rng.random() < 0.1:
            node[rng.choice(["extra", "version", "sha256", "structure", "../x"])] = _json_value(rng, "", None)
    elif isinstance(node, list) and node:
        index = rng.randrange(len(node))
        if isinstance(node[index], (dict, list)) and rng.random() < 0.6:
            _mutate_tree(node[index], rng, depth + 1)
        else:
            node[index] = _json_value(rng, "", node[index])


# ------------------------------------------------------------------ seeds (built once, copied per case)

_CACHE: dict[str, Path] = {}


def _tiny_calibration(directory: Path) -> Path:
    model, inputs = tiny_models.build("pixart")
    calibration = diffpress.calibrate(model, forward_loop=tiny_models.timestep_loop(inputs, [900, 100]), buckets=2,
                                      reservoir_size=1, progress=False)
    return calibration.save(directory / "calibration.safetensors")


def _tiny_compressed(directory: Path) -> Path:
    model, _ = tiny_models.build("pixart")
    diffpress.quantize_(model, diffpress.QuantSpec("int8", "per_channel"))
    out = directory / "compressed"
    diffpress.save(model, out)
    return out


def _cached(name: str, build: Callable[[Path], Path], scratch: Path) -> Path:
    if name not in _CACHE:
        home = scratch / f"seed-{name}"
        home.mkdir(parents=True, exist_ok=True)
        _CACHE[name] = build(home)
    return _CACHE[name]


def _copy(source: Path, directory: Path) -> Path:
    target = directory / source.name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
        for shard in source.parent.glob(source.name + ".reservoir-*"):
            shutil.copy2(shard, directory / shard.name)
    return target


def _resign(root: Path) -> None:
    """Recompute the manifest's checksums, as a crafted file would come (so the reader goes past them)."""
    from diffpress.io import MANIFEST_NAME, write_manifest

    manifest_path = root / MANIFEST_NAME
    try:
        component = json.loads(manifest_path.read_text()).get("denoiser_component")
    except Exception:
        component = None
    manifest_path.unlink(missing_ok=True)
    write_manifest(root, component if isinstance(component, str) else None)


def targets(scratch: Path) -> list[Target]:
    def recipe_seed(directory: Path) -> Path:
        path = directory / "recipe.yaml"
        path.write_text("prune:\n  - {remove_blocks: 2, method: oneshot}\ndefault:\n  weight_format: int4\n"
                        "  granularity: per_group\n  group_size: 64\n  act_format: int8\nrules:\n"
                        "  - {match: 'mid_block.*', plan: {weight_format: int8, granularity: per_channel}}\n"
                        "  - {match: '*.to_out.*', plan: skip}\n")
        return path

    def recipe_mutate(path: Path, rng: random.Random) -> None:
        if rng.random() < 0.15:
            path.write_text(rng.choice(HOSTILE_YAML))
            return
        text = path.read_text()
        pieces = ["{", "}", "[", "]", ":", "-", "&a", "*a", "!!str", "\n  ", "'", '"', "null", "1e999", "-3",
                  "format", "int4", "rules", "prune", "default", "target_params", "0", "\t", "\x00", "yes"]
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text) + 1)
            if rng.random() < 0.5:
                text = text[:at] + rng.choice(pieces) + text[at:]
            else:
                text = text[:at] + text[at + rng.randint(1, 8):]
        path.write_text(text)

    def compressed_mutate(root: Path, rng: random.Random) -> None:
        files = sorted(p for p in root.rglob("*") if p.is_file())
        victim = rng.choice(files)
        (_mutate_json if victim.suffix == ".json" else _flip_bytes)(victim, rng)
        if rng.random() < 0.8:
            _resign(root)

    def structure_seed(directory: Path) -> Path:
        path = directory / "structure.json"
        model, _ = tiny_models.build("pixart")
        from diffpress.pruning import find_groups

        group = find_groups(model)[0]
        path.write_text(json.dumps({"version": 2, "groups": {group.name: {"kind": group.kind.value,
                                                                         "count": group.count, "kept": 1}},
                                    "removed": {"transformer_blocks.1": {
                                        "kind": "BasicTransformerBlock", "parameters": ["hidden_states"],
                                        "returns": ["hidden_states"], "container": "tensor"}}}))
        return path

    def structure_read(path: Path):
        from diffpress.pruning import apply_structure

        model, _ = tiny_models.build("pixart")
        try:
            structure = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None  # not JSON: the config reader's concern, not this one's
        apply_structure(model, structure)

    return [
        Target("recipe", recipe_seed, recipe_mutate, lambda p: diffpress.Plan.load(p)),
        Target("calibration", lambda d: _copy(_cached("calibration", _tiny_calibration, scratch), d),
               _flip_bytes, lambda p: diffpress.CalibrationSet.load(p)),
        Target("compressed-model", lambda d: _copy(_cached("compressed", _tiny_compressed, scratch), d),
               compressed_mutate, lambda p: diffpress.load(p)),
        Target("pruning-structure", structure_seed, _mutate_json, structure_read),
    ]


def run_case(target: Target, directory: Path, rng: random.Random) -> str:
    """One case: a fresh seed copy, mutated, read. Returns 'ok' or the error's message; AssertionError when
    the property fails."""
    directory.mkdir(parents=True, exist_ok=True)
    path = target.seed(directory)
    target.mutate(path, rng)
    before = sorted(p.relative_to(directory) for p in directory.rglob("*"))
    started = time.perf_counter()
    try:
        with _deadline(TIME_LIMIT * 5):
            target.read(path)
        result = "ok"
    except DiffpressError as error:
        message = str(error)
        assert message and "\n" not in message.strip(), f"{target.name}: multi-line message {message!r}"
        result = message
    except Exception as error:  # the property: nothing else may escape
        raise AssertionError(f"{target.name}: {type(error).__name__}: {error}") from error
    seconds = time.perf_counter() - started
    assert seconds < TIME_LIMIT, f"{target.name}: took {seconds:.1f} s"
    after = sorted(p.relative_to(directory) for p in directory.rglob("*"))
    assert after == before, f"{target.name}: the reader wrote {set(after) - set(before)}"
    return result


class _Hang(BaseException):
    pass


@contextlib.contextmanager
def _deadline(seconds: float):
    """SIGALRM past `seconds` (main thread, Unix): a hang becomes a failure instead of a stuck run."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Hang:
        raise AssertionError(f"hang: no answer in {seconds:g} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fresh_case_dir(root: Path, index: int) -> Path:
    case = root / f"case-{index}"
    if case.exists():
        shutil.rmtree(case)
    return case


def seeded(seed: int) -> random.Random:
    torch.manual_seed(seed)
    return random.Random(seed)
