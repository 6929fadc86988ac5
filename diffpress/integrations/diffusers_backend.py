"""The diffusers quantizer backend for `quant_method: "diffpress"`.

diffusers has no public registration call; its quantizer backends are looked up in two tables,
`diffusers.quantizers.auto.AUTO_QUANTIZER_MAPPING` and `AUTO_QUANTIZATION_CONFIG_MAPPING`, and this
module adds an entry to each (`register_backend`, run when diffusers loads: see
`diffpress._hooks`). Then plain diffusers calls work on diffpress output:

- `UNet2DConditionModel.from_pretrained(dir)`, `DiffusionPipeline.from_pretrained(pipeline_dir)`:
  before any weight is assigned, the checksums in diffpress_manifest.json are verified and the
  skeleton (on the meta device) gets empty QuantLinear/QuantConv2d shells where the layer plan says;
  the packed tensors are then assigned as stored (never cast to `torch_dtype`, which applies to the
  float tensors); a missing or extra tensor is an IntegrityError, not a warning.
- `from_pretrained(float_dir, quantization_config=DiffpressConfig(preset="w8a8-int8"))`: quantize on
  load, one weight at a time as it is read (the float model is never whole in memory), for presets
  that need no calibration data.
- `save_pretrained`: writes the current layer plan as `quantization_config` and a manifest, for a
  loaded model and for one quantized in memory (`ModelMixin.save_pretrained` is wrapped once; it
  changes nothing for models without diffpress layers).

Only `diffusers.quantizers` is imported at module level: this module may be imported while
`diffusers.models` is still being imported.
"""
from __future__ import annotations

import enum
import functools
import importlib.util
from pathlib import Path

import torch
from diffusers.quantizers import auto as diffusers_auto
from diffusers.quantizers.base import DiffusersQuantizer
from diffusers.quantizers.quantization_config import QuantizationConfigMixin

from .. import io
from ..checkpoint import tensor_info
from ..compression.modules import QUANTIZATION_BUFFERS, set_backends
from ..compression.surgery import COMPRESSED_CLASSES, compressed_layers, compressible_layers, replace_module
from ..compression.swap import DEFAULT_SKIP, plan_of
from ..errors import DiffpressError, InputError, IntegrityError
from ..kernels.dispatch import parse_backend
from ..pruning.slicing import apply_structure

MANIFEST_NAME = io.MANIFEST_NAME


class DiffpressMethod(str, enum.Enum):
    """diffusers reads `quant_method.value`; a str Enum compares and hashes as its value."""

    DIFFPRESS = io.QUANT_METHOD


class DiffpressConfig(QuantizationConfigMixin):
    """The `quantization_config` of a diffpress model.

    For a compressed checkpoint: what diffpress stored (format version, producer, layer plan, ...),
    read from config.json; every stored key is kept and written back by `to_dict`. For quantize on
    load: `preset` (a preset that needs no calibration data), optional `modules_to_not_convert`
    (regexes on layer names, kept in high precision beside the default skip list). `backend`:
    auto | triton | reference, resolved per layer for its device.
    """

    def __init__(self, preset: str | None = None, backend: str = "auto", modules_to_not_convert=None, **stored):
        stored.pop("quant_method", None)
        self.quant_method = DiffpressMethod.DIFFPRESS
        self.preset = preset
        self.backend = parse_backend(backend).value
        self.modules_to_not_convert = list(modules_to_not_convert or [])
        self.stored = stored
        if self.layers is None:
            self._check_preset()

    @property
    def layers(self) -> dict | None:
        return self.stored.get("layers")

    def _check_preset(self) -> None:
        from ..presets import PRESETS, preset

        if self.preset is None:
            raise InputError("DiffpressConfig for quantizing on load needs preset=NAME (one of the presets that need "
                             "no calibration data)", "preset")
        if preset(self.preset).needs_calibration:
            usable = ", ".join(name for name, p in PRESETS.items() if not p.spec.needs_calibration)
            raise InputError(f"preset {self.preset!r} needs calibration data, which loading cannot provide: compress "
                             f"the checkpoint with `diffpress compress MODEL --preset {self.preset} --out DIR` and load "
                             f"DIR, or quantize on load with one of: {usable}", "preset")

    def to_dict(self) -> dict:
        extras = {"backend": self.backend} if self.backend != "auto" else {}
        if self.modules_to_not_convert:
            extras["modules_to_not_convert"] = list(self.modules_to_not_convert)
        return {"quant_method": self.quant_method.value, **self.stored, "preset": self.preset, **extras}

    def to_diff_dict(self) -> dict:
        return self.to_dict()

    @classmethod
    def for_model(cls, model: torch.nn.Module, previous: "DiffpressConfig | dict | None" = None) -> "DiffpressConfig":
        """The config describing `model` as it is now (its layer plan, dtype, timestep buckets), keeping what
        `previous` recorded about how it was made (preset, recipe, skipped layers)."""
        previous = previous.to_dict() if isinstance(previous, DiffpressConfig) else dict(previous or {})
        kept = {key: previous[key] for key in ("preset", "recipe", "skipped", "pruned") if key in previous}
        current = io.quantization_config(model, kept)
        current.pop("quant_method", None)
        return cls(backend=previous.get("backend", "auto"), **current)


