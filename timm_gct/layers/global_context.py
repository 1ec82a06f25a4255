""" Global Context (GC) block

Paper: `GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond` - https://arxiv.org/abs/1904.11492
    (ICCV 2019 workshops; TPAMI version https://arxiv.org/abs/2012.13375)
Official code: https://github.com/xvjiarui/GCNet (``mmdet/ops/gcb/context_block.py``, ``ContextBlock``), maintained as
    ``mmcv/cnn/bricks/context_block.py``

Math, for an (N, C, H, W) input x and P = int(C * rd_ratio) hidden channels:
    m       = softmax_hw(W_k x + b_k)                                  attention pooling, W_k: 1x1 conv C -> 1
    context = sum_hw m_hw * x_hw                                       (N, C, 1, 1); 'avg' pooling uses the mean
    t(.)    = Conv_{P->C}(ReLU(LayerNorm_{[P,1,1]}(Conv_{C->P}(.))))   transform, 1x1 convs with bias
    out     = x + t_add(context)                                       'channel_add' fusion (official default)
            = x * sigmoid(t_mul(context))                              'channel_mul' fusion (applied before add)
The last conv of each transform starts at zero (weight and bias), so with 'channel_add' the block is the identity at
init. The official ImageNet and COCO models use add fusion only, ratio 1/16 (r16) or 1/4 (r4), in stages c3-c5.

Initialisation inside timm's ResNet: ``ResNet.init_weights`` re-initialises every Conv2d (kaiming, fan_out) and then
calls ``zero_init_last()`` on every module that has it. This block uses that call to restore its own official
initialisation (mask conv kaiming fan_in with zero bias, transform convs PyTorch default, last convs zero), so it
starts as the identity in a ResNet exactly as it does on its own.

Differences from timm's ``GlobalContext`` ('gc' / 'gca' in ``timm.layers.get_attn``): timm's defaults to scale
fusion with rd_ratio 1/8, its LayerNorm2d uses eps 1e-6 instead of 1e-5, and its zero init of the last conv is
overwritten by ResNet's init. Note that ``timm_gct.layers.get_attn('gc')`` returns this block, not timm's.

Deviations from the official code: none in the math. Argument names follow timm (``rd_ratio`` for ``ratio``); the
submodule names (``conv_mask``, ``channel_add_conv.{0,1,3}``, ``channel_mul_conv``) follow the official code so its
checkpoints map key for key. Two changes for speed, the same sums in another order: the mask's 1x1 conv C -> 1 is
computed as a batched matrix product (``_MaskConv``, an ``nn.Conv2d`` with the same parameters and output), and the
context as (1 x HW) @ (HW x C) per sample instead of (C x HW) @ (HW x 1). On the CPU both are several times faster
than the official operations (the convolution kernel for one output channel, and that orientation of the batched
product); in a ResNet-50 the attention pooling was most of the block's cost.
"""
from typing import Sequence

import torch
from torch import nn
from timm.layers import LayerType, create_act_layer

from ._checks import check_act_layer, check_channels, check_choice, reduced_channels

__all__ = ['GlobalContextBlock']

_FUSION_TYPES = ('channel_add', 'channel_mul')


class GlobalContextBlock(nn.Module):
    """GC block, a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            rd_ratio: float = 1. / 16,
            pooling_type: str = 'att',
            fusion_types: Sequence[str] = ('channel_add',),
            act_layer: LayerType = nn.ReLU,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels.
            rd_ratio: Hidden width of the transform as a fraction of ``channels`` (official ``ratio``): 1/16 (r16,
                default) or 1/4 (r4) in the paper; int(channels * rd_ratio) must be at least 1.
            pooling_type: 'att' (attention pooling, official default) or 'avg' (global average pooling).
            fusion_types: Non-empty subset of ('channel_add', 'channel_mul'); official default ('channel_add',).
            act_layer: Activation inside the transform (official: ReLU).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        name = type(self).__name__
        check_channels(name, channels)
        check_choice(name, 'pooling_type', pooling_type, ('att', 'avg'))
        if isinstance(fusion_types, str) or not fusion_types or len(set(fusion_types)) != len(fusion_types) \
                or not set(fusion_types) <= set(_FUSION_TYPES):
            raise ValueError(
                f'{name}: fusion_types={fusion_types!r} is not allowed; expected a non-empty sequence of distinct '
                f'values from {_FUSION_TYPES}.')
        planes = reduced_channels(name, channels, rd_ratio, 'hidden channels')
        check_act_layer(name, act_layer)
        self.pooling_type = pooling_type
        self.fusion_types = tuple(fusion_types)

        self.conv_mask = _MaskConv(channels, **dd) if pooling_type == 'att' else None
        self.channel_add_conv = _transform(channels, planes, act_layer, **dd) if 'channel_add' in fusion_types else None
        self.channel_mul_conv = _transform(channels, planes, act_layer, **dd) if 'channel_mul' in fusion_types else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: the block is the identity with 'channel_add' fusion."""
        if self.conv_mask is not None:
            nn.init.kaiming_normal_(self.conv_mask.weight, mode='fan_in', nonlinearity='relu')
            nn.init.zeros_(self.conv_mask.bias)
        for transform in (self.channel_add_conv, self.channel_mul_conv):
            if transform is not None:
                for m in transform:
                    if hasattr(m, 'reset_parameters'):
                        m.reset_parameters()
                nn.init.zeros_(transform[-1].weight)
                nn.init.zeros_(transform[-1].bias)

    def zero_init_last(self) -> None:
        """Called by timm's ResNet after it re-initialised every Conv2d: restore this block's own init."""
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if self.conv_mask is not None:
            mask = self.conv_mask(x).reshape(B, 1, H * W).softmax(dim=2)
            # (1 x HW) @ (HW x C) per sample: the same sum as (C x HW) @ (HW x 1), which the CPU's batched matrix
            # product runs several times slower
            context = torch.bmm(mask.to(x.dtype), x.reshape(B, C, H * W).transpose(1, 2)).reshape(B, C, 1, 1)
        else:
            context = x.mean(dim=(2, 3), keepdim=True)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context)).to(x.dtype)
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context).to(x.dtype)
        return out

    def extra_repr(self) -> str:
        return f'pooling_type={self.pooling_type!r}, fusion_types={self.fusion_types}'


class _MaskConv(nn.Conv2d):
    """The attention-pooling mask's 1x1 convolution C -> 1 (W_k x + b_k), computed as a batched matrix product: the
    same function and parameters as the official ``nn.Conv2d``, but on the CPU the convolution kernel for a single
    output channel is several times slower, in the forward and the backward. Its output keeps the conv's (N, 1, H, W)
    shape, so forward hooks see what they would on the official module."""

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__(channels, 1, kernel_size=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        weight = self.weight.reshape(1, 1, C).expand(B, 1, C)
        bias = self.bias
        if bias is None:
            logits = torch.bmm(weight, x.reshape(B, C, H * W))
        else:
            logits = torch.baddbmm(bias.reshape(1, 1, 1), weight, x.reshape(B, C, H * W))
        return logits.reshape(B, 1, H, W)


def _transform(channels: int, planes: int, act_layer: LayerType, device=None, dtype=None) -> nn.Sequential:
    dd = {'device': device, 'dtype': dtype}
    return nn.Sequential(
        nn.Conv2d(channels, planes, kernel_size=1, **dd),
        nn.LayerNorm([planes, 1, 1], **dd),
        create_act_layer(act_layer, inplace=True),
        nn.Conv2d(planes, channels, kernel_size=1, **dd),
    )
