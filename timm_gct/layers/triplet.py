""" Triplet Attention

Paper: `Rotate to Attend: Convolutional Triplet Attention Module` - https://arxiv.org/abs/2010.03045 (WACV 2021)
Official code: https://github.com/landskape-ai/triplet-attention (``MODELS/triplet_attention.py``, the version that
    trained the released weights, and ``MODELS/resnet.py`` for placement and init; commit 2cf02fb). The repository
    root's ``triplet_attention.py`` is a later refactor with the same math and other names.

Math, for an (N, C, H, W) input x. Z-pool over one dimension d stacks the max and the mean over d as 2 channels;
each gate is a k x k conv (2 -> 1, no bias, padding (k-1)/2), a BatchNorm2d(1, eps 1e-5, momentum 0.01), a sigmoid:
    g_cw = gate_H(zpool_H(x))    on the (C, W) plane   official ChannelGateH, on x.permute(0, 2, 1, 3)
    g_hc = gate_W(zpool_W(x))    on the (H, C) plane   official ChannelGateW, on x.permute(0, 3, 2, 1)
    g_hw = gate_C(zpool_C(x))    on the (H, W) plane   official SpatialGate, on x
    out  = (x * g_cw + x * g_hc + x * g_hw) / 3          (x * g_cw + x * g_hc) / 2 with ``no_spatial``
Official defaults: k = 7 (hard-coded; the README's k = 3 models must have been trained with it edited to 3),
no_spatial False.
Parameters per layer: 3 * (2 k^2 + 2), 300 for k = 7; independent of the channel count.

Initialisation: the released models were trained with the init loop of ``MODELS/resnet.py``, which walks the state
dict by key name: every ``conv`` weight gets kaiming normal (fan_out, gain sqrt(2)), every ``bn`` weight 1 except those
under ``SpatialGate``, which get 0, and every bias 0. Its effect on this layer (reproduced in ``reset_parameters``) is
that only the H x W branch starts with BN gamma = 0, i.e. that gate is a constant 0.5 at init. timm's
``ResNet.init_weights`` re-draws every Conv2d weight from kaiming normal (fan_out, relu), the same distribution as
the official loop, and leaves BatchNorm alone; ``zero_init_last()`` re-zeroes the H x W gamma all the same, for
models whose own init resets BatchNorms before calling it.

Placement: after the last BN of every residual block of every stage (BasicBlock and Bottleneck), before the residual
add, as timm's ``attn_layer`` hook does. The layer is bias-free and channel-count independent: the ``channels``
argument is only checked, like the official ``gate_channels`` (unused there).

Submodule names follow the official training code, ``ChannelGateH``, ``ChannelGateW``, ``SpatialGate``, each with
``spatial.conv`` and ``spatial.bn``, so keys such as ``layer1.0.se.SpatialGate.spatial.bn.weight`` map one to one to
the training code's keys. The released checkpoints' key names match neither code version (maintainers, issues #9,
#12): the ResNet-50 k = 7 file is reported to load into the ``MODELS`` code with the block attribute named ``pcam``
(so ``pcam.`` -> ``se.``), and issue #9 reports the refactored names ``cw`` / ``hc`` / ``hw`` with ``conv.conv`` /
``conv.bn`` under ``triplet`` (map cw -> ChannelGateH, hc -> ChannelGateW, hw -> SpatialGate, and .conv.conv /
.conv.bn -> .spatial.conv / .spatial.bn). Inspect a checkpoint's keys before converting it.

Deviations from the official code, all without a change of math:
* The branches are not computed on ``permute().contiguous()`` copies of x: each Z-pool reduces x in place along its
  dimension and the small pooled planes are transposed into the official orientation (the conv kernel is not
  symmetric, so the orientation matters), and the three gates are summed before one multiply with x. Same values up
  to rounding, without the four full-size permuted copies of x (3x faster than the permute version on CPU at
  (8, 256, 56, 56), the same at (8, 2048, 7, 7)).
* Without autograd (eval under ``torch.no_grad`` / ``inference_mode``) the Z-pools take ``amax`` (the max's values
  without its indices, several times faster on the CPU), and the gates, each scaled by 1/3 first, are summed and
  multiplied with x in one feature-map buffer in x's memory format (``_apply_gates``): x is left alone and the layer
  allocates a single map (two with autograd: the gate and the product). With autograd the Z-pools keep ``torch.max``
  (ties pass the gradient to a single element, as officially) and the product stays ``x * gate``, whose backward is the
  cheapest.
* The gate is cast to the input dtype, so the output keeps the input dtype under autocast.
* ``kernel_size`` is a constructor argument (hard-coded 7 in the official file) and must be an odd int >= 1.

Note on weight decay: the official recipe decays every parameter (SGD, 1e-4); timm's optimizer factory decays the
conv weights but not the 1-D BN parameters.
"""
from collections import OrderedDict
from typing import List, Optional

