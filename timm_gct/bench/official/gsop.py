""" GSoP channel attention as the official GSoP-Net code computes it (benchmark reference)

Mechanism: Global Second-order Pooling (GSoP) block, channel mode (attention '1', GSoP-Net1).
Official code: https://github.com/ZilinGao/Global-Second-order-Pooling-Convolutional-Networks at commit 662a699
    (662a6996623f8e2783291fc5efaa16cc30d227ac): ``torchvision/models/resnet.py`` (``Bottleneck.__init__``, its
    ``chan_att`` and the ``pre_att * att`` of its ``forward``) and ``torchvision/models/MPNCOV/python/MPNCOV.py``
    (``Covpool``, a ``torch.autograd.Function`` with a hand-written backward).

Kept from the official code, in its order: ReLU (not in place) on x, the 1x1 reduction conv (with bias and stride),
BN, in-place ReLU; the covariance as ``Covpool`` forms it, Z I_hat Z^T with the M x M centring matrix
I_hat = (I - 1 1^T / M) / M built in the default dtype, cast to Z's dtype, repeated for every sample and saved for
the backward, which is the official (G + G^T) Z I_hat; ``view(N, d, d, 1).contiguous()``, row BN, row-wise group
conv, the 1x1 conv to C channels, sigmoid, and ``x * att``. Parameter names and shapes are the official ones (ours
use the same).

Differences from the official code, to take our layer's settings:
* ``stride`` is a constructor argument; the official ``Bottleneck`` derives it (2 where planes == 64, else 1), which
  is the rule our models pass in.
* It is a module of its own (officially: attributes and a method of ``Bottleneck``); the block's ``pre_att * att``
  is done at the end of ``forward``, as our layer does.
"""

import torch
from torch import nn

from ._mpncov import Covpool
from ...layers import GSoPChannelAttention

__all__ = ['OfficialGSoPChannelAttention', 'from_layer']

LAYER = GSoPChannelAttention


class OfficialGSoPChannelAttention(nn.Module):
    """The official GSoP channel attention (``Bottleneck.chan_att`` and ``pre_att * att``)."""

    def __init__(self, channels: int, att_dim: int = 128, stride: int = 1, device=None, dtype=None):
        """
        Args:
            channels: Input (and output) channels, ``planes * expansion`` officially.
            att_dim: The official ``att_dim`` (128).
            stride: Stride of the reduction conv (official: 2 where planes == 64, else 1).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.ch_dim = att_dim
        self.relu_normal = nn.ReLU(inplace=False)
        self.conv_for_DR = nn.Conv2d(channels, self.ch_dim, kernel_size=1, stride=stride, bias=True, **dd)
        self.bn_for_DR = nn.BatchNorm2d(self.ch_dim, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.row_bn = nn.BatchNorm2d(self.ch_dim, **dd)
        # Row-wise conv as a group conv, as officially.
        self.row_conv_group = nn.Conv2d(
            self.ch_dim, 4 * self.ch_dim, kernel_size=(self.ch_dim, 1), groups=self.ch_dim, bias=True, **dd)
        self.fc_adapt_channels = nn.Conv2d(4 * self.ch_dim, channels, kernel_size=1, groups=1, bias=True, **dd)
        self.sigmoid = nn.Sigmoid()

    def chan_att(self, out: torch.Tensor) -> torch.Tensor:
        out = self.relu_normal(out)
        out = self.conv_for_DR(out)
        out = self.bn_for_DR(out)
        out = self.relu(out)
        out = Covpool.apply(out)  # N x d x d
        out = out.view(out.size(0), out.size(1), out.size(2), 1).contiguous()  # N x d x d x 1
        out = self.row_bn(out)
        out = self.row_conv_group(out)  # N x 4d x 1 x 1
        out = self.fc_adapt_channels(out)  # N x C x 1 x 1
        return self.sigmoid(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre_att = x
        att = self.chan_att(x)
        return pre_att * att


def from_layer(layer: GSoPChannelAttention) -> OfficialGSoPChannelAttention:
    """The official computation with ``layer``'s settings, parameters and BN statistics, on its device and dtype."""
    for name in ('relu_normal', 'relu'):
        if type(getattr(layer, name)) is not nn.ReLU:
            raise ValueError(
                f'GSoP reference: act_layer={type(getattr(layer, name)).__name__} is not supported; the official code '
                f'hard-codes ReLU.')
    weight = layer.conv_for_DR.weight
    ref = OfficialGSoPChannelAttention(
        layer.conv_for_DR.in_channels, att_dim=layer.att_dim, stride=layer.stride,
        device=weight.device, dtype=weight.dtype)
    ref.load_state_dict(layer.state_dict())  # same names and shapes as the official module
    ref.train(layer.training)
    return ref
