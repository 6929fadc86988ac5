"""Input checkpoints: resolve a MODEL argument, validate its files, load its denoiser.

Accepted: a local diffusers model directory (config.json with a diffusers `_class_name`) or a
pipeline directory (model_index.json with a `unet` or `transformer` component). Weights must be
safetensors: pickled `.bin/.pt/.ckpt/.pth` weights are refused, because loading them can run
arbitrary code. Every safetensors file is checked (header parses, data fits the file) before use.
"""
from __future__ import annotations

import contextlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from torch.utils._python_dispatch import TorchDispatchMode

from .errors import DiffpressError, InputError, one_line

DENOISER_COMPONENTS = ("transformer", "unet")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_SAFETENSORS_STORAGE_DTYPES = {**_SAFETENSORS_DTYPES, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
                               "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
                               "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


@dataclass(frozen=True)
class Checkpoint:
    """A validated input: `root` is the directory given; `denoiser_dir` holds the denoiser."""

    root: Path
    is_pipeline: bool
    denoiser_component: str | None  # "unet"/"transformer" for pipelines, None for a bare model

    @property
    def denoiser_dir(self) -> Path:
        return self.root / self.denoiser_component if self.is_pipeline else self.root


def read_json(path: Path) -> dict:
    """A JSON object from `path`; InputError (one line) for anything else."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InputError(f"{path}: not readable JSON ({one_line(error)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON object")
    return data


class _SizeBudget(TorchDispatchMode):
    """Counts the bytes of the tensors a model's constructor creates; past `limit`, InputError (so a config that
    declares a huge model fails fast instead of looping or allocating)."""

    def __init__(self, limit: int, tensors: int, where: str) -> None:
        super().__init__()
        self.limit, self.tensors, self.where, self.used, self.count = limit, tensors, where, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default):
            self.used += output.numel() * output.element_size()
            self.count += 1
            if self.used > self.limit or self.count > self.tensors:
                raise InputError(f"{self.where}: the config declares a model far larger than its weights "
                                 f"(over {self.limit:,} bytes or {self.tensors:,} tensors for the stored weights)")
        return output


def model_from_config(cls, config: dict, where: str, weights_bytes: int | None = None,
                      weights_tensors: int | None = None):
    """`cls.from_config(config)` on the current (meta) device, for a config from a file: any failure is one
    InputError naming `where`; with `weights_bytes` and `weights_tensors`, a config declaring a model of more
    than 16x the stored bytes (+1 MiB) or 4x the stored tensors (+256) is refused while it is built."""
    budget = contextlib.nullcontext()
    if weights_bytes is not None:
        budget = _SizeBudget(16 * weights_bytes + (1 << 20), 4 * (weights_tensors or 0) + 256, where)
    try:
        with budget:
            return cls.from_config(config)
    except DiffpressError:
        raise
    except Exception as error:  # a hostile config reaches any constructor's code
        raise InputError(f"{where}: config.json does not build a {cls.__name__} ({type(error).__name__}: "
                         f"{one_line(error)})") from None


def _builtin_or_path(model: str | Path) -> Path:
    if isinstance(model, str) and model.startswith("builtin:"):
        from .zoo import builtin_path

        return builtin_path(model)
    return Path(model).expanduser()


def resolve(model: str | Path) -> Checkpoint:
    """Validate MODEL (a diffusers model or pipeline directory, or builtin:NAME) and say what it is."""
    root = _builtin_or_path(model)
    if not root.exists():
        raise InputError(f"{root}: no such file or directory")
    if not root.is_dir():
        raise InputError(f"{root}: expected a diffusers model or pipeline directory "
                         "(config.json or model_index.json inside), got a file")
    if (root / "model_index.json").is_file():
        checkpoint = Checkpoint(root, True, denoiser_component(root))
        for component in _pipeline_components(root):
            validate_weights(root / component, required=component == checkpoint.denoiser_component)
    elif (root / "config.json").is_file():
        checkpoint = Checkpoint(root, False, None)
        _model_class(root)
        validate_weights(root, required=True)
    else:
        raise InputError(f"{root}: not a diffusers model or pipeline directory "
                         "(neither config.json nor model_index.json found)")
    return checkpoint


def _pipeline_components(root: Path) -> list[str]:
    index = read_json(root / "model_index.json")
    return [name for name, value in index.items()
            if not name.startswith("_") and isinstance(value, list) and value[0] is not None and (root / name).is_dir()]


def denoiser_component(root: Path) -> str:
    """The `unet` or `transformer` component of a pipeline directory."""
    index = read_json(root / "model_index.json")
    for name in DENOISER_COMPONENTS:
        if isinstance(index.get(name), list) and index[name][0] is not None:
            if not (root / name / "config.json").is_file():
                raise InputError(f"{root / name}: the pipeline's {name} has no config.json")
            return name
    raise InputError(f"{root}: pipeline has no denoiser (no 'unet' or 'transformer' in model_index.json)")


def _model_class(model_dir: Path):
    import diffusers

    config = read_json(model_dir / "config.json")
    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.ModelMixin):
        raise InputError(f"{model_dir / 'config.json'}: _class_name {name!r} is not a diffusers model class")
    return cls


def validate_weights(component_dir: Path, required: bool) -> list[Path]:
    """Check a component's weight files; refuse pickled-only weights; return the safetensors files."""
    files = sorted(component_dir.glob("*.safetensors"))
    pickled = [p for p in component_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickled and not files:
        raise InputError(f"{component_dir}: only pickled weights ({', '.join(p.name for p in pickled)}); "
                         "diffpress reads safetensors only (pickle can run arbitrary code). Convert them "
                         "with safetensors.torch.save_file or save_pretrained(..., safe_serialization=True)")
    if required and not files:
        raise InputError(f"{component_dir}: no .safetensors weights found")
    for path in files:
        check_safetensors(path)
    return files


_ITEM_BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U8": 8,
              "U16": 16, "U32": 32, "U64": 64, "BOOL": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F4": 4,
              "F6_E2M3": 6, "F6_E3M2": 6}


