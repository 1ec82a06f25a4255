""" Official-code reference: Global Context (GC) block, for the benchmark only.

Mechanism: GCNet's global context block (attention pooling, bottleneck transform with LayerNorm, add / mul fusion).
Official code: https://github.com/xvjiarui/GCNet, ``mmdet/ops/gcb/context_block.py``, class ``ContextBlock``, at
    commit 029db5407dc27147eb1d41f62b09dfed8ec88837.

The forward is the official one, operation for operation: ``x.view(N, C, HW).unsqueeze(1)``, the 1x1 mask conv,
``view(N, 1, HW)``, ``nn.Softmax(dim=2)``, ``unsqueeze(-1)``, a 4-D ``torch.matmul`` (N, 1, C, HW) x (N, 1, HW, 1),
``view(N, C, 1, 1)`` (``nn.AdaptiveAvgPool2d(1)`` for 'avg' pooling), then mul fusion before add fusion with no dtype
casts. As in the official code, ``x.view`` needs a contiguous (NCHW) input: a channels_last input raises there.

Deliberate differences from the official code:
* The hidden width is passed as ``planes`` (our layer's int(channels * rd_ratio)) instead of ``ratio``, so that no
  float round trip can change it; the official ``int(inplanes * ratio)`` gives the same width.
* No initialisation (the official ``reset_parameters``, mmcv kaiming / zero init): ``from_layer`` always copies our
  layer's values. Parameter names and shapes are the official ones, the same as our layer's.
* Modules are created on our layer's device and dtype.
Our layer's ``act_layer`` is ReLU in the official code (hard-coded); any other activation is a ValueError.
"""
from typing import Sequence

import torch
from torch import nn

from ...layers import GlobalContextBlock

__all__ = ['OfficialContextBlock', 'from_layer']

LAYER = GlobalContextBlock


class OfficialContextBlock(nn.Module):
    """The official ``ContextBlock`` forward, taking the hidden width directly."""

    def __init__(
            self,
            inplanes: int,
            planes: int,
            pooling_type: str = 'att',
            fusion_types: Sequence[str] = ('channel_add',),
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.inplanes = inplanes
        self.planes = planes
        self.pooling_type = pooling_type
        self.fusion_types = tuple(fusion_types)
        if pooling_type == 'att':
            self.conv_mask = nn.Conv2d(inplanes, 1, kernel_size=1, **dd)
            self.softmax = nn.Softmax(dim=2)
        else:
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.channel_add_conv = self._transform(**dd) if 'channel_add' in fusion_types else None
        self.channel_mul_conv = self._transform(**dd) if 'channel_mul' in fusion_types else None

    def _transform(self, device=None, dtype=None) -> nn.Sequential:
        dd = {'device': device, 'dtype': dtype}
        return nn.Sequential(
            nn.Conv2d(self.inplanes, self.planes, kernel_size=1, **dd),
            nn.LayerNorm([self.planes, 1, 1], **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(self.planes, self.inplanes, kernel_size=1, **dd),
        )

    def spatial_pool(self, x: torch.Tensor) -> torch.Tensor:
        batch, channel, height, width = x.size()
        if self.pooling_type == 'att':
            input_x = x.view(batch, channel, height * width).unsqueeze(1)  # (N, 1, C, HW)
            context_mask = self.conv_mask(x).view(batch, 1, height * width)  # (N, 1, HW)
            context_mask = self.softmax(context_mask).unsqueeze(-1)  # (N, 1, HW, 1)
            context = torch.matmul(input_x, context_mask)  # (N, 1, C, 1)
            context = context.view(batch, channel, 1, 1)
        else:
            context = self.avg_pool(x)
        return context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.spatial_pool(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out

    def extra_repr(self) -> str:
        return f'pooling_type={self.pooling_type!r}, fusion_types={self.fusion_types}'


def from_layer(layer: GlobalContextBlock) -> OfficialContextBlock:
    """The official block with ``layer``'s settings, parameter and buffer values, device, dtype and mode."""
    transforms = [t for t in (layer.channel_add_conv, layer.channel_mul_conv) if t is not None]
    for t in transforms:
        if type(t[2]) is not nn.ReLU:
            raise ValueError(
                f'from_layer: GlobalContextBlock act_layer={type(t[2]).__name__} has no official counterpart; the '
                f'official ContextBlock hard-codes ReLU.')
    first = transforms[0][0]
    reference = OfficialContextBlock(
        first.in_channels, first.out_channels, layer.pooling_type, layer.fusion_types,
        device=first.weight.device, dtype=first.weight.dtype)
    reference.load_state_dict(layer.state_dict())  # the same names and shapes as the official code
    return reference.train(layer.training)
