""" Efficient Channel Attention (ECA)

Paper: `ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks` - https://arxiv.org/abs/1910.03151
    (CVPR 2020)
Official code: https://github.com/BangguWu/ECANet (``models/eca_module.py``, ``eca_layer``; ``models/eca_resnet.py``;
    commit b332f6b)

Math, for an (N, C, H, W) input x and an odd kernel size k:
    y_c   = mean_hw x_c                                       global average pooling, (N, C)
    z     = Conv1d_{1->1, k, no bias, zero padding (k-1)/2}(y)  a k-tap filter shared by all channels, slid along C
    out_c = x_c * sigmoid(z_c)
Official default: k = 3 (``eca_layer(channel, k_size=3)``; its ``channel`` argument is unused). Parameters: k.

Kernel sizes. The paper derives k from the channel count (Eq. 9): t = int(|log2(C) + 1| / 2), k = t if t is odd
else t + 1, i.e. 3, 5, 5, 5 for ResNet-18/34 widths (64..512) and 5, 5, 5, 7 for ResNet-50+ widths (256..2048).
The released ImageNet models do not follow it: their kernel sizes were set per stage (``main.py --ksize``) and are
named in the checkpoint files, k = 3, 5, 7, 7 (``eca_resnet18_k3577``), 3, 3, 5, 7 (ResNet-34, -101, -152,
``k3357``) and 3, 5, 5, 7 (ResNet-50, ``k3557``) for stages 1-4. This layer takes ``kernel_size`` explicitly, so a
model table can pass the released per-stage values and the official checkpoints load: their keys
``layerX.Y.eca.conv.weight``, shape (1, 1, k), map to ``layerX.Y.se.conv.weight`` by renaming ``eca`` -> ``se``.
timm's own ``EcaModule`` (``'eca'`` in ``timm.layers.get_attn``, used by timm's ``ecaresnet*`` models) instead
computes k from ``channels`` by Eq. 9 with a minimum of 3 and ignores its ``kernel_size`` argument whenever
``channels`` is given, as it always is in a ResNet: it builds 5 where the released ResNet-50 has 3 in stage 1 (and
the released ResNet-18 has 7 where Eq. 9 gives 5 in stages 3-4), so official weights do not load into it.

Initialisation: the official ResNets re-initialise only Conv2d weights, so the Conv1d keeps PyTorch's default init
(kaiming uniform, a = sqrt(5)); so does this layer, and timm's ResNet init (Conv2d only) leaves it alone too.

Placement: after the last BN of every residual block of every stage (BasicBlock and Bottleneck), before the
residual add, as timm's ``attn_layer`` hook does.

Deviations from the official code, all without a change of math:
* The pooled vector is reshaped with ``view`` instead of ``squeeze(-1).transpose(-1, -2)`` round trips, and the gate
  broadcasts instead of ``expand_as`` (same values).
* The gate is cast to the input dtype, so the output keeps the input dtype under autocast.
* ``inplace=True`` (set by the registered models): without autograd the input is scaled in place (``_gating.py``).
* An even or non-positive ``kernel_size`` is a ValueError (the official code builds an even kernel whose output is
  one channel short, which fails later at ``expand_as``).
* On the GPU (``timm_gct.kernels``): three fused Triton kernels each way instead of about seven PyTorch operations
  (the mean, the k-tap filter with the sigmoid, the product; their backward likewise). The mean and the filter run in
  float32 there, where PyTorch's path rounds the mean to the input dtype under autocast.
"""
from typing import Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from timm.layers import LayerType

from ..kernels import use_triton
from ._checks import check_bool, check_channels, check_odd_kernel
from ._gating import apply_gate

__all__ = ['EfficientChannelAttention', 'channel_gate']

torch.fx.wrap('apply_gate')


def channel_gate(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sigmoid(Conv1d(mean_hw x)) across channels, shape (N, C, 1, 1); ``weight`` of shape (1, 1, k)."""
    B, C, H, W = x.shape
    y = F.conv1d(x.mean(dim=(2, 3)).view(B, 1, C), weight, padding=(weight.shape[-1] - 1) // 2)
    return torch.sigmoid(y).view(B, C, 1, 1)


class EfficientChannelAttention(nn.Module):
    """ECA channel attention with an explicit kernel size, a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            kernel_size: int = 3,
            inplace: bool = False,
            act_layer: Optional[LayerType] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels; checked, otherwise unused (as in the official code).
            kernel_size: Taps k of the 1-D conv across channels, an odd int >= 1 (official default 3). The released
                ImageNet models use per-stage values, see the module docstring.
            inplace: Without autograd, scale the input in place (its caller must not read it again).
            act_layer: Accepted and ignored, so the layer also fits timm's cspnet / efficientnet attention hooks.
        """
        super().__init__()
        name = type(self).__name__
        check_channels(name, channels)
        check_odd_kernel(name, kernel_size)
        check_bool(name, 'inplace', inplace)
        self.inplace = inplace
        self.conv = nn.Conv1d(
            1, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and use_triton(x):
            return self._fused(x)
        return apply_gate(x, channel_gate(x, self.conv.weight), self.inplace)

    @torch.jit.unused
    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels._gate import fused_gate
        from ..kernels.eca import EcaKernels
        return fused_gate(EcaKernels(self.conv.kernel_size[0]), x, (self.conv.weight,), self.inplace)

    def extra_repr(self) -> str:
        return f'kernel_size={self.conv.kernel_size[0]}, inplace={self.inplace}'
