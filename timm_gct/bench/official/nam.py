""" Official-code reference: Normalization-based Attention Module (NAM), channel attention.

Written from https://github.com/Christian-lyc/NAM, ``MODELS/attention.py``, class ``Channel_Att`` (wrapped by ``Att``,
which only calls it), and the sparsity step ``updateBN`` of ``train_cifar100.py`` (commit 6e8d3e3; attention.py was
last changed in c76abf4). The forward keeps the official operations and their order: the BN, the weights
|gamma| / sum |gamma| from the BN scale without gradient (officially ``weight.data``), a ``permute(0, 2, 3, 1)
.contiguous()`` copy to channels-last so the (C,) weights broadcast, the product, a ``permute(0, 3, 1, 2)
.contiguous()`` copy back, then ``sigmoid(.) * residual``. The BN keeps the official name ``bn2``.

Differences from the official code, only to take our layer's settings:
* The sparsity regulariser (official: ``-sr --s 1e-4``, off by default) is a training-loop step officially:
  ``updateBN`` adds s * sign(gamma) to gamma's gradient after ``loss.backward()``. Here, as in our layer, that term
  is added by a gradient hook on ``bn2.weight`` (same gradient, computed during the backward pass), so that no
  training-loop change is needed and the gradients equal our layer's. With ``sparsity=0`` (the default) there is no
  hook.
* The ``Att`` wrapper (its ``Channel_Att`` attribute, its unused ``shape`` / ``no_spatial`` arguments) is left out.
"""
import torch
from torch import nn

from ...layers import NormalizationAttention

__all__ = ['LAYER', 'OfficialNAM', 'from_layer']

LAYER = NormalizationAttention


class OfficialNAM(nn.Module):
    """The official ``Channel_Att`` module (parameters in ``bn2``), with the training script's sparsity term."""

    def __init__(self, channels: int, sparsity: float = 0., device=None, dtype=None):
        super().__init__()
        self.channels = channels
        self.sparsity = float(sparsity)
        self.bn2 = nn.BatchNorm2d(self.channels, affine=True, device=device, dtype=dtype)
        self._register_sparsity_hook()

    def _register_sparsity_hook(self) -> None:
        if self.sparsity > 0:
            self.bn2.weight.register_hook(self._add_sparsity_grad)

    def _add_sparsity_grad(self, grad: torch.Tensor) -> torch.Tensor:
        # Official updateBN: bn2.weight.grad.data.add_(s * torch.sign(bn2.weight.data)).
        return grad + self.sparsity * torch.sign(self.bn2.weight.detach())

    def __setstate__(self, state):
        # Tensor hooks do not survive deepcopy or pickling: re-register.
        super().__setstate__(state)
        self._register_sparsity_hook()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.bn2(x)
        # detach() is the official ``weight.data``: no gradient through the weights.
        weight_bn = self.bn2.weight.detach().abs() / torch.sum(self.bn2.weight.detach().abs())
        x = x.permute(0, 2, 3, 1).contiguous()
        x = torch.mul(weight_bn, x)
        x = x.permute(0, 3, 1, 2).contiguous()
        return torch.sigmoid(x) * residual


def from_layer(layer: NormalizationAttention) -> OfficialNAM:
    """An ``OfficialNAM`` with ``layer``'s settings, device, dtype, BN parameters and statistics, train / eval mode."""
    weight = layer.bn.weight
    ref = OfficialNAM(layer.bn.num_features, sparsity=layer.sparsity, device=weight.device, dtype=weight.dtype)
    ref.bn2.load_state_dict(layer.bn.state_dict())
    return ref.train(layer.training)