class DiffpressQuantizer(DiffusersQuantizer):
    """Loads diffpress checkpoints (pre-quantized) or quantizes float checkpoints with a preset on load."""

    requires_calibration = False
    required_packages = ["accelerate"]
    use_keep_in_fp32_modules = False

    def __init__(self, quantization_config: DiffpressConfig, **kwargs) -> None:
        super().__init__(quantization_config, **kwargs)
        self.directory: Path | None = None
        self.requested_dtype = None
        self.stored_tensors: dict[str, tuple] = {}
        self.loaded_keys: set[str] = set()

    # ------------------------------------------------------------------ before loading

    def validate_environment(self, *args, **kwargs) -> None:
        if not hasattr(DiffusersQuantizer, "maybe_update_loaded_keys"):
            raise InputError("loading diffpress models through diffusers needs diffusers >= 0.39 (the first version "
                             "that shows a quantizer the checkpoint files before it assigns weights, where diffpress "
                             "verifies checksums and tensor names); upgrade diffusers, or use diffpress.load(dir)")
        if importlib.util.find_spec("accelerate") is None:
            raise InputError("loading diffpress models with diffusers needs accelerate: pip install accelerate")
        config = self.quantization_config
        if self.pre_quantized and config.layers is None:
            raise IntegrityError("the checkpoint's quantization_config names no layers; it was not written by diffpress")
        if self.pre_quantized and config.stored.get("format_version", 0) > io.FORMAT_VERSION:
            raise InputError(f"format version {config.stored['format_version']} is newer than this diffpress understands "
                             f"({io.FORMAT_VERSION}); upgrade diffpress")

    def update_torch_dtype(self, torch_dtype):
        """No torch_dtype given: the dtype the model was saved in (as diffpress.load keeps it)."""
        self.requested_dtype = torch_dtype
        return self._stored_dtype() if torch_dtype is None and self.pre_quantized else torch_dtype

    def _stored_dtype(self) -> torch.dtype:
        return getattr(torch, self.quantization_config.stored.get("torch_dtype", "float32"))

    def maybe_update_loaded_keys(self, loaded_keys: list[str], checkpoint_files: list[str]) -> list[str]:
        """Verify the manifest's checksums and read the stored tensors' shapes (headers only)."""
        self.loaded_keys = set(loaded_keys)
        if self.pre_quantized:
            files = [Path(f) for f in checkpoint_files]
            self.directory = files[0].parent
            pickled = [f.name for f in files if f.suffix != ".safetensors"]
            if pickled:
                raise IntegrityError(f"{self.directory}: weights in {pickled[0]} are not safetensors; diffpress models "
                                     "are stored as safetensors only (pickled files can run arbitrary code)")
            verify_component(self.directory)
            for path in files:
                self.stored_tensors.update(tensor_info(path))
        return loaded_keys

    def _process_model_before_weight_loading(self, model, device_map=None, keep_in_fp32_modules=None, **kwargs):
        if self.pre_quantized:
            apply_structure(model, self.quantization_config.stored.get("structure"), str(self.directory))
            io.install_shells(model, self.quantization_config.layers, self.stored_tensors, self.directory)
            self._check_keys(model)
        else:
            self._install_quantize_on_load_shells(model)
        return model

    def _check_keys(self, model) -> None:
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - self.loaded_keys), sorted(self.loaded_keys - expected)
        if missing or unexpected:
            raise IntegrityError(f"{self.directory}: weights do not match the model: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")

    def _install_quantize_on_load_shells(self, model) -> None:
        """Shells where the preset applies, each with a meta `weight` placeholder: the float weight is read into
        `create_quantized_param`, quantized there and dropped."""
        from ..presets import preset_recipe

        recipe = preset_recipe(self.quantization_config.preset)
        skip = DEFAULT_SKIP + tuple(self.quantization_config.modules_to_not_convert)
        for fqn, module in list(compressible_layers(model)):
            spec, _ = plan_of(recipe, fqn, skip, module)
            if spec is None:
                continue
            shell = _compressed_shell(module, spec)
            shell.fqn = fqn
            shell.register_parameter("weight", torch.nn.Parameter(torch.empty_like(module.weight, device="meta"),
                                                                  requires_grad=False))
            replace_module(model, fqn, shell)

    def update_missing_keys(self, model, missing_keys: list[str], prefix: str) -> list[str]:
        """Quantize on load makes qdata and scales from the weights: they are not missing from the checkpoint."""
        if self.pre_quantized:
            return missing_keys
        made = {f"{fqn}.{name}" for fqn, _ in compressed_layers(model) for name in ("qdata", "scales")}
        return [key for key in missing_keys if key not in made]

    # ------------------------------------------------------------------ while loading

    def check_if_quantized_param(self, model, param_value, param_name: str, state_dict, **kwargs) -> bool:
        """Quantization buffers are assigned by `create_quantized_param` exactly as stored (never cast to the
        load dtype); so are the float weights that quantize on load turns into codes."""
        module, attribute = _owner(model, param_name)
        if not isinstance(module, COMPRESSED_CLASSES):
            return False
        return attribute in QUANTIZATION_BUFFERS or (not self.pre_quantized and attribute == "weight")

    def create_quantized_param(self, model, param_value, param_name: str, target_device, state_dict=None,
                               unexpected_keys=None, **kwargs) -> None:
        module, attribute = _owner(model, param_name)
        stored = state_dict[param_name] if state_dict is not None and param_name in state_dict else param_value
        device = _device(target_device)
        if attribute == "weight":
            _quantize_into(module, stored.to(device))
        else:
            module._buffers[attribute] = stored.to(device)

    # ------------------------------------------------------------------ after loading

    def _process_model_after_weight_loading(self, model, **kwargs):
        unset = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if unset:
            raise IntegrityError(f"{self.directory or 'checkpoint'}: tensors missing after loading: {unset[:5]}")
        for fqn, module in compressed_layers(model):
            module.fqn = fqn
        io.attach_timestep_tracker(model, self.quantization_config.stored.get("timestep_buckets"))
        if self.pre_quantized and self.requested_dtype is None:  # the model as saved, as diffpress.load gives it
            io.cast_non_persistent_buffers(model, self._stored_dtype())
        set_backends(model, self.quantization_config.backend)
        # diffusers refuses `.to(dtype)` on quantized models; diffpress layers take dtype casts (their
        # quantization buffers keep their dtype; the compute dtype follows the cast), so pipe.to(float16) works.
        model.is_quantized = False
        return model

    @property
    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True