import torch
import torch.fx
from torch import nn
from timm.layers import LayerType, register_notrace_function

from ._checks import check_bool, check_channels, check_odd_kernel
from ._gating import autograd_records, in_place_allowed

__all__ = ['TripletAttention']


class _ZPoolGate(nn.Module):
    """One branch's gate on an already Z-pooled (N, 2, A, B) plane: sigmoid(BN(conv(pooled))), shape (N, 1, A, B)."""

    def __init__(self, kernel_size: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.spatial = nn.Sequential(OrderedDict([
            ('conv', nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False, **dd)),
            ('bn', nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, **dd)),
        ]))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.spatial(pooled))


@torch.jit.unused
def _values_only(x: torch.Tensor) -> bool:
    return not autograd_records(x)


@register_notrace_function  # a leaf for torch.fx: it picks max or amax at run time
def _zpool(x: torch.Tensor, dim: int) -> torch.Tensor:
    # torch.max(dim) (not amax) when autograd records, so that ties pass the gradient to a single element, as in the
    # official code. Without autograd only the values count, and amax (no indices) gives them several times faster.
    if torch.jit.is_scripting() or not _values_only(x):
        pooled_max = torch.max(x, dim)[0]
    else:
        pooled_max = torch.amax(x, dim)
    return torch.stack((pooled_max, torch.mean(x, dim)), dim=1)


torch.fx.wrap('_zpool')


@register_notrace_function  # a leaf for torch.fx: the path it takes depends on autograd at run time
def _apply_gates(x: torch.Tensor, gates: List[torch.Tensor]) -> torch.Tensor:
    """x * sum(gates), the broadcast gates summed into one full-size buffer. Without autograd that buffer (in x's
    memory format) also takes the product: one feature map allocated instead of the two of the autograd path."""
    if torch.jit.is_scripting() or not in_place_allowed([x] + gates):
        gate = gates[0] + gates[1]
        for g in gates[2:]:
            gate.add_(g)  # the sum's backward needs no values: add in place
        return x * gate.to(x.dtype)
    gate = torch.add(gates[0], gates[1], out=torch.empty_like(x, dtype=torch.result_type(gates[0], gates[1])))
    for g in gates[2:]:
        gate.add_(g)
    return gate.to(x.dtype).mul_(x)


torch.fx.wrap('_apply_gates')


class TripletAttention(nn.Module):
    """Triplet attention, a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            kernel_size: int = 7,
            no_spatial: bool = False,
            act_layer: Optional[LayerType] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels; checked, otherwise unused (the gates do not depend on
                it).
            kernel_size: Side k of the k x k conv of each gate, an odd int >= 1 (official default 7; 3 for the
                README's k = 3 models).
            no_spatial: Drop the H x W branch and average the other two (official option, off by default).
            act_layer: Accepted and ignored, so the layer also fits timm's cspnet / efficientnet attention hooks.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        name = type(self).__name__
        check_channels(name, channels)
        check_odd_kernel(name, kernel_size)
        check_bool(name, 'no_spatial', no_spatial)
        self.kernel_size = kernel_size
        self.no_spatial = no_spatial
        self.ChannelGateH = _ZPoolGate(kernel_size, **dd)
        self.ChannelGateW = _ZPoolGate(kernel_size, **dd)
        self.SpatialGate = None if no_spatial else _ZPoolGate(kernel_size, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The effect of the official training ResNet's init loop on this layer (see the module docstring)."""
        for gate in (self.ChannelGateH, self.ChannelGateW, self.SpatialGate):
            if gate is not None:
                nn.init.kaiming_normal_(gate.spatial.conv.weight, mode='fan_out', nonlinearity='relu')
                gate.spatial.bn.reset_parameters()
        self.zero_init_last()

    def zero_init_last(self) -> None:
        """Zero the H x W branch's BN gamma, as the official init does; called again by timm's ResNet init."""
        if self.SpatialGate is not None:
            nn.init.zeros_(self.SpatialGate.spatial.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 0.5 if self.SpatialGate is None else 1. / 3
        # (C, W) plane, pooled over H; gate (N, 1, C, W) -> (N, C, 1, W).
        gates = [self.ChannelGateH(_zpool(x, 2)).transpose(1, 2) * scale]
        # (H, C) plane, pooled over W; gate (N, 1, H, C) -> (N, C, H, 1).
        gates.append(self.ChannelGateW(_zpool(x, 3).transpose(2, 3)).permute(0, 3, 2, 1) * scale)
        if self.SpatialGate is not None:
            # (H, W) plane, pooled over C; gate (N, 1, H, W).
            gates.append(self.SpatialGate(_zpool(x, 1)) * scale)
        return _apply_gates(x, gates)

    def extra_repr(self) -> str:
        return f'kernel_size={self.kernel_size}, no_spatial={self.no_spatial}'