def check_safetensors(path: Path) -> dict:
    """Parse the header and check it before anything is allocated: a JSON object of entries with a known dtype,
    a shape of non-negative integers, and data offsets that hold exactly that many bytes inside the file and
    cover the data region without overlap. Returns the header; InputError (one line) for anything else."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > size - 8:
                raise ValueError("header length beyond end of file")
            header = json.loads(handle.read(header_len))
    except (OSError, struct.error, ValueError, UnicodeDecodeError, RecursionError) as error:
        raise InputError(f"{path}: corrupt or truncated safetensors file ({one_line(error)})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header (not a JSON object)")
    _check_entries(path, header, size - 8 - header_len)
    return header


def _check_entries(path: Path, header: dict, data_size: int) -> None:
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise InputError(f"{path}: corrupt safetensors metadata (not a map of strings)")
            continue
        if not isinstance(entry, dict):
            raise InputError(f"{path}: tensor {name!r}: corrupt header entry")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _ITEM_BITS:
            raise InputError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise InputError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise InputError(f"{path}: tensor {name!r} has invalid data offsets {offsets!r}")
        numel = 1
        for dim in shape:
            numel *= dim
        if offsets[1] - offsets[0] != (numel * _ITEM_BITS[dtype] + 7) // 8:
            raise InputError(f"{path}: tensor {name!r}: {offsets[1] - offsets[0]} bytes stored for shape {shape} "
                             f"of {dtype}")
        spans.append(offsets)
    end = max((o[1] for o in spans), default=0)
    if end > data_size:
        raise InputError(f"{path}: truncated safetensors file (tensors need {end} bytes, file has {data_size})")
    position = 0
    for start, stop in sorted(spans):
        if start != position:
            raise InputError(f"{path}: corrupt safetensors file (tensor data overlaps or leaves a gap at byte {start})")
        position = stop
    if position != data_size:
        raise InputError(f"{path}: corrupt safetensors file ({data_size - position} bytes after the last tensor)")


def tensor_info(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of every tensor in a safetensors file, from its header alone."""
    info = {}
    for name, entry in check_safetensors(path).items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_STORAGE_DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise InputError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')!r}, which diffpress does not read")
        info[name] = (tuple(entry["shape"]), dtype)
    return info


def weights_dtype(model_dir: Path) -> torch.dtype | None:
    """The floating dtype most tensors of the checkpoint are stored in (None if none are float)."""
    counts: dict[torch.dtype, int] = {}
    for path in model_dir.glob("*.safetensors"):
        for key, info in check_safetensors(path).items():
            if key != "__metadata__" and info["dtype"] in _SAFETENSORS_DTYPES:
                dtype = _SAFETENSORS_DTYPES[info["dtype"]]
                counts[dtype] = counts.get(dtype, 0) + 1
    return max(counts, key=counts.get) if counts else None


def load_denoiser(checkpoint: Checkpoint) -> torch.nn.Module:
    """Load the denoiser in its stored dtype, with diffusers, from safetensors only, offline."""
    model_dir = checkpoint.denoiser_dir
    cls = _model_class(model_dir)
    try:
        model = cls.from_pretrained(model_dir, use_safetensors=True, torch_dtype=weights_dtype(model_dir),
                                    local_files_only=True, low_cpu_mem_usage=_saved_by_diffpress(model_dir))
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise InputError(f"{model_dir}: diffusers could not load the model ({str(error).splitlines()[0]})") from None
    return model.eval()


def _saved_by_diffpress(directory: Path) -> bool:
    """A model (or pipeline with a model) whose config has a quantization_config, e.g. a pruned one: diffusers
    loads it through a quantizer backend, which builds the skeleton on the meta device (low_cpu_mem_usage).
    Plain models load as they always did."""
    configs = [directory / "config.json", *directory.glob("*/config.json")]
    return any("quantization_config" in read_json(path) for path in configs if path.is_file())


def build_on_meta(checkpoint: Checkpoint) -> torch.nn.Module:
    """The denoiser's module structure from its config alone (meta tensors, no weights read)."""
    cls = _model_class(checkpoint.denoiser_dir)
    config = read_json(checkpoint.denoiser_dir / "config.json")
    from .pruning.slicing import apply_structure

    where = str(checkpoint.denoiser_dir)
    with torch.device("meta"):
        model = model_from_config(cls, config, where)
        qconfig = config.get("quantization_config") or {}
        apply_structure(model, qconfig.get("structure") if isinstance(qconfig, dict) else None, where)
    return model


def pipeline_class(root: Path) -> type:
    """The class to load a pipeline directory with: a diffpress pipeline by its _class_name, else diffusers'."""
    from diffusers import DiffusionPipeline

    from .zoo import pipeline_classes

    return pipeline_classes().get(read_json(root / "model_index.json").get("_class_name"), DiffusionPipeline)


def load_pipeline(model: str | Path, **components):
    """Load a pipeline directory (or builtin:NAME) offline from safetensors; `components` replace loaded ones."""
    root = _builtin_or_path(model)
    try:
        return pipeline_class(root).from_pretrained(root, use_safetensors=True, local_files_only=True,
                                                    low_cpu_mem_usage=_saved_by_diffpress(root), **components)
    except (OSError, ValueError) as error:
        raise InputError(f"{root}: diffusers could not load the pipeline ({str(error).splitlines()[0]})") from None
