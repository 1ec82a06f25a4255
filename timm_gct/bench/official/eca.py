""" Official-code reference: Efficient Channel Attention (ECA).

Written from https://github.com/BangguWu/ECANet, ``models/eca_module.py``, class ``eca_layer`` (commit b332f6b;
the file was last changed in 1f76ff4), as placed by ``models/eca_resnet.py``. The forward keeps the official
operations and their order: ``nn.AdaptiveAvgPool2d(1)``, the ``squeeze(-1).transpose(-1, -2)`` view fed to the
Conv1d, ``transpose(-1, -2).unsqueeze(-1)`` back, ``nn.Sigmoid`` and ``x * y.expand_as(x)``.

No difference from the official code: the Conv1d weight, shape (1, 1, k), is copied as is. The official ``channel``
argument is unused there and here. Our layer only builds odd kernel sizes, which is all ``from_layer`` receives.
"""
import torch
from torch import nn

from ...layers import EfficientChannelAttention

__all__ = ['LAYER', 'OfficialECA', 'from_layer']

LAYER = EfficientChannelAttention


class OfficialECA(nn.Module):
    """The official ``eca_layer`` module: one bias-free Conv1d(1, 1, k) shared by all channels."""

    def __init__(self, channel: int, k_size: int = 3, device=None, dtype=None):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(
            1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False, device=device, dtype=dtype)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg_pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        y = self.sigmoid(y)
        return x * y.expand_as(x)


def from_layer(layer: EfficientChannelAttention) -> OfficialECA:
    """An ``OfficialECA`` with ``layer``'s kernel size, device, dtype, conv weight and train / eval mode."""
    weight = layer.conv.weight
    # ``channel`` is unused, as officially; our layer does not keep its channel count, so pass 0.
    ref = OfficialECA(0, k_size=layer.conv.kernel_size[0], device=weight.device, dtype=weight.dtype)
    ref.load_state_dict(layer.state_dict())
    return ref.train(layer.training)
