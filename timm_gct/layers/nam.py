""" Normalization-based Attention Module (NAM), channel attention

Paper: `NAM: Normalization-based Attention Module` - https://arxiv.org/abs/2111.12419 (NeurIPS 2021 workshop)
Official code: https://github.com/Christian-lyc/NAM (``MODELS/attention.py``, ``Channel_Att``; commit c76abf4)

Math, per channel c of an (N, C, H, W) input x, with gamma the BatchNorm scale:
    y   = BN(x)
    w_c = |gamma_c| / sum_j |gamma_j|            taken without gradient (the official code reads ``weight.data``)
    out = sigmoid(w_c * y_c) * x_c
The paper's sparsity regulariser (``train_cifar100.py -sr --s 1e-4``) adds s * sign(gamma) to gamma's gradient after
every backward pass. Stock timm train.py has no hook for extra loss terms, so ``sparsity=s`` registers that exact
gradient term as a hook on gamma; set it with ``--model-kwargs "attn_kwargs={'sparsity': 1e-4}"``. The default is
0 (off), as in the official script, where the regulariser is an opt-in flag.

Notes:
* Only the channel sub-module exists: the spatial (pixel-normalisation) branch was never released (NAM issues #1,
  #2, #7), so it is not implemented here.
* The hook adds s * sign(gamma) once per backward pass. With ``--grad-accum-steps N`` that is N times per
  optimizer step (divide s by N to match the official recipe), and under float16 AMP with a GradScaler the term is
  added to loss-scaled gradients, so its effective strength is divided by the loss scale (use bfloat16 or float32).
* The official recipe decays the NAM BN parameters (weight decay 5e-4 on all parameters); timm's optimizer factory
  never decays 1-D parameters, so under timm they are not decayed.

Deviations from the official code:
* sum_j |gamma_j| is clamped to >= 1e-12, which only matters when every gamma is exactly zero (official: 0 / 0).
* The gate is applied by broadcasting instead of two permute().contiguous() round trips (same values), and it is
  cast to the input dtype so the output keeps the input dtype under autocast.
* ``inplace=True`` (set by the registered models): without autograd the input is scaled in place (``_gating.py``).
* BN(x) * w is computed as one batch-norm call with w folded into its affine parameters (gamma * w, beta * w):
  the same function with one pass less over the map in the forward and in the backward, and the same running
  statistics. A BN replaced by another norm (``SyncBatchNorm`` conversion, timm's frozen BN) runs its own forward.
  The product is squashed in place (it is a fresh tensor its backward does not need).
"""
from typing import Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from timm.layers import LayerType

from ._checks import check_bool, check_channels, check_positive
from ._gating import apply_gate

__all__ = ['NormalizationAttention']

torch.fx.wrap('apply_gate')


class NormalizationAttention(nn.Module):
    """NAM channel attention, a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            sparsity: float = 0.,
            inplace: bool = False,
            act_layer: Optional[LayerType] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels.
            sparsity: Strength s of the L1 sparsity regulariser on the BN scale (official value when enabled: 1e-4);
                0 disables it.
            inplace: Without autograd, scale the input in place (its caller must not read it again).
            act_layer: Accepted and ignored, so the layer also fits timm's cspnet / efficientnet attention hooks.
        """
        super().__init__()
        check_channels(type(self).__name__, channels)
        check_positive(type(self).__name__, 'sparsity', sparsity, allow_zero=True)
        check_bool(type(self).__name__, 'inplace', inplace)
        self.sparsity = float(sparsity)
        self.inplace = inplace
        self.bn = nn.BatchNorm2d(channels, device=device, dtype=dtype)
        self._register_sparsity_hook()

    def _register_sparsity_hook(self) -> None:
        if self.sparsity > 0:
            self.bn.weight.register_hook(self._add_sparsity_grad)

    @torch.jit.unused
    def _add_sparsity_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad + self.sparsity * torch.sign(self.bn.weight.detach())

    def __setstate__(self, state):
        # Tensor hooks do not survive deepcopy or pickling (timm's ModelEma deep-copies the model): re-register.
        super().__setstate__(state)
        self._register_sparsity_hook()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.bn.weight.detach().abs()
        weight = scale / scale.sum().clamp_min(1e-12)
        if isinstance(self.bn, nn.BatchNorm2d):
            logits = self._scaled_batch_norm(x, weight)
        else:
            logits = self.bn(x).mul_(weight.view(1, -1, 1, 1))
        # The logits are a fresh tensor that no backward needs: squash them in place.
        return apply_gate(x, torch.sigmoid_(logits), self.inplace)

    def _scaled_batch_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``self.bn(x) * weight`` per channel: nn.BatchNorm2d's forward with weight folded into gamma and beta."""
        bn = self.bn
        momentum = 0. if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                momentum = 1. / float(bn.num_batches_tracked)
        batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        keep = not bn.training or bn.track_running_stats
        return F.batch_norm(
            x, bn.running_mean if keep else None, bn.running_var if keep else None,
            bn.weight * weight, bn.bias * weight, batch_stats, momentum, bn.eps)

    def extra_repr(self) -> str:
        return f'sparsity={self.sparsity}, inplace={self.inplace}'
