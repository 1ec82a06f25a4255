""" Official-code reference: recurrent criss-cross attention (CCNet), for the benchmark only.

Mechanism: criss-cross attention (one softmax over each pixel's column and row), applied ``recurrence`` times with
shared weights (RCCA).
Official code: https://github.com/speedinghzl/CCNet, ``cc_attention/functions.py`` (the pure-PyTorch version on
    master), classes ``CrissCrossAttention`` and its ``INF`` helper, and ``networks/ccnet.py``, ``RCCAModule.forward``
    (the recurrence loop), at commit 1fae6c67229c3863232494762b0afd9a8d7ff309.

Each pass is the official forward: the three 1x1 convs, the ``permute().contiguous().view()`` copies of queries,
keys and values in the column (B*W, ., H) and row (B*H, ., W) layouts, two ``torch.bmm`` energies, the (B*W, H, H)
-inf diagonal tensor built and added on every pass, ``torch.cat`` + ``Softmax(dim=3)``, the attention slices copied
back with ``permute().contiguous().view()``, two ``torch.bmm`` weighted sums and ``gamma * (out_H + out_W) + x``. No
dtype casts, as in the official code (under autocast the float32 -inf tensor promotes the column energies and hence
the softmax to float32, and the float32 gamma makes the output float32).

Deliberate differences from the official code:
* ``INF`` builds its tensor on the input's device, where the official one calls ``.cuda()`` (the official
  ``torch.tensor(float('inf'))`` default dtype is kept).
* The recurrence loop (official: in ``RCCAModule.forward``) is in this module's forward, ``recurrence`` taken from
  our layer.
* gamma, shape (1, 1, 1, 1) in our layer, is copied into the official shape (1,).
* No initialisation: ``from_layer`` always copies our layer's values; modules are created on our layer's device and
  dtype.
"""
import torch
from torch import nn

from ...layers import CrissCrossAttention

__all__ = ['OfficialCrissCrossAttention', 'from_layer']

LAYER = CrissCrossAttention


def _inf(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """The official ``INF``: a (B*W, H, H) tensor with -inf on every diagonal, materialised on every call."""
    return -torch.diag(torch.tensor(float('inf'), device=device).repeat(height), 0).unsqueeze(0).repeat(
        batch * width, 1, 1)


class OfficialCrissCrossAttention(nn.Module):
    """The official ``CrissCrossAttention`` pass, applied ``recurrence`` times as the official RCCA head does."""

    def __init__(self, in_dim: int, recurrence: int = 2, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.recurrence = recurrence
        self.query_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim // 8, kernel_size=1, **dd)
        self.key_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim // 8, kernel_size=1, **dd)
        self.value_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim, kernel_size=1, **dd)
        self.softmax = nn.Softmax(dim=3)
        self.gamma = nn.Parameter(torch.zeros(1, **dd))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """One official criss-cross pass."""
        m_batchsize, _, height, width = x.size()
        proj_query = self.query_conv(x)
        proj_query_H = proj_query.permute(0, 3, 1, 2).contiguous().view(m_batchsize * width, -1, height)
        proj_query_H = proj_query_H.permute(0, 2, 1)
        proj_query_W = proj_query.permute(0, 2, 1, 3).contiguous().view(m_batchsize * height, -1, width)
        proj_query_W = proj_query_W.permute(0, 2, 1)
        proj_key = self.key_conv(x)
        proj_key_H = proj_key.permute(0, 3, 1, 2).contiguous().view(m_batchsize * width, -1, height)
        proj_key_W = proj_key.permute(0, 2, 1, 3).contiguous().view(m_batchsize * height, -1, width)
        proj_value = self.value_conv(x)
        proj_value_H = proj_value.permute(0, 3, 1, 2).contiguous().view(m_batchsize * width, -1, height)
        proj_value_W = proj_value.permute(0, 2, 1, 3).contiguous().view(m_batchsize * height, -1, width)
        energy_H = torch.bmm(proj_query_H, proj_key_H) + _inf(m_batchsize, height, width, x.device)
        energy_H = energy_H.view(m_batchsize, width, height, height).permute(0, 2, 1, 3)
        energy_W = torch.bmm(proj_query_W, proj_key_W).view(m_batchsize, height, width, width)
        concate = self.softmax(torch.cat([energy_H, energy_W], 3))

        att_H = concate[:, :, :, 0:height].permute(0, 2, 1, 3).contiguous().view(m_batchsize * width, height, height)
        att_W = concate[:, :, :, height:height + width].contiguous().view(m_batchsize * height, width, width)
        out_H = torch.bmm(proj_value_H, att_H.permute(0, 2, 1)).view(m_batchsize, width, -1, height)
        out_H = out_H.permute(0, 2, 3, 1)
        out_W = torch.bmm(proj_value_W, att_W.permute(0, 2, 1)).view(m_batchsize, height, -1, width)
        out_W = out_W.permute(0, 2, 1, 3)
        return self.gamma * (out_H + out_W) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):  # official RCCAModule.forward
            x = self.attend(x)
        return x

    def extra_repr(self) -> str:
        return f'recurrence={self.recurrence}'


def from_layer(layer: CrissCrossAttention) -> OfficialCrissCrossAttention:
    """The official module with ``layer``'s settings, parameter values, device, dtype and mode."""
    weight = layer.value_conv.weight
    reference = OfficialCrissCrossAttention(
        layer.value_conv.in_channels, layer.recurrence, device=weight.device, dtype=weight.dtype)
    state = layer.state_dict()
    state['gamma'] = state['gamma'].reshape(1)  # ours (1, 1, 1, 1), official (1,)
    reference.load_state_dict(state)
    return reference.train(layer.training)
