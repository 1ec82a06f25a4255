""" GCT-ResNet as in the official PyTorch code: a GCT in front of every convolution

Paper: `Gated Channel Transformation for Visual Recognition` - https://arxiv.org/abs/1909.11519 (CVPR 2020)
Official code: https://github.com/z-x-yang/GCT (``PyTorch/resnet.py``, a maskrcnn-benchmark backbone, and
    ``PyTorch/GCT.py``; commit 68983ed)

Placement, as in the official ResNet: every convolution reads its input through its own GCT, sized to the conv's
input channels. That is the stem conv (``GCT(3)`` on the RGB image), each bottleneck's conv1, conv2 and conv3, and
each downsample conv. The strided first block of a stage carries the stride on its first 1x1 conv (the original
MSRA ResNet, ``stride_in_1x1=True``), not on the 3x3 conv as timm and torchvision do. There is no attention after the
last BN (the ``attn_layer`` hook of ``timm_gct.models.attn_resnet`` is not used).

Built on timm's own ``ResNet`` with two post-construction steps: each ``nn.Conv2d`` is replaced by a ``GctConv2d``
(an ``nn.Conv2d`` that holds its GCT as the child ``gct`` and applies it to the input), and the stride moves from
conv2 to conv1 wherever conv2 is strided. The conv weights therefore keep timm's keys (``conv1.weight``,
``layer1.0.conv1.weight``), each GCT adds ``<conv>.gct.{alpha,gamma,beta}``, and timm's ``first_conv``,
``feature_info``, ``features_only`` and the other ResNet options keep working. The rest of the official network
matches timm's ResNet-50 as it is: plain ``nn.BatchNorm2d`` (the official ``*WithFixedBatchNorm`` classes use
``nn.BatchNorm2d``), a 7x7/2 stem conv with padding 3, a 3x3/2 max-pool with padding 1, 3x3 convs with padding 1,
1x1 downsample convs, global average pooling and a ``Linear(2048, 1000)`` with bias. Initialisation is the official
one: every conv weight ``kaiming_uniform_(a=1)``, BN weights 1 and biases 0 (``zero_init_last`` defaults to False:
the official code does not zero the last BN of a block), the classifier PyTorch's default.

Models: ``gct_resnet{50,101,152}_official``. The official file builds ResNet-50 only (``ResNet50FPNStagesTo5``);
ResNet-101 and -152 are the same construction with the usual block counts (3, 4, 23, 3) and (3, 8, 36, 3), as in the
paper's TensorFlow results. Weights: GCT-ResNet-50 (77.2 % top-1) on Google Drive only,
https://drive.google.com/file/d/1y5a56UzBjUWlWwlrU42lxueJY_cBpWLL; convert it with ``timm-gct convert`` (see
``timm_gct.convert`` for the key mapping).

Deviations from the official code:
* GCT's ``beta`` is stored 1-D, shape (C,), where the official code uses (1, C, 1, 1) (see
  ``timm_gct.layers.gct``): timm's optimizer factory then leaves beta out of weight decay, as the official recipe
  does; the converter reshapes it. GCT's spatial sums accumulate in float32 (same math).
* Each GCT lives inside its conv (``conv1.gct``), not in an ``nn.Sequential(GCT, Conv2d)`` (``conv1.0`` /
  ``conv1.1``), and the stem is not a separate ``stem`` module, so the keys differ from the official checkpoint's;
  ``timm_gct.convert`` renames them.
* The official ``Conv2d`` subclass only adds a path for empty inputs, which ``nn.Conv2d`` handles itself today; it
  is not reproduced.
* Options the official code does not have (e.g. ``stem_type='deep'``, ``avg_down``, ``output_stride``) get a GCT in
  front of every conv they add; with ``aa_layer`` the stride stays with the anti-aliasing layer after conv2.
"""
from typing import Any, Dict

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet

from ..layers.gct import GatedChannelTransform
from .attn_resnet import _cfg as _attn_resnet_cfg

__all__ = ['GctConv2d']  # register_model adds each entrypoint fn to this


class GctConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that passes its input through a GatedChannelTransform (child ``gct``) first."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, **kwargs: Any):
        """Arguments as ``nn.Conv2d``; the GCT gets ``in_channels`` and the same device and dtype."""
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        self.gct = GatedChannelTransform(in_channels, device=self.weight.device, dtype=self.weight.dtype)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> 'GctConv2d':
        """A GctConv2d with the geometry, device and dtype of ``conv`` (weights are not copied)."""
        return cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # _conv_forward rather than super().forward(): TorchScript cannot compile super() calls.
        return self._conv_forward(self.gct(x), self.weight, self.bias)


def _gct_before_every_conv(model: nn.Module) -> None:
    """Replace every plain nn.Conv2d by a GctConv2d, initialised as the official code does."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d:  # exact type: a GctConv2d is an nn.Conv2d too
                conv = GctConv2d.from_conv(child)
                nn.init.kaiming_uniform_(conv.weight, a=1)  # official init of every conv (resnet.py)
                setattr(parent, name, conv)


def _stride_in_1x1(model: ResNet) -> None:
    """Move the stride of each strided bottleneck from the 3x3 conv2 to the 1x1 conv1 (MSRA ResNet v1)."""
    for stage_idx in range(1, 5):
        for block in getattr(model, f'layer{stage_idx}'):
            if block.conv2.stride != (1, 1):
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


def _build_gct_official_resnet(**kwargs: Any) -> ResNet:
    model = ResNet(**kwargs)
    _stride_in_1x1(model)
    _gct_before_every_conv(model)
    return model


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # The official PyTorch main.py evaluates with Resize(256) + CenterCrop(224), bilinear: the shared defaults.
    return _attn_resnet_cfg(
        paper_name='Gated Channel Transformation for Visual Recognition', paper_ids='arXiv:1909.11519',
        origin_url='https://github.com/z-x-yang/GCT', **kwargs)


_NO_WEIGHTS = 'No released weights for this depth (the official PyTorch release is GCT-ResNet-50 only).'

# timm reads ``default_cfgs`` when ``register_model`` runs, so it must be defined above the entrypoints.
default_cfgs = generate_default_cfgs({
    'gct_resnet50_official': _cfg(notes=(
        'Official weights (77.2 % top-1 per the authors\' PyTorch/README.md): '
        'https://drive.google.com/file/d/1y5a56UzBjUWlWwlrU42lxueJY_cBpWLL '
        '(Google Drive only); convert them with `timm-gct convert`.',
    )),
    'gct_resnet101_official': _cfg(notes=(_NO_WEIGHTS,)),
    'gct_resnet152_official': _cfg(notes=(_NO_WEIGHTS,)),
})


def _create_gct_official_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNet:
    # The official code keeps every BN weight at 1; timm's default would zero each block's bn3.
    kwargs.setdefault('zero_init_last', False)
    return build_model_with_cfg(_build_gct_official_resnet, variant, pretrained, **kwargs)


@register_model
def gct_resnet50_official(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """GCT-ResNet-50 as in the official PyTorch code: a GCT before every conv, stride in the first 1x1 conv."""
    return _create_gct_official_resnet(
        'gct_resnet50_official', pretrained, **dict(dict(block=Bottleneck, layers=(3, 4, 6, 3)), **kwargs))


@register_model
def gct_resnet101_official(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """GCT-ResNet-101, built as the official GCT-ResNet-50: a GCT before every conv, stride in the first 1x1 conv."""
    return _create_gct_official_resnet(
        'gct_resnet101_official', pretrained, **dict(dict(block=Bottleneck, layers=(3, 4, 23, 3)), **kwargs))


@register_model
def gct_resnet152_official(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """GCT-ResNet-152, built as the official GCT-ResNet-50: a GCT before every conv, stride in the first 1x1 conv."""
    return _create_gct_official_resnet(
        'gct_resnet152_official', pretrained, **dict(dict(block=Bottleneck, layers=(3, 8, 36, 3)), **kwargs))
