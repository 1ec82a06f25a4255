""" Official-code reference: Style-based Recalibration Module (SRM).

Written from https://github.com/hyunjaelee410/style-based-recalibration-module, ``models/recalibration_modules.py``,
class ``SRMLayer`` (commit f6221c7, which last changed the file), as placed by ``models/resnet.py`` (``rclb``). The
forward keeps the official operations and their order, in the input dtype: ``x.view(N, C, -1)`` (so, as
officially, the input must be contiguous in NCHW order), the mean and the unbiased variance as two separate
reductions, ``+ eps``, ``sqrt``, ``torch.cat`` into (N, C, 2), the product with ``cfc[None, :, :]``, the sum over
the last dim, ``[:, :, None, None]``, the BatchNorm2d and ``nn.Sigmoid``, then ``x * g``.

Differences from the official code, only to take our layer's settings and parameters:
* ``eps`` is a constructor argument (official: the hard-coded default ``eps=1e-5`` of ``_style_pooling``).
* ``from_layer`` reshapes our 1-D ``cfc`` (2 C,) into the official (C, 2) parameter (``cfc.view(C, 2)``).
* The ``srm_param`` attributes the official code sets on its parameters (read by its optimizer set-up to skip weight
  decay) are left out; they do not take part in the forward or backward pass.
"""
import torch
from torch import nn

from ...layers import StyleRecalibration

__all__ = ['LAYER', 'OfficialSRM', 'from_layer']

LAYER = StyleRecalibration


class OfficialSRM(nn.Module):
    """The official ``SRMLayer`` module: ``cfc`` of shape (C, 2) and a BatchNorm2d(C) ``bn``."""

    def __init__(self, channel: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.cfc = nn.Parameter(torch.zeros(channel, 2, device=device, dtype=dtype))
        self.bn = nn.BatchNorm2d(channel, device=device, dtype=dtype)
        self.activation = nn.Sigmoid()

    def _style_pooling(self, x: torch.Tensor) -> torch.Tensor:
        N, C, _, _ = x.size()
        channel_mean = x.view(N, C, -1).mean(dim=2, keepdim=True)
        channel_var = x.view(N, C, -1).var(dim=2, keepdim=True) + self.eps
        channel_std = channel_var.sqrt()
        return torch.cat((channel_mean, channel_std), dim=2)  # N x C x 2

    def _style_integration(self, t: torch.Tensor) -> torch.Tensor:
        z = t * self.cfc[None, :, :]  # N x C x 2
        z = torch.sum(z, dim=2)[:, :, None, None]  # N x C x 1 x 1
        z_hat = self.bn(z)
        return self.activation(z_hat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self._style_pooling(x)
        g = self._style_integration(t)
        return x * g


def from_layer(layer: StyleRecalibration) -> OfficialSRM:
    """An ``OfficialSRM`` with ``layer``'s eps, device, dtype, parameters, BN statistics and train / eval mode."""
    cfc = layer.cfc
    channels = layer.bn.num_features
    ref = OfficialSRM(channels, eps=layer.eps, device=cfc.device, dtype=cfc.dtype)
    state = layer.state_dict()
    state['cfc'] = state['cfc'].view(channels, 2)  # our (2 C,) holds the official (C, 2) in row-major order
    ref.load_state_dict(state)
    return ref.train(layer.training)
