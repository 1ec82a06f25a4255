""" Gated Channel Transformation (GCT)

Paper: `Gated Channel Transformation for Visual Recognition` - https://arxiv.org/abs/1909.11519 (CVPR 2020)
Official code: https://github.com/z-x-yang/GCT (``PyTorch/GCT.py``)

Math, mode 'l2' (the default), per sample and channel c of an (N, C, H, W) input x:
    s_c   = alpha_c * sqrt(sum_hw x_c^2 + eps)                 global context embedding
    s'_c  = gamma_c * s_c / sqrt(mean_c(s_c^2) + eps)           channel normalisation (sqrt(C) * s_c / ||s||_2)
    out_c = x_c * (1 + tanh(s'_c + beta_c))                     gating adaptation
Mode 'l1' uses s_c = alpha_c * sum_hw |x_c| (sum_hw x_c with ``after_relu``) and s'_c = gamma_c * s_c /
(mean_c |s_c| + eps). alpha = 1 and gamma = beta = 0 at init, so the gate is exactly 1: the layer is the identity.

Deviations from the official code, all without a change of math:
* The spatial reductions accumulate in float32 (float64 for float64 input) and the gate is cast back to the input
  dtype; the official code sums x^2 in the input dtype and overflows to inf/NaN in pure float16.
* ``beta`` is stored 1-D, shape (C,), where the official code uses (1, C, 1, 1). timm's optimizer factory leaves 1-D
  parameters out of weight decay, which reproduces the official recipe (weight decay on everything but beta);
  alpha and gamma keep their 4-D shape and are decayed, as officially.
* An unknown mode is a ValueError at construction (the official code calls an unimported ``sys.exit``).

Placement: the official ResNets put a GCT in front of every convolution (stride in the first 1x1 conv; registered
as ``gct_resnet*_official``); timm's ``attn_layer`` hook places one per residual block after the last BN. The
authors' README reports that one GCT per block costs only 0.1-0.2 % top-1 on ImageNet, but placed before the first
or the last 1x1 conv, not after the last BN.
"""
from typing import Optional

import torch
import torch.fx
from torch import nn
from timm.layers import LayerType

from ._checks import check_channels, check_choice, check_positive
from ._reduce import spatial_sum

__all__ = ['GatedChannelTransform']

torch.fx.wrap('spatial_sum')


class GatedChannelTransform(nn.Module):
    """Gated Channel Transformation, a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            mode: str = 'l2',
            eps: float = 1e-5,
            after_relu: bool = False,
            act_layer: Optional[LayerType] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels.
            mode: Global context embedding, 'l2' (official default) or 'l1'.
            eps: Added inside both square roots ('l2') or to the mean magnitude ('l1'); must be > 0.
            after_relu: 'l1' only: the input is known to be non-negative, so sum x instead of |x|.
            act_layer: Accepted and ignored, so the layer also fits timm's cspnet / efficientnet attention hooks.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        check_channels(type(self).__name__, channels)
        check_choice(type(self).__name__, 'mode', mode, ('l2', 'l1'))
        check_positive(type(self).__name__, 'eps', eps)
        if after_relu and mode != 'l1':
            raise ValueError(
                f"GatedChannelTransform: after_relu=True is only allowed with mode='l1', got mode={mode!r}.")
        self.mode = mode
        self.eps = eps
        self.after_relu = after_relu
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1, **dd))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1, **dd))
        self.beta = nn.Parameter(torch.zeros(channels, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == 'l2':
            embedding = (spatial_sum(x, 2) + self.eps).sqrt() * self.alpha
            norm = self.gamma / (embedding.square().mean(dim=1, keepdim=True) + self.eps).sqrt()
        else:
            embedding = spatial_sum(x, 0 if self.after_relu else 1) * self.alpha
            norm = self.gamma / (embedding.abs().mean(dim=1, keepdim=True) + self.eps)
        gate = 1. + torch.tanh(embedding * norm + self.beta.view(1, -1, 1, 1))
        return x * gate.to(x.dtype)

    def extra_repr(self) -> str:
        return f'{self.alpha.shape[1]}, mode={self.mode!r}, eps={self.eps}, after_relu={self.after_relu}'
