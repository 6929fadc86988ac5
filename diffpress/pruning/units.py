"""Prunable units of a diffusers denoiser, found from module types and shapes (no model-name lists).

A `PruneGroup` is a set of interchangeable units inside one module, each unit owning `width`
consecutive rows of its producer layers and `width` consecutive input columns of its consumer
layers:

- attention heads of every attention module with to_q/to_k/to_v (self, cross and joint attention:
  add_q/k/v_proj are produced per head too, to_out[0] and to_add_out consume them); in a FLUX-style
  single-stream block (attention without to_out, followed by proj_out over [attention, MLP]) the
  block's proj_out consumes them;
- feed-forward hidden neurons of diffusers FeedForward (GELU, GEGLU and SwiGLU: both halves of the
  gated projection) and of the single-stream block's MLP (proj_mlp, then proj_out's MLP columns);
- ResNet inner channels in GroupNorm-group units (conv1 rows, time_emb_proj rows, norm2 groups,
  conv2 input channels), so the statistics of every surviving group are exact.

Removing a unit is exactly multiplying its consumer columns by 0, which is how gates act
(`gates.py`) and why the sliced model reproduces the gated one (`slicing.py`). A feed-forward
group may lose every neuron: its output Linear then has no input columns and adds its bias only,
so the block's residual passes through; attentions keep at least one head, ResNets one group.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from torch import nn


class UnitKind(str, enum.Enum):
    HEAD = "head"
    NEURON = "neuron"
    CHANNELS = "channel-group"


@dataclass(frozen=True)
class Segment:
    """`module` (an fqn) holds the group's units from `offset`: unit u is rows/columns offset + u*width ... + width."""

    module: str
    offset: int = 0


@dataclass
class PruneGroup:
    name: str  # fqn of the module that owns the units (the attention, feed-forward or ResNet block)
    kind: UnitKind
    count: int
    width: int
    producers: tuple[Segment, ...]  # output rows (dim 0 of weight and bias)
    consumers: tuple[Segment, ...]  # input columns (dim 1 of weight)
    norm: str | None = None  # a GroupNorm over the produced channels (ResNet), sliced by whole groups
    params_per_unit: int = 0
    macs_per_unit: float = 0.0  # per denoiser call and sample, once measured (`macs.py`)
    min_kept: int = 1  # feed-forward groups may lose every neuron (the layer then adds its output bias only)
    attention: str | None = None  # the attention module whose head count changes

    @property
    def params(self) -> int:
        return self.count * self.params_per_unit


def _linear(module) -> bool:
    return isinstance(module, nn.Linear)


def _is_attention(module: nn.Module) -> bool:
    return all(_linear(getattr(module, name, None)) for name in ("to_q", "to_k", "to_v")) and hasattr(module, "heads")


def _head_dim(attention: nn.Module) -> int | None:
    inner = attention.to_q.out_features
    heads = getattr(attention, "heads", None)
    if not heads or inner % heads:
        return None
    return inner // heads


def _fixed_width_norms(attention: nn.Module, inner: int) -> list[str]:
    """Norms across all heads at once (qk_norm 'rms_norm_across_heads'): removing a head would change them."""
    across = []
    for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k", "norm_cross"):
        norm = getattr(attention, name, None)
        weight = getattr(norm, "weight", None)
        if weight is not None and weight.ndim == 1 and weight.shape[0] == inner and inner != _head_dim(attention):
            across.append(name)
    return across


def _single_stream_block(module: nn.Module) -> bool:
    attention = getattr(module, "attn", None)
    return (_linear(getattr(module, "proj_mlp", None)) and _linear(getattr(module, "proj_out", None))
            and attention is not None and _is_attention(attention) and getattr(attention, "to_out", None) is None)


