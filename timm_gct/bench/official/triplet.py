""" Official-code reference: Triplet attention, for the benchmark only.

Mechanism: triplet attention, three Z-pool + k x k conv + BN + sigmoid gates on the (C, W), (H, C) and (H, W) planes.
Official code: https://github.com/landskape-ai/triplet-attention, ``MODELS/triplet_attention.py`` (the version that
    trained the released weights), classes ``BasicConv``, ``ChannelPool``, ``SpatialGate``, ``TripletAttention``, at
    commit 2cf02fb91196408ac6352f7984a0336aa4f7677a.

The forward is the official one: ``x.permute(0, 2, 1, 3).contiguous()`` and ``x.permute(0, 3, 2, 1).contiguous()``
copies of x, each gate computed on its copy (``torch.cat`` of the unsqueezed max and mean, conv, BN, in-place
``torch.sigmoid_``) and multiplied with that copy, both products permuted back with ``.contiguous()``, then
``(1 / 3) * (x_out + x_out11 + x_out21)`` (``(1 / 2) * (x_out11 + x_out21)`` with ``no_spatial``).

Deliberate differences from the official code:
* ``kernel_size`` is an argument (hard-coded 7 in ``SpatialGate``), taken from our layer.
* The unused official arguments (``gate_channels``, ``reduction_ratio``, ``pool_types``) and the BasicConv options
  the gates never use (stride, dilation, groups, ReLU) are left out.
* No initialisation: ``from_layer`` always copies our layer's values. Parameter and buffer names and shapes are the
  official ones (``ChannelGateH``, ``ChannelGateW``, ``SpatialGate``, each ``spatial.conv`` / ``spatial.bn``), the
  same as our layer's; modules are created on our layer's device and dtype.
"""
import torch
from torch import nn

from ...layers import TripletAttention

__all__ = ['OfficialTripletAttention', 'from_layer']

LAYER = TripletAttention


class _BasicConv(nn.Module):
    """The official ``BasicConv`` as the gates use it: conv without bias, BN (eps 1e-5, momentum 0.01), no ReLU."""

    def __init__(self, kernel_size: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, stride=1, padding=(kernel_size - 1) // 2, bias=False, **dd)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class _SpatialGate(nn.Module):
    """The official ``SpatialGate``: Z-pool over dim 1, conv + BN, sigmoid, times its input."""

    def __init__(self, kernel_size: int, device=None, dtype=None):
        super().__init__()
        self.spatial = _BasicConv(kernel_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # official ChannelPool
        x_compress = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        scale = torch.sigmoid_(self.spatial(x_compress))
        return x * scale


class OfficialTripletAttention(nn.Module):
    """The official ``TripletAttention`` forward, with the gates' kernel size as an argument."""

    def __init__(self, kernel_size: int = 7, no_spatial: bool = False, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.kernel_size = kernel_size
        self.no_spatial = no_spatial
        self.ChannelGateH = _SpatialGate(kernel_size, **dd)
        self.ChannelGateW = _SpatialGate(kernel_size, **dd)
        if not no_spatial:
            self.SpatialGate = _SpatialGate(kernel_size, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_perm1 = x.permute(0, 2, 1, 3).contiguous()
        x_out11 = self.ChannelGateH(x_perm1).permute(0, 2, 1, 3).contiguous()
        x_perm2 = x.permute(0, 3, 2, 1).contiguous()
        x_out21 = self.ChannelGateW(x_perm2).permute(0, 3, 2, 1).contiguous()
        if not self.no_spatial:
            x_out = self.SpatialGate(x)
            return (1 / 3) * (x_out + x_out11 + x_out21)
        return (1 / 2) * (x_out11 + x_out21)

    def extra_repr(self) -> str:
        return f'kernel_size={self.kernel_size}, no_spatial={self.no_spatial}'


def from_layer(layer: TripletAttention) -> OfficialTripletAttention:
    """The official layer with ``layer``'s settings, parameter and buffer values, device, dtype and mode."""
    weight = layer.ChannelGateH.spatial.conv.weight
    reference = OfficialTripletAttention(
        layer.kernel_size, layer.no_spatial, device=weight.device, dtype=weight.dtype)
    reference.load_state_dict(layer.state_dict())  # the same names and shapes as the official code
    return reference.train(layer.training)
