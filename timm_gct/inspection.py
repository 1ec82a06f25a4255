""" Look inside a model: per-layer statistics of the attention layers' parameters and of their gates on images.

``inspect_model(model, images)`` returns two tables and, for the spatial mechanisms, attention maps:

* **Parameter view** (no data needed): for every attention layer, in depth order, the distribution of its gate
  parameters: GCT's alpha, gamma and beta (the GCT paper's finding is gamma < 0 in shallow layers, where channels
  cooperate, and gamma > 0 in deep ones, where they compete); NAM's normalised |gamma| / sum |gamma| (the weights of
  its gate) and gamma; SRM's style weights for the mean and the standard deviation; ECA's kernel; criss-cross
  attention's gamma; every parameter of the other layers by name.
* **Activation view**: forward hooks record each layer's input x and output y on a batch. The *effective channel
  gate* of channel c is the least-squares scale of y_c against x_c, g_c = <y_c, x_c> / <x_c, x_c> over H x W: exactly
  the gate of a channel gate (y_c = g_c x_c: GCT, ECA, SRM, FcaNet, SoCA, GSoP, DIANet, EncNet), the mean gate over
  positions weighted by x_c^2 for an elementwise one (NAM, Triplet, Bi-attention), and 1 + <t_c, x_c> / <x_c, x_c>
  for an additive one (GC's channel_add, criss-cross attention). The table gives its mean and spread over the batch.
* **Attention maps** of the spatial mechanisms, per sample: Triplet's (H, W) branch gate, GC's attention-pooling
  softmax, criss-cross attention's weight received by each position (averaged over the queries of the first pass),
  and Bi-attention's spatial branch averaged over channels.

``timm-gct inspect`` (cli.py) writes the tables as CSV and draws them (matplotlib).
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .layers import (
    BilinearAttention, CrissCrossAttention, DenseImplicitAttention, EfficientChannelAttention, EncodingAttention,
    GatedChannelTransform, GlobalContextBlock, GSoPChannelAttention, MultiSpectralAttention, NormalizationAttention,
    SecondOrderChannelAttention, StyleRecalibration, TripletAttention,
)
from .layers.criss_cross import criss_cross_weights

__all__ = [
    'ATTENTION_LAYERS', 'PARAM_COLUMNS', 'GATE_COLUMNS', 'Inspection', 'NoAttentionError', 'attention_modules',
    'effective_channel_gate', 'gate_parameters', 'inspect_model', 'parameter_rows',
]

ATTENTION_LAYERS = (
    BilinearAttention, CrissCrossAttention, DenseImplicitAttention, EfficientChannelAttention, EncodingAttention,
    GatedChannelTransform, GlobalContextBlock, GSoPChannelAttention, MultiSpectralAttention, NormalizationAttention,
    SecondOrderChannelAttention, StyleRecalibration, TripletAttention,
)
PARAM_COLUMNS = ('layer', 'depth', 'parameter', 'count', 'mean', 'std', 'min', 'q25', 'median', 'q75', 'max',
                 'positive_fraction')
GATE_COLUMNS = ('layer', 'depth', 'channels', 'mean', 'std_over_channels', 'std_over_batch', 'min', 'max')


class NoAttentionError(ValueError):
    """The model holds no attention layer of this package."""


def attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, layer) for every call site of an attention layer, in depth order. DIANet's cell, shared by the blocks of
    a stage, appears once per block."""
    return [(name, m) for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, ATTENTION_LAYERS)]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().flatten()


def gate_parameters(layer: nn.Module) -> Dict[str, torch.Tensor]:
    """The parameters that shape a layer's gate, as named 1-D float32 tensors (see the module docstring)."""
    if isinstance(layer, GatedChannelTransform):
        return {'alpha': _flat(layer.alpha), 'gamma': _flat(layer.gamma), 'beta': _flat(layer.beta)}
    if isinstance(layer, NormalizationAttention):
        scale = _flat(layer.bn.weight).abs()
        return {'|gamma| / sum |gamma|': scale / scale.sum().clamp_min(1e-12), 'gamma': _flat(layer.bn.weight)}
    if isinstance(layer, StyleRecalibration):
        cfc = layer.cfc.detach().float().view(-1, 2)
        return {'style weight (mean)': cfc[:, 0], 'style weight (std)': cfc[:, 1]}
    if isinstance(layer, EfficientChannelAttention):
        return {'kernel': _flat(layer.conv.weight)}
    if isinstance(layer, CrissCrossAttention):
        return {'gamma': _flat(layer.gamma)}
    return {name: _flat(p) for name, p in layer.named_parameters()}


