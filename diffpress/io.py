"""Save and load compressed models.

On disk a compressed model is a diffusers-format directory: `config.json` (the model's diffusers
config plus `quantization_config`) and `diffusion_pytorch_model.safetensors` (packed weights,
scales and the untouched float tensors). A compressed pipeline is a pipeline directory whose other
components are byte-for-byte copies of the input's. `diffpress_manifest.json` at the root records
the sha256 of every file; `load` verifies it before reading any tensor.

Writes are atomic and locked (diffpress.outputs): everything goes into a hidden staging sibling,
files are fsynced, and one rename publishes it; on any error or interrupt the staging directory is
removed and an existing output is left as it was.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import distributed
from . import __version__
from .checkpoint import Checkpoint, check_safetensors, load_pipeline, model_from_config, read_json
from .compression.modules import OPTIONAL_BUFFERS, QUANTIZATION_BUFFERS, set_backends
from .compression.layer_records import layer_entry, shell_for
from .compression.surgery import compressed_layers, replace_module
from .errors import DiffpressError, InputError, IntegrityError, one_line
from .metrics import state_bytes
from .outputs import atomic_directory, check_output
from .pruning.slicing import apply_structure

FORMAT_VERSION = 1
QUANT_METHOD = "diffpress"
MANIFEST_NAME = "diffpress_manifest.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
_PACKED_DTYPES = (torch.int8, torch.uint8, torch.float8_e4m3fn)


# ---------------------------------------------------------------- manifest

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(root: Path, denoiser_component: str | None = None) -> None:
    """diffpress_manifest.json at `root`: the sha256 of every file below it."""
    files = {p.relative_to(root).as_posix(): _sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "producer_version": __version__,
                "denoiser_component": denoiser_component, "sha256": files}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def verify_manifest(root: Path, only: str | None = None) -> dict:
    """Check every file listed in the manifest (or, with `only`, those below that subdirectory) against its
    sha256; return the manifest."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise IntegrityError(f"{root}: no {MANIFEST_NAME}; not a diffpress-compressed model")
    manifest = read_json(path)
    checksums = manifest.get("sha256", {})
    if not isinstance(checksums, dict):
        raise IntegrityError(f"{path}: sha256 is not a mapping of file to checksum")
    for name, expected in checksums.items():
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise IntegrityError(f"{path}: lists {name!r}, a path outside the model directory")
        if only is not None and not name.startswith(only + "/"):
            continue
        file = root / name
        if not file.is_file():
            raise IntegrityError(f"{file}: listed in {MANIFEST_NAME} but missing")
        if _sha256(file) != expected:
            raise IntegrityError(f"{file}: sha256 does not match {MANIFEST_NAME} (file changed or corrupted)")
    return manifest


# ---------------------------------------------------------------- save

def layer_plan(model: nn.Module) -> dict[str, dict]:
    """fqn -> {"module": linear|conv2d, **QuantSpec} for every quantized layer."""
    plan = {}
    for fqn, module in compressed_layers(model):
        plan[fqn] = layer_entry(module)
    return plan


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype most parameters have (what non-persistent buffers are cast to at load)."""
    counts: dict[torch.dtype, int] = {}
    for parameter in model.parameters():
        if parameter.is_floating_point():
            counts[parameter.dtype] = counts.get(parameter.dtype, 0) + parameter.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def quantization_config(model: nn.Module, extra: dict | None = None) -> dict:
    config = layers_config(layer_plan(model), model_dtype(model), extra)
    structure = getattr(model, "diffpress_structure", None)
    if structure:
        config["structure"] = structure
    tracker = getattr(model, "diffpress_timestep_tracker", None)
    if tracker is not None:
        config["timestep_buckets"] = {"num_buckets": tracker.buckets.num_buckets,
                                      "timestep_range": tracker.buckets.timestep_range}
    return config


def layers_config(layers: dict[str, dict], dtype: torch.dtype, extra: dict | None = None) -> dict:
    """The quantization_config of config.json for a model of float dtype `dtype` with these layer plans."""
    return {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "producer": "diffpress",
            "producer_version": __version__, "torch_dtype": str(dtype).removeprefix("torch."),
            **(extra or {}), "layers": layers}


def write_model(model: nn.Module, directory: Path, extra: dict | None = None) -> None:
    """Write a compressed denoiser's config.json and safetensors weights into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_config(directory)
    config = read_json(directory / CONFIG_NAME)
    config["quantization_config"] = quantization_config(model, extra)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(_unshared_state_dict(model), directory / WEIGHTS_NAME, metadata={"format": "pt"})


