""" Official-code reference: multi-spectral channel attention (FcaNet).

Written from https://github.com/cfzd/FcaNet, ``model/layer.py``, classes ``MultiSpectralAttentionLayer`` and
``MultiSpectralDCTLayer`` and function ``get_freq_indices`` (commit aa5fb63; the file was last changed in 1072c30),
as placed by ``model/fcanet.py`` (``att``). The forward keeps the official operations and their order, in the input
dtype: adaptive average pooling only when the input size differs from the DCT size, the full-size product
``x * weight`` with the (C, H, W) DCT buffer, ``torch.sum`` over H, W, the excitation ``Linear -> ReLU(inplace)
-> Linear -> Sigmoid`` (bias-free), ``view(n, c, 1, 1)`` and ``x * y.expand_as(x)``.

Differences from the official code, only to take our layer's settings and buffers:
* Only the 'top' frequency ranking is built (our layer has no other); the official 'low' and 'bot' ablations are a
  ValueError here.
* The DCT filter is built with the official formula, vectorised over positions (the official code fills it one
  (h, w) position at a time), and ``from_layer`` overwrites it with our layer's buffer anyway.
* ``from_layer`` raises ValueError for an excitation activation other than ReLU (the official code hard-codes
  ``nn.ReLU(inplace=True)``).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import MultiSpectralAttention

__all__ = ['LAYER', 'OfficialMultiSpectralAttention', 'OfficialMultiSpectralDCT', 'from_layer']

LAYER = MultiSpectralAttention

# The official 'top' ranking of the 7 x 7 DCT frequencies (get_freq_indices: all_top_indices_x / _y).
_ALL_TOP_INDICES_X = (0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2, 4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1)
_ALL_TOP_INDICES_Y = (0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2, 6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3)


def _get_freq_indices(method: str):
    if method not in ('top1', 'top2', 'top4', 'top8', 'top16', 'top32'):
        raise ValueError(f"freq_sel_method={method!r} is not built here; expected 'top1' ... 'top32'.")
    num_freq = int(method[3:])
    return list(_ALL_TOP_INDICES_X[:num_freq]), list(_ALL_TOP_INDICES_Y[:num_freq])


class OfficialMultiSpectralDCT(nn.Module):
    """The official ``MultiSpectralDCTLayer``: a fixed (C, H, W) DCT buffer ``weight``, weighted spatial sum."""

    def __init__(self, height: int, width: int, mapper_x, mapper_y, channel: int, device=None, dtype=None):
        super().__init__()
        assert len(mapper_x) == len(mapper_y)
        assert channel % len(mapper_x) == 0
        self.num_freq = len(mapper_x)
        weight = self.get_dct_filter(height, width, mapper_x, mapper_y, channel)
        self.register_buffer('weight', weight.to(device=device, dtype=dtype or torch.get_default_dtype()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert len(x.shape) == 4, 'x must been 4 dimensions, but got ' + str(len(x.shape))
        x = x * self.weight  # the official full-size product, then a plain sum in the input dtype
        return torch.sum(x, dim=[2, 3])

    @staticmethod
    def build_filter(pos: torch.Tensor, freq: int, size: int) -> torch.Tensor:
        result = torch.cos(math.pi * freq * (pos + 0.5) / size) / math.sqrt(size)
        return result if freq == 0 else result * math.sqrt(2)

    def get_dct_filter(self, tile_size_x: int, tile_size_y: int, mapper_x, mapper_y, channel: int) -> torch.Tensor:
        dct_filter = torch.zeros(channel, tile_size_x, tile_size_y, dtype=torch.float64)
        c_part = channel // len(mapper_x)
        pos_x = torch.arange(tile_size_x, dtype=torch.float64)
        pos_y = torch.arange(tile_size_y, dtype=torch.float64)
        for i, (u_x, v_y) in enumerate(zip(mapper_x, mapper_y)):
            dct_filter[i * c_part: (i + 1) * c_part] = torch.outer(
                self.build_filter(pos_x, u_x, tile_size_x), self.build_filter(pos_y, v_y, tile_size_y))
        return dct_filter


class OfficialMultiSpectralAttention(nn.Module):
    """The official ``MultiSpectralAttentionLayer``: DCT pooling to C coefficients, then an SE-style excitation."""

    def __init__(
            self,
            channel: int,
            dct_h: int,
            dct_w: int,
            reduction: int = 16,
            freq_sel_method: str = 'top16',
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.reduction = reduction
        self.dct_h = dct_h
        self.dct_w = dct_w
        mapper_x, mapper_y = _get_freq_indices(freq_sel_method)
        self.num_split = len(mapper_x)
        # Scale the 7 x 7 frequency indices to the DCT size: (1, 1) at 7 x 7 is (2, 2) at 14 x 14.
        mapper_x = [temp_x * (dct_h // 7) for temp_x in mapper_x]
        mapper_y = [temp_y * (dct_w // 7) for temp_y in mapper_y]
        self.dct_layer = OfficialMultiSpectralDCT(dct_h, dct_w, mapper_x, mapper_y, channel, **dd)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False, **dd),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False, **dd),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x_pooled = x
        if h != self.dct_h or w != self.dct_w:
            x_pooled = F.adaptive_avg_pool2d(x, (self.dct_h, self.dct_w))
        y = self.dct_layer(x_pooled)
        y = self.fc(y).view(n, c, 1, 1)
        return x * y.expand_as(x)


def from_layer(layer: MultiSpectralAttention) -> OfficialMultiSpectralAttention:
    """An ``OfficialMultiSpectralAttention`` with ``layer``'s DCT size, reduction, frequencies, device, dtype,
    weights, DCT buffer and train / eval mode."""
    if type(layer.fc[1]) is not nn.ReLU:
        raise ValueError(
            f'OfficialMultiSpectralAttention: act_layer={type(layer.fc[1]).__name__} has no official counterpart; '
            f'the official excitation hard-codes nn.ReLU.')
    weight = layer.fc[0].weight
    ref = OfficialMultiSpectralAttention(
        weight.shape[1], layer.dct_size, layer.dct_size, reduction=layer.reduction,
        freq_sel_method=layer.dct_layer.freq_sel_method, device=weight.device, dtype=weight.dtype)
    ref.load_state_dict(layer.state_dict())
    return ref.train(layer.training)
