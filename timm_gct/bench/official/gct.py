""" Official-code reference: Gated Channel Transformation (GCT).

Written from https://github.com/z-x-yang/GCT, ``PyTorch/GCT.py``, class ``GCT`` (commit 68983ed; the file was last
changed in 9f2d1f0). The forward keeps the official operations and their order: ``x.pow(2)`` (or ``torch.abs(x)``
in mode 'l1') materialised as a full-size tensor and then summed over H, W in the input dtype, ``pow(0.5)`` for the
square roots, and ``beta`` added in its (1, C, 1, 1) shape.

Differences from the official code, only to take our layer's settings and parameters:
* ``from_layer`` reshapes our 1-D ``beta`` (C,) into the official (1, C, 1, 1) parameter.
* An unknown mode is a ValueError (the official code prints and calls an unimported ``sys.exit``); our layer never
  builds one.
"""
import torch
from torch import nn

from ...layers import GatedChannelTransform

__all__ = ['LAYER', 'OfficialGCT', 'from_layer']

LAYER = GatedChannelTransform


class OfficialGCT(nn.Module):
    """The official ``GCT`` module: parameters ``alpha``, ``gamma``, ``beta``, each of shape (1, C, 1, 1)."""

    def __init__(
            self,
            num_channels: int,
            epsilon: float = 1e-5,
            mode: str = 'l2',
            after_relu: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if mode not in ('l2', 'l1'):
            raise ValueError(f"OfficialGCT: mode={mode!r} is not allowed; expected 'l2' or 'l1'.")
        self.alpha = nn.Parameter(torch.ones(1, num_channels, 1, 1, **dd))
        self.gamma = nn.Parameter(torch.zeros(1, num_channels, 1, 1, **dd))
        self.beta = nn.Parameter(torch.zeros(1, num_channels, 1, 1, **dd))
        self.epsilon = epsilon
        self.mode = mode
        self.after_relu = after_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == 'l2':
            embedding = (x.pow(2).sum((2, 3), keepdim=True) + self.epsilon).pow(0.5) * self.alpha
            norm = self.gamma / (embedding.pow(2).mean(dim=1, keepdim=True) + self.epsilon).pow(0.5)
        else:
            _x = x if self.after_relu else torch.abs(x)  # the official |x| is a full-size tensor
            embedding = _x.sum((2, 3), keepdim=True) * self.alpha
            norm = self.gamma / (torch.abs(embedding).mean(dim=1, keepdim=True) + self.epsilon)
        gate = 1. + torch.tanh(embedding * norm + self.beta)
        return x * gate


def from_layer(layer: GatedChannelTransform) -> OfficialGCT:
    """An ``OfficialGCT`` with ``layer``'s settings, device, dtype, parameter values and train / eval mode."""
    alpha = layer.alpha
    ref = OfficialGCT(
        alpha.shape[1], epsilon=layer.eps, mode=layer.mode, after_relu=layer.after_relu,
        device=alpha.device, dtype=alpha.dtype)
    ref.load_state_dict({'alpha': layer.alpha, 'gamma': layer.gamma, 'beta': layer.beta.view(1, -1, 1, 1)})
    return ref.train(layer.training)