def _stats(values: torch.Tensor) -> Dict[str, float]:
    q = torch.quantile(values.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return dict(
        count=values.numel(), mean=values.double().mean().item(),
        std=values.double().std().item() if values.numel() > 1 else 0., min=values.min().item(),
        q25=q[0].item(), median=q[1].item(), q75=q[2].item(), max=values.max().item(),
        positive_fraction=(values > 0).double().mean().item())


def parameter_rows(model: nn.Module) -> Tuple[List[Dict[str, object]], Dict[str, Dict[str, torch.Tensor]]]:
    """The parameter view: one row per (layer, parameter) with its statistics, and the values themselves by layer.

    A layer shared by several blocks (DIANet's cell) is listed once, under its first call site.
    """
    rows, values = [], {}
    for depth, (name, layer) in enumerate(_unique(attention_modules(model))):
        params = gate_parameters(layer)
        values[name] = params
        for pname, v in params.items():
            rows.append(dict(layer=name, depth=depth, parameter=pname, **_stats(v)))
    return rows, values


def _unique(modules: List[Tuple[str, nn.Module]]) -> List[Tuple[str, nn.Module]]:
    seen, out = set(), []
    for name, m in modules:
        if id(m) not in seen:
            seen.add(id(m))
            out.append((name, m))
    return out


def effective_channel_gate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """g = <y, x> / <x, x> over H x W per sample and channel, (N, C); 1 where x_c is all zero (nothing to scale)."""
    x, y = x.double(), y.double()
    xx = (x * x).sum(dim=(2, 3))
    xy = (x * y).sum(dim=(2, 3))
    return torch.where(xx > 0, xy / xx.clamp_min(1e-300), torch.ones_like(xx)).float()


@dataclass
class Inspection:
    """What ``inspect_model`` found. ``maps``: layer name -> (N, H, W) attention maps, for the spatial layers."""
    param_rows: List[Dict[str, object]]
    param_values: Dict[str, Dict[str, torch.Tensor]]
    gate_rows: List[Dict[str, object]] = field(default_factory=list)
    gates: Dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (N, C) effective channel gates
    maps: Dict[str, torch.Tensor] = field(default_factory=dict)


def _map_hooks(layer: nn.Module, store: Callable[[torch.Tensor], None]) -> List[torch.utils.hooks.RemovableHandle]:
    """Hooks that hand the layer's (N, H, W) attention map to ``store`` (first call of the forward only)."""
    if isinstance(layer, TripletAttention) and layer.SpatialGate is not None:
        return [layer.SpatialGate.register_forward_hook(lambda m, a, out: store(out[:, 0]))]
    if isinstance(layer, GlobalContextBlock) and layer.conv_mask is not None:
        def softmax(m, a, out):
            n, _, h, w = out.shape
            store(out.float().reshape(n, h * w).softmax(dim=1).reshape(n, h, w))
        return [layer.conv_mask.register_forward_hook(softmax)]
    if isinstance(layer, CrissCrossAttention):
        queries: List[torch.Tensor] = []

        def keep_queries(m, a, out):
            queries.append(out)

        def weights_received(m, a, keys):
            if len(queries) != 1:
                return  # only the first of the recurrent passes
            col, row = criss_cross_weights(queries[0], keys)  # (N, H, W, H), (N, H, W, W)
            n, h, w, _ = col.shape
            # the weight each position (j, w) / (h, j) receives, averaged over the H x W queries
            store((col.sum(dim=1).transpose(1, 2) + row.sum(dim=2)) / (h * w))
        return [layer.query_conv.register_forward_hook(keep_queries),
                layer.key_conv.register_forward_hook(weights_received)]
    if isinstance(layer, BilinearAttention):
        return [layer.spatial.register_forward_hook(lambda m, a, out: store(out.float().mean(dim=1)))]
    return []


def inspect_model(model: nn.Module, images: Optional[torch.Tensor] = None) -> Inspection:
    """The parameter view of ``model``, and with ``images`` (a normalised (N, 3, H, W) batch) the activation view
    and the attention maps, from one eval forward pass.

    Raises:
        NoAttentionError: the model holds no attention layer of this package.
    """
    calls = attention_modules(model)
    if not calls:
        raise NoAttentionError(
            f'{type(model).__name__} holds no timm_gct attention layer (none of '
            f'{", ".join(c.__name__ for c in ATTENTION_LAYERS)}); inspect a model such as gct_resnet50.')
    param_rows, param_values = parameter_rows(model)
    result = Inspection(param_rows, param_values)
    if images is None:
        return result

    # DIANet's cell runs once per block: its hooks fire once per call site, in depth order.
    names_of: Dict[int, List[str]] = {}
    for name, m in calls:
        names_of.setdefault(id(m), []).append(name)
    inputs: Dict[int, List[torch.Tensor]] = {}
    records: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []

    def pre_hook(m, args):
        # a copy: the registered models gate their input in place when autograd is off
        inputs.setdefault(id(m), []).append(args[0].detach().clone())

    def post_hook(m, args, out):
        call = len([n for n in records if n in names_of[id(m)]])
        # a copy too: timm's blocks add the shortcut into the attention output in place
        records[names_of[id(m)][call]] = (inputs[id(m)][call], out.detach().clone())

    def map_store(name: str) -> Callable[[torch.Tensor], None]:
        def store(t: torch.Tensor) -> None:  # None: a forward hook that returns a value replaces the output
            result.maps.setdefault(name, t.detach().float())
        return store

    for _, m in _unique(calls):
        handles.append(m.register_forward_pre_hook(pre_hook))
        handles.append(m.register_forward_hook(post_hook))
        handles += _map_hooks(m, map_store(names_of[id(m)][0]))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    for depth, (name, _) in enumerate(calls):
        x, y = records[name]
        gate = effective_channel_gate(x, y)
        result.gates[name] = gate
        batch_mean = gate.mean(dim=0)
        result.gate_rows.append(dict(
            layer=name, depth=depth, channels=gate.shape[1], mean=gate.mean().item(),
            std_over_channels=batch_mean.std().item() if gate.shape[1] > 1 else 0.,
            std_over_batch=gate.std(dim=0).mean().item() if gate.shape[0] > 1 else math.nan,
            min=gate.min().item(), max=gate.max().item()))
    return result