def _attention_group(fqn: str, attention: nn.Module, consumers: tuple[Segment, ...]) -> PruneGroup | None:
    width = _head_dim(attention)
    if width is None or getattr(attention, "fused_projections", False) or _fixed_width_norms(
            attention, attention.to_q.out_features):
        return None
    inner = attention.to_q.out_features
    names = [n for n in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")
             if _linear(getattr(attention, n, None))]
    if any(getattr(attention, n).out_features != inner for n in names):
        return None  # multi-query / grouped key-value heads: not handled
    producers = tuple(Segment(f"{fqn}.{n}") for n in names)
    return PruneGroup(fqn, UnitKind.HEAD, inner // width, width, producers, consumers, attention=fqn)


def _attention_consumers(fqn: str, attention: nn.Module) -> tuple[Segment, ...] | None:
    to_out = getattr(attention, "to_out", None)
    if to_out is None:
        return None
    first = to_out[0] if isinstance(to_out, (nn.ModuleList, nn.Sequential)) else to_out
    if not _linear(first):
        return None
    consumers = [Segment(f"{fqn}.to_out.0" if first is not to_out else f"{fqn}.to_out")]
    if _linear(getattr(attention, "to_add_out", None)):
        consumers.append(Segment(f"{fqn}.to_add_out"))
    return tuple(consumers)


def _feed_forward_group(fqn: str, module: nn.Module) -> PruneGroup | None:
    net = getattr(module, "net", None)
    if not isinstance(net, nn.ModuleList) or not net or not _linear(getattr(net[0], "proj", None)):
        return None
    consumer_index = next((i for i in range(1, len(net)) if _linear(net[i])), None)
    if consumer_index is None:
        return None
    hidden = net[consumer_index].in_features
    halves = net[0].proj.out_features // hidden
    if halves not in (1, 2) or net[0].proj.out_features != halves * hidden:
        return None
    producers = tuple(Segment(f"{fqn}.net.0.proj", half * hidden) for half in range(halves))
    return PruneGroup(fqn, UnitKind.NEURON, hidden, 1, producers, (Segment(f"{fqn}.net.{consumer_index}"),),
                      min_kept=0)


def _resnet_group(fqn: str, module: nn.Module) -> PruneGroup | None:
    norm, conv1, conv2 = (getattr(module, n, None) for n in ("norm2", "conv1", "conv2"))
    if not (isinstance(norm, nn.GroupNorm) and isinstance(conv1, nn.Conv2d) and isinstance(conv2, nn.Conv2d)):
        return None
    channels = conv1.out_channels
    if norm.num_channels != channels or conv2.in_channels != channels or conv1.groups != 1 or conv2.groups != 1:
        return None
    producers = [Segment(f"{fqn}.conv1")]
    time_proj = getattr(module, "time_emb_proj", None)
    if time_proj is not None:
        if not _linear(time_proj) or time_proj.out_features % channels:
            return None
        producers += [Segment(f"{fqn}.time_emb_proj", k * channels) for k in range(time_proj.out_features // channels)]
    width = channels // norm.num_groups
    return PruneGroup(fqn, UnitKind.CHANNELS, norm.num_groups, width, tuple(producers),
                      (Segment(f"{fqn}.conv2"),), norm=f"{fqn}.norm2")


def find_groups(model: nn.Module) -> list[PruneGroup]:
    """Every prunable group of `model`, in module order, with its parameter count per unit."""
    groups: list[PruneGroup] = []
    claimed: set[str] = set()
    for fqn, module in model.named_modules():
        group = None
        if _single_stream_block(module):
            prefix = f"{fqn}." if fqn else ""
            heads = _attention_group(f"{prefix}attn", module.attn, (Segment(f"{prefix}proj_out", 0),))
            mlp = PruneGroup(f"{prefix}proj_mlp", UnitKind.NEURON, module.proj_mlp.out_features, 1,
                             (Segment(f"{prefix}proj_mlp"),),
                             (Segment(f"{prefix}proj_out", module.attn.to_q.out_features),), min_kept=0)
            if heads is not None:
                groups.append(heads)
            groups.append(mlp)
            claimed.add(f"{prefix}attn")
            continue
        if fqn in claimed:
            continue
        if _is_attention(module):
            consumers = _attention_consumers(fqn, module)
            group = _attention_group(fqn, module, consumers) if consumers else None
        elif type(module).__name__ == "FeedForward" or hasattr(module, "net"):
            group = _feed_forward_group(fqn, module)
        elif hasattr(module, "norm2") and hasattr(module, "conv2"):
            group = _resnet_group(fqn, module)
        if group is not None:
            groups.append(group)
    for group in groups:
        group.params_per_unit = unit_params(model, group)
    return groups


def unit_params(model: nn.Module, group: PruneGroup) -> int:
    """Parameters one unit of `group` owns: its producer rows (with bias), consumer columns and norm affine."""
    total = 0
    for segment in group.producers:
        layer = model.get_submodule(segment.module)
        per_row = layer.weight[0].numel() + (1 if layer.bias is not None else 0)
        total += group.width * per_row
    for segment in group.consumers:
        layer = model.get_submodule(segment.module)
        total += group.width * layer.weight.numel() // _in_width(layer)
    if group.norm is not None and model.get_submodule(group.norm).affine:
        total += 2 * group.width
    return total


def _in_width(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