def _owner(model, param_name: str):
    owner, _, attribute = param_name.rpartition(".")
    return (model.get_submodule(owner) if owner else model), attribute


def _device(target) -> torch.device:
    if isinstance(target, int):
        return torch.device("cuda", target)
    return torch.device(target)


def _compressed_shell(module, spec):
    from ..compression.surgery import replacement_for

    return replacement_for(module).compressed_class.empty_like(module, spec)


def _quantize_into(shell, weight: torch.Tensor) -> None:
    """Quantize a float weight into a quantize-on-load shell (nearest rounding, the preset's scales) and drop the
    placeholder."""
    from ..compression.quantize import quantize_weight
    from ..compression.rotation import layer_signs, rotate_flat
    from ..recipe import Rotation, layer_scale_method

    spec = shell.spec
    flat = weight.reshape(weight.shape[0], -1)
    signs = None
    if spec.rotation is Rotation.HADAMARD:  # as from_float rotates: over the input channels
        signs = layer_signs(shell)
        flat = rotate_flat(flat, signs, flat.shape[1] // signs.numel())
    packed = quantize_weight(flat, spec.weight_format, spec.granularity, spec.group_size,
                             layer_scale_method(spec, shell))
    del shell.weight
    shell.set_packed(packed)
    if signs is not None:
        shell.set_optional("rotation", signs)


def verify_component(directory: Path) -> None:
    """Checksums of a model directory's files: its own manifest, or the pipeline root's (entries under it)."""
    if (directory / MANIFEST_NAME).is_file():
        io.verify_manifest(directory)
        return
    root_manifest = directory.parent / MANIFEST_NAME
    if not root_manifest.is_file():
        raise IntegrityError(f"{directory}: no {MANIFEST_NAME} here or in {directory.parent}; the checksums of this "
                             "diffpress model cannot be verified")
    io.verify_manifest(directory.parent, only=directory.name)


# ---------------------------------------------------------------------- registration and saving


def register_backend(auto_module=diffusers_auto) -> None:
    auto_module.AUTO_QUANTIZER_MAPPING[io.QUANT_METHOD] = DiffpressQuantizer
    auto_module.AUTO_QUANTIZATION_CONFIG_MAPPING[io.QUANT_METHOD] = DiffpressConfig


def patch_save_pretrained(model_mixin) -> None:
    """Wrap `ModelMixin.save_pretrained` once: for a model with diffpress layers, refresh its
    quantization_config from the layers, refuse pickle, and write a manifest beside the files."""
    original = model_mixin.save_pretrained
    if getattr(original, "diffpress_wrapped", False):
        return

    @functools.wraps(original)
    def save_pretrained(self, save_directory, *args, **kwargs):
        if next(compressed_layers(self), None) is None and not getattr(self, "diffpress_structure", None):
            return original(self, save_directory, *args, **kwargs)
        if kwargs.get("safe_serialization", True) is False:
            raise InputError("diffpress models are saved as safetensors only: drop safe_serialization=False",
                             "safe_serialization")
        self.register_to_config(quantization_config=DiffpressConfig.for_model(self, self.config.get("quantization_config")))
        result = original(self, save_directory, *args, **kwargs)
        io.write_manifest(Path(save_directory))
        return result

    save_pretrained.diffpress_wrapped = True
    model_mixin.save_pretrained = save_pretrained


register_backend()