def _unshared_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous tensors, cloning any that share storage (safetensors refuses shared tensors)."""
    seen, tensors = set(), {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else None
        tensors[name] = tensor.detach().clone().contiguous() if key in seen else tensor.detach().contiguous()
        seen.add(key)
    return tensors


def save(model: nn.Module, out: str | Path, source: Checkpoint | None = None, overwrite: bool = False,
         extra: dict | None = None, attachments: dict[str, str] | None = None) -> Path:
    """Save a compressed (quantized and/or pruned) denoiser to `out`, atomically.

    With `source` a pipeline checkpoint, `out` becomes a pipeline directory: every other component
    is copied from the source byte for byte and the denoiser is replaced by the compressed one.
    `attachments` are extra text files written at the root (e.g. recipe.yaml).
    """
    out = Path(out).expanduser().resolve()
    if not layer_plan(model) and not getattr(model, "diffpress_structure", None):
        raise InputError("the model is neither quantized nor pruned; compress or prune it first")
    if not distributed.is_main():  # several processes: rank 0 writes
        return out
    inputs = (source.root,) if source else ()
    check_output(out, overwrite, inputs)
    component = source.denoiser_component if source and source.is_pipeline else None
    expected = state_bytes(model) + (_pipeline_bytes_except(source.root, component) if component else 0)
    with atomic_directory(out, overwrite, expected) as staging:
        if component:
            _copy_pipeline_except(source.root, staging, component)
        write_model(model, staging / component if component else staging, extra)
        for name, text in (attachments or {}).items():
            (staging / name).write_text(text)
        write_manifest(staging, component)
    return out


def _pipeline_bytes_except(source: Path, component: str) -> int:
    return sum(path.stat().st_size for path in source.rglob("*")
               if path.is_file() and path.relative_to(source).parts[0] != component)


def _copy_pipeline_except(source: Path, target: Path, component: str) -> None:
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if relative.parts[0] == component or path.is_dir() or relative.name == MANIFEST_NAME:
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / relative)


# ---------------------------------------------------------------- load

def load(path: str | Path, backend: str = "auto", device: str | torch.device | None = None,
         torch_dtype: torch.dtype | None = None, **pipeline_kwargs):
    """Load a compressed model directory (returns the model) or pipeline directory (returns the pipeline).

    Checksums are verified first; the model is built on the meta device and the stored tensors are
    assigned, so forward outputs are bit-identical to the model that was saved. `torch_dtype`: the
    dtype of the float tensors (default: as saved, non-persistent buffers included), as diffusers'
    `from_pretrained(torch_dtype=)` gives it; quantization buffers keep theirs. `device` moves the model there; then each quantized
    layer's `backend` (auto | triton | reference) is resolved for its device: auto takes triton on a
    CUDA GPU that can run it, reference otherwise; triton where it cannot run raises DiffpressError
    with the reason. Moving the model later (`.to(...)`) resolves the backends again.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: no such directory", "compressed")
    component = _verified_denoiser_component(root)
    if not component:
        return load_model(root, backend, device, torch_dtype)
    denoiser = load_model(root / component, backend, device, torch_dtype)
    if torch_dtype is not None:
        pipeline_kwargs["torch_dtype"] = torch_dtype
    return load_pipeline(root, **{component: denoiser}, **pipeline_kwargs)


