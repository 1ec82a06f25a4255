""" Official-code reference: Bi-attention (bilinear attention block of BAT-net), for the benchmark only.

Mechanism: per-pixel second-order (bilinear) features of a reduced map gate the input through a spatial branch and a
channel (pooled) branch.
Official code: https://github.com/PengfeiFANGanu/Attention-in-Attention-Networks, ``models/incep_m_bi.py``, classes
    ``BilinearAttention``, ``_dim_change`` and ``ConvBlock``, at commit b5b9822956bb719a167c7bf846207ee0df0268c6.

The forward is the official one: ``dimReduceLayer1`` (conv, BN, ``F.relu``), ``permute(0, 2, 3, 1).contiguous()
.view(-1, R)``, the full per-pixel outer product ``torch.bmm`` (BHW, R, 1) x (BHW, 1, R) -> (BHW, R, R), the R
``torch.diagonal(offset=-i)`` slices concatenated, ``view(B, H, W, -1).permute(0, 3, 1, 2).contiguous()``,
``F.avg_pool2d`` over the whole map -> ``dimReduceLayer3`` (channel branch), ``dimReduceLayer2`` on the bilinear map
(spatial branch), ``mCha * output``, ``F.sigmoid(output) * input_x``. No dtype casts, as in the official code.

Deliberate differences from the official code:
* The reduced width R is taken from our layer (official: hard-coded ``inChannels // 16``); it equals the official
  width unless our layer's ``rd_max`` cap (default 64) or a non-default ``rd_ratio`` changes it.
* ``outChannels`` is our layer's channel count (the official models always pass ``outChannels == inChannels``).
* ``F.sigmoid`` (deprecated) is written ``torch.sigmoid``, the same function.
* No initialisation: ``from_layer`` always copies our layer's values. Parameter and buffer names are the official
  ones (``dimReduceLayer{1,2,3}.conv.{conv,bn}``): ours ``reduce`` -> 1, ``spatial`` -> 2, ``channel`` -> 3. Modules
  are created on our layer's device and dtype.
Our layer's ``act_layer`` is ReLU in the official code (hard-coded ``F.relu``); any other activation is a ValueError.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import BilinearAttention

__all__ = ['OfficialBilinearAttention', 'from_layer']

LAYER = BilinearAttention


class _ConvBlock(nn.Module):
    """The official ``ConvBlock`` as ``_dim_change`` uses it: 1x1 conv with bias, BN, ``F.relu``."""

    def __init__(self, in_c: int, out_c: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, 1, stride=1, padding=0, **dd)
        self.bn = nn.BatchNorm2d(out_c, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _dim_change(in_channels: int, out_channels: int, device=None, dtype=None) -> nn.Sequential:
    """The official ``_dim_change``: a Sequential holding one ConvBlock named 'conv'."""
    return nn.Sequential(OrderedDict(conv=_ConvBlock(in_channels, out_channels, device=device, dtype=dtype)))


class OfficialBilinearAttention(nn.Module):
    """The official ``BilinearAttention`` forward, with the reduced width as an argument."""

    def __init__(self, inChannels: int, outChannels: int, midChannels: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.midChannels = midChannels
        self.dimReduceLayer1 = _dim_change(inChannels, midChannels, **dd)
        self.dimReduceLayer2 = _dim_change(midChannels * (midChannels + 1) // 2, outChannels, **dd)
        self.dimReduceLayer3 = _dim_change(midChannels * (midChannels + 1) // 2, outChannels, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_x = x
        x = self.dimReduceLayer1(x)
        batches, channels, rows, cols = x.size()
        x = x.permute(0, 2, 3, 1).contiguous().view(-1, channels)
        x = torch.bmm(x.unsqueeze(2), x.unsqueeze(1))  # (BHW, R, R): the full outer product per pixel
        x_list = [torch.diagonal(x, offset=-i, dim1=1, dim2=2) for i in range(channels)]
        x = torch.cat(x_list, dim=1)  # (BHW, R(R+1)/2)
        x = x.view(batches, rows, cols, -1)
        x = x.permute(0, 3, 1, 2).contiguous()  # (B, R(R+1)/2, H, W)

        mCha = F.avg_pool2d(x, x.size()[2:])  # channel branch
        mCha = self.dimReduceLayer3(mCha)
        output = self.dimReduceLayer2(x)  # spatial branch
        output = mCha * output
        return torch.sigmoid(output) * input_x

    def extra_repr(self) -> str:
        return f'midChannels={self.midChannels}'


_NAMES = {'reduce': 'dimReduceLayer1', 'spatial': 'dimReduceLayer2', 'channel': 'dimReduceLayer3'}
_SUBMODULES = {'0': 'conv.conv', '1': 'conv.bn'}


def from_layer(layer: BilinearAttention) -> OfficialBilinearAttention:
    """The official block with ``layer``'s settings, parameter and buffer values, device, dtype and mode."""
    for name in _NAMES:
        act = getattr(layer, name)[2]
        if type(act) is not nn.ReLU:
            raise ValueError(
                f'from_layer: BilinearAttention act_layer={type(act).__name__} has no official counterpart; the '
                f'official ConvBlock hard-codes F.relu.')
    conv = layer.reduce[0]
    reference = OfficialBilinearAttention(
        conv.in_channels, layer.spatial[0].out_channels, layer.rd_channels, device=conv.weight.device,
        dtype=conv.weight.dtype)
    state = {}
    for key, value in layer.state_dict().items():  # e.g. reduce.0.weight -> dimReduceLayer1.conv.conv.weight
        branch, index, rest = key.split('.', 2)
        state[f'{_NAMES[branch]}.{_SUBMODULES[index]}.{rest}'] = value
    reference.load_state_dict(state)
    return reference.train(layer.training)
