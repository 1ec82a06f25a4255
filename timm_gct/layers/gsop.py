""" Global Second-order Pooling (GSoP) block, channel mode (GSoP-Net1)

Paper: `Global Second-order Pooling Convolutional Networks` - https://arxiv.org/abs/1811.12006 (CVPR 2019)
Official code: https://github.com/ZilinGao/Global-Second-order-Pooling-Convolutional-Networks
    (``torchvision/models/resnet.py``, ``Bottleneck.chan_att``; covariance in
    ``torchvision/models/MPNCOV/python/MPNCOV.py``, ``Covpool``; placement in ``main.py``; commit 662a699)

Math, channel mode (the official default, attention '1'), for an (N, C, H, W) input x and d = ``att_dim`` (128):
    Z   = ReLU(BN(Conv1x1_{C->d, stride}(ReLU(x))))                  ReLU(x) is not in place: x itself is kept
    S   = (1/M) (Z - mean_M Z)(Z - mean_M Z)^T                        d x d covariance over the M = H'W' positions
    R   = RowConv(RowBN(S))       S viewed as (N, d, d, 1): BatchNorm2d(d) treats each row as a channel; RowConv is
                                  Conv2d(d, 4d, kernel (d, 1), groups=d, bias): 4 outputs from each row
    out = x * sigmoid(Conv1x1_{4d->C}(R))                              with bias; no nonlinearity before it
The official ``Covpool`` builds S as Z Ibar Z^T with Ibar = (1/M)(I - (1/M) 1 1^T), an M x M matrix per sample
(9.8 M entries at 56 x 56); centring Z first gives the same matrix without it.

Official defaults: d = 128, convs initialised kaiming normal (fan_out, ReLU), BN weight 1 and bias 0 (the
initialisation timm's ResNet applies as well). The reduction conv has stride 2 when the block's ``planes`` is 64
(stage 1) and 1 otherwise; the gate is (N, C, 1, 1), so computed on the strided map it still scales every position
of x. ``stride`` is that constructor argument.

Placement (``main.py``): only the last block of each of the four stages, after the last BN and before the add; the
official ResNet also sets layer4's stride to 1 (a 14 x 14 final map at 224, ``AvgPool2d(14)``). Both are the
model's business: this layer only knows ``channels`` and ``stride``. The official code has the block in its
Bottleneck only (ResNet-50/101); in a BasicBlock ResNet the same rules are an extension.

Deviations from the official code, none in the math:
* S is formed from the centred Z (no M x M matrix) in float32 (float64 stays float64) with autocast disabled, and
  the row BN, the row conv and the last 1x1 conv stay in float32 up to the sigmoid, whose gate is cast back to x's
  dtype: at 2048 channels and RMS 100 the entries of S pass float16's 65504. In a float16 layer those three keep
  float16 parameters and running statistics (``UpcastBatchNorm2d``, ``UpcastConv2d``). (A TorchScript-compiled
  layer cannot switch autocast off.)
* Only the channel mode is implemented (no position or fusion modes).
"""
import torch
import torch.fx
from torch import nn
from timm.layers import LayerType, create_act_layer, register_notrace_function

from ._checks import check_act_layer, check_channels, check_int
from ._precision import UpcastBatchNorm2d, UpcastConv2d, upcast, without_autocast
from ._reduce import covariance

__all__ = ['GSoPChannelAttention']


@register_notrace_function
def channel_covariance(z: torch.Tensor) -> torch.Tensor:
    """Biased covariance (N, C, C) of the channels of an (N, C, H, W) map, in float32 (float64 for float64)."""
    feats = upcast(z).flatten(2)
    if torch.jit.is_scripting():
        cov = covariance(feats)
    else:
        cov = without_autocast(covariance, feats)
    return cov


torch.fx.wrap('channel_covariance')


class GSoPChannelAttention(nn.Module):
    """GSoP block in channel mode, a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            att_dim: int = 128,
            stride: int = 1,
            act_layer: LayerType = nn.ReLU,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels.
            att_dim: Channels d after the reduction conv; the covariance is d x d (official: 128).
            stride: Stride of the reduction conv (official: 2 in stage 1, where planes == 64, else 1).
            act_layer: The activation on x and after the reduction BN (official: ReLU for both).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        name = type(self).__name__
        check_channels(name, channels)
        check_int(name, 'att_dim', att_dim)
        check_int(name, 'stride', stride)
        check_act_layer(name, act_layer)
        self.att_dim = att_dim
        self.stride = stride
        # Submodule names follow the official Bottleneck.
        self.relu_normal = create_act_layer(act_layer, inplace=False)
        self.conv_for_DR = nn.Conv2d(channels, att_dim, kernel_size=1, stride=stride, bias=True, **dd)
        self.bn_for_DR = nn.BatchNorm2d(att_dim, **dd)
        self.relu = create_act_layer(act_layer, inplace=True)
        # S is float32 (see the deviations), and so is what these three compute from it
        self.row_bn = UpcastBatchNorm2d(att_dim, **dd)
        self.row_conv_group = UpcastConv2d(
            att_dim, 4 * att_dim, kernel_size=(att_dim, 1), groups=att_dim, bias=True, **dd)
        self.fc_adapt_channels = UpcastConv2d(4 * att_dim, channels, kernel_size=1, bias=True, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation (the ResNet-wide one): convs kaiming normal fan_out, BN weight 1, bias 0."""
        for m in (self.conv_for_DR, self.row_conv_group, self.fc_adapt_channels):
            m.reset_parameters()  # PyTorch's default bias init, which the official code keeps
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        for bn in (self.bn_for_DR, self.row_bn):
            bn.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.relu(self.bn_for_DR(self.conv_for_DR(self.relu_normal(x))))
        cov = channel_covariance(z).unsqueeze(-1)  # (N, d, d, 1): each row of S is a BN channel
        att = self.fc_adapt_channels(self.row_conv_group(self.row_bn(cov)))
        return x * torch.sigmoid(att).to(x.dtype)

    def extra_repr(self) -> str:
        return f'att_dim={self.att_dim}, stride={self.stride}'