def _verified_denoiser_component(root: Path) -> str | None:
    """Verify the checksums and say which component is the denoiser (None: `root` is a bare model).

    diffpress writes one manifest at the root of what it saves; a pipeline saved by diffusers'
    save_pretrained holds one in its denoiser's directory instead (the model saves its own).
    """
    if (root / MANIFEST_NAME).is_file() or not (root / "model_index.json").is_file():
        component = verify_manifest(root).get("denoiser_component")
        if component is not None and not (isinstance(component, str) and component.isidentifier()
                                          and (root / component).is_dir()):
            raise IntegrityError(f"{root / MANIFEST_NAME}: denoiser_component {component!r} is not a component "
                                 "directory of this pipeline")
        return component
    from .checkpoint import denoiser_component

    component = denoiser_component(root)
    verify_manifest(root / component)
    return component


def load_model(directory: Path, backend: str = "auto", device: str | torch.device | None = None,
               torch_dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild one compressed denoiser from `directory` (config.json + safetensors); see `load`."""
    import diffusers

    config = read_json(directory / CONFIG_NAME)
    qconfig = config.pop("quantization_config", None)
    if not isinstance(qconfig, dict) or qconfig.get("quant_method") != QUANT_METHOD:
        raise InputError(f"{directory}: config.json has no diffpress quantization_config")
    version = qconfig.get("format_version", 0)
    if type(version) is not int:
        raise IntegrityError(f"{directory}: format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise InputError(f"{directory}: format version {qconfig['format_version']} is newer than this "
                         f"diffpress understands ({FORMAT_VERSION}); upgrade diffpress")
    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise InputError(f"{directory}: unknown diffusers class {name!r}")
    dtype = _stored_dtype(qconfig.get("torch_dtype", "float32"), directory) if torch_dtype is None else torch_dtype
    layers = qconfig.get("layers")
    if not isinstance(layers, dict):
        raise IntegrityError(f"{directory}: quantization_config.layers is not a mapping")
    shards = weight_files(directory)
    stored = sum(len(check_safetensors(shard)) for shard in shards)
    with torch.device("meta"), _default_dtype(dtype):  # buffers built as diffusers builds them for this dtype
        model = model_from_config(cls, config, str(directory), sum(s.stat().st_size for s in shards), stored)
        apply_structure(model, qconfig.get("structure"), str(directory))
    state = {}
    for shard in shards:
        state.update(load_file(shard))
    try:
        install_shells(model, layers, {k: (tuple(t.shape), t.dtype) for k, t in state.items()}, directory)
    except DiffpressError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as error:
        raise IntegrityError(f"{directory}: corrupt quantization_config.layers ({type(error).__name__}: "
                             f"{one_line(error)})") from None
    if torch_dtype is not None:
        state = _cast_float_tensors(state, torch_dtype, exact=_quantization_buffer_names(qconfig["layers"]))
    _assign_state_dict(model, state, directory)
    attach_timestep_tracker(model, qconfig.get("timestep_buckets"))
    with _default_dtype(dtype):
        _materialize_leftover_buffers(model, cls, config)
    if torch_dtype is None:
        cast_non_persistent_buffers(model, dtype)
    if device is not None:
        model.to(device)
    return set_backends(model.eval(), backend)


def weight_files(directory: Path) -> list[Path]:
    """The safetensors file, or the shards a diffusers index names (streamed outputs of large models)."""
    from .streaming import INDEX_NAME

    single = directory / WEIGHTS_NAME
    index = directory / INDEX_NAME
    if single.is_file() or not index.is_file():
        if not single.is_file():
            raise IntegrityError(f"{single}: missing")
        return [single]
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and "/" not in v for v in weight_map.values()):
        raise IntegrityError(f"{index}: weight_map is not a mapping of tensor names to shard files")
    shards = [directory / name for name in sorted(set(weight_map.values()))]
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise IntegrityError(f"{missing[0]}: missing (named in {INDEX_NAME})")
    return shards


_STORED_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _stored_dtype(name, directory: Path) -> torch.dtype:
    if name not in _STORED_DTYPES:
        raise IntegrityError(f"{directory}: torch_dtype {name!r} is not one of {', '.join(_STORED_DTYPES)}")
    return getattr(torch, name)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point and dtype.itemsize >= 2 else previous)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _quantization_buffer_names(layers: dict) -> set[str]:
    return {f"{fqn}.{name}" for fqn in layers for name in QUANTIZATION_BUFFERS}


def _cast_float_tensors(state: dict[str, torch.Tensor], dtype: torch.dtype, exact: set[str]) -> dict:
    """Float tensors to `dtype`, except the quantization buffers (`exact`), which keep theirs."""
    return {name: t.to(dtype) if t.is_floating_point() and name not in exact else t for name, t in state.items()}


def install_shells(model: nn.Module, layers: dict[str, dict], stored: dict[str, tuple[tuple, torch.dtype]],
                   directory: Path) -> None:
    """Put an empty compressed module (meta tensors) at every layer the plan names, with placeholders for
    the optional buffers the checkpoint holds (`stored`: tensor name -> (shape, dtype)), so that loading
    by name finds every key."""
    for fqn, entry in layers.items():
        try:
            float_module = model.get_submodule(fqn)
        except AttributeError:
            raise IntegrityError(f"{directory}: quantization_config names layer {fqn!r}, which the model lacks") from None
        optional = {name: stored[f"{fqn}.{name}"] for name in OPTIONAL_BUFFERS if f"{fqn}.{name}" in stored}
        replace_module(model, fqn, shell_for(float_module, fqn, entry, optional, directory))


def _assign_state_dict(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise IntegrityError(f"{directory}: weights do not match the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    for name, tensor in state.items():
        want = expected[name]
        packed_dtype_differs = want.dtype in _PACKED_DTYPES and tensor.dtype != want.dtype
        if tuple(tensor.shape) != tuple(want.shape) or packed_dtype_differs:
            raise IntegrityError(f"{directory}: tensor {name} is {tuple(tensor.shape)} {tensor.dtype}, "
                                 f"the model expects {tuple(want.shape)} {want.dtype}")
    model.load_state_dict(state, strict=True, assign=True)


def attach_timestep_tracker(model: nn.Module, buckets: dict | None) -> None:
    """Layers with static activation scales index them by the current timestep bucket: install the tracker."""
    static = [m for _, m in compressed_layers(model) if m.act_scales is not None]
    if not static:
        return
    if not buckets:
        raise IntegrityError("layers have static activation scales but quantization_config has no timestep_buckets")
    from .calibration.buckets import TimestepBuckets
    from .compression.timesteps import attach_tracker

    tracker = attach_tracker(model, TimestepBuckets(**buckets))
    for module in static:
        module.timestep_tracker = tracker


def cast_non_persistent_buffers(model: nn.Module, dtype: torch.dtype) -> None:
    """The model as it was saved: float buffers the file does not hold (built in float32 by some models) in the
    saved dtype, as they were when it was saved."""
    for module in model.modules():
        for name in module._non_persistent_buffers_set:
            buffer = getattr(module, name)
            if buffer is not None and buffer.is_floating_point():
                setattr(module, name, buffer.to(dtype))


def _materialize_leftover_buffers(model: nn.Module, cls, config: dict) -> None:
    """Non-persistent buffers built with torch factories stay on meta; take them from a CPU build."""
    leftover = [name for name, buffer in model.named_buffers() if buffer.is_meta]
    if not leftover:
        return
    reference = cls.from_config(config)
    buffers = dict(reference.named_buffers())
    for name in leftover:
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        setattr(module, attr, buffers[name])
