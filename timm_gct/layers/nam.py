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
* In eager training on batch statistics on the CPU the layer is one ``autograd.Function`` whose backward is
  written out (``_NormalizationGateFunction``): the two gradients of ``x`` (through the gate and through the BN) are
  formed in one buffer instead of two tensors and a sum. Same math, same saved tensors (``x`` and the gate). A
  backward that autograd records (``create_graph=True``) differentiates the plain formula instead
  (``_double_backward.py``). TorchScript and torch.compile run the plain formula (torch.fx keeps
  ``_normalization_gate`` as a leaf, which picks its path at run time). Other devices keep ``F.batch_norm``, which
  may pick cuDNN where the Function's native kernels would not.
* On the GPU (``timm_gct.kernels``): three fused Triton kernels each way (in eval two) instead of the BatchNorm, the
  folding, the sigmoid and the product: one pass for the BatchNorm's statistics, one small kernel for them and the
  gate's per-channel affine (w folded in there), one pass for x * sigmoid(a_c x + b_c); the backward recomputes the
  gate from x instead of saving it (one full-size tensor less in training). Used when the BatchNorm is a plain
  ``nn.BatchNorm2d``.
"""
from typing import Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from timm.layers import LayerType, register_notrace_function

from ..kernels import use_triton
from ._checks import check_bool, check_channels, check_positive
from ._double_backward import differentiate
from ._gating import apply_gate, autograd_records

__all__ = ['NormalizationAttention', 'normalization_gate']

torch.fx.wrap('apply_gate')


def _plain(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """sigmoid(BN(x)) * x on batch statistics, without touching running statistics."""
    return x * torch.sigmoid(F.batch_norm(x, None, None, weight, bias, True, 0., eps))


def _channel_weight(gamma: torch.Tensor) -> torch.Tensor:
    """w = |gamma| / sum |gamma|, taken without gradient (the official code reads ``weight.data``)."""
    scale = gamma.detach().abs()
    return scale / scale.sum().clamp_min(1e-12)


def normalization_gate(
        x: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        running_mean: Optional[torch.Tensor],
        running_var: Optional[torch.Tensor],
        batch_stats: bool,
        eps: float,
) -> torch.Tensor:
    """x * sigmoid(BN(x) w) as a formula of the BN's parameters, the running statistics left alone (double
    backward of the fused path)."""
    w = _channel_weight(gamma)
    return x * torch.sigmoid(F.batch_norm(x, running_mean, running_var, gamma * w, beta * w, batch_stats, 0., eps))


def _check_values_per_channel(x: torch.Tensor) -> None:
    """F.batch_norm's own check on batch statistics, which the native and the fused kernels skip (NaN variance)."""
    if x.numel() == x.shape[1]:
        raise ValueError(f'Expected more than 1 value per channel when training, got input size {x.size()}')


class _NormalizationGateFunction(torch.autograd.Function):
    """sigmoid(BN(x)) * x on batch statistics, the BN's affine parameters already scaled by w.

    With s = sigmoid(z), z = BN(x): dL/dx = g * s + BN'(x)^T (g * x * s * (1 - s)). The backward forms g * x, turns
    it into dL/dz in place (aten's fused sigmoid backward), runs aten's BN backward on it and adds g * s into the BN
    backward's result in place: one full-size temporary instead of autograd's three."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: Optional[torch.Tensor],
                running_var: Optional[torch.Tensor], momentum: float, eps: float) -> torch.Tensor:
        logits, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        gate = logits.sigmoid_()
        ctx.eps = eps
        ctx.save_for_backward(x, gate, weight, bias, mean, invstd)
        return x * gate

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, gate, weight, bias, mean, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: gradients with a graph, from the plain formula
            return differentiate(lambda *t: _plain(*t, ctx.eps), (x, weight, bias), (grad,),
                                 ctx.needs_input_grad[:3]) + (None,) * 4
        grad_logits = torch.mul(grad, x)
        torch.ops.aten.sigmoid_backward.grad_input(grad_logits, gate, grad_input=grad_logits)
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_logits, x, weight, None, None, mean, invstd, True, ctx.eps, [need_x, need_weight, need_bias])
        if need_x:
            grad_x.addcmul_(grad, gate)
        return grad_x, grad_weight, grad_bias, None, None, None, None


@torch.jit.unused
def _fused_allowed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> bool:
    if torch.compiler.is_compiling() or x.device.type != 'cpu':
        return False  # inductor fuses the plain formula itself; see the module docstring on other devices
    return autograd_records(x, weight, bias)


@torch.jit.unused
def _fused(x: torch.Tensor, running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
           weight: torch.Tensor, bias: torch.Tensor, momentum: float, eps: float) -> torch.Tensor:
    _check_values_per_channel(x)
    return _NormalizationGateFunction.apply(x, weight, bias, running_mean, running_var, momentum, eps)


@register_notrace_function  # a leaf for torch.fx: the eager path it picks at run time is not traceable
def _normalization_gate(
        x: torch.Tensor,
        running_mean: Optional[torch.Tensor],
        running_var: Optional[torch.Tensor],
        weight: torch.Tensor,
        bias: torch.Tensor,
        batch_stats: bool,
        momentum: float,
        eps: float,
        inplace: bool = False,
) -> torch.Tensor:
    """sigmoid(F.batch_norm(x, running_mean, running_var, weight, bias, batch_stats, momentum, eps)) * x.
    ``inplace`` scales ``x`` in place when autograd is off."""
    if batch_stats and not torch.jit.is_scripting() and _fused_allowed(x, weight, bias):
        return _fused(x, running_mean, running_var, weight, bias, momentum, eps)
    logits = F.batch_norm(x, running_mean, running_var, weight, bias, batch_stats, momentum, eps)
    # The logits are a fresh tensor that no backward needs: squash them in place.
    return apply_gate(x, torch.sigmoid_(logits), inplace)


torch.fx.wrap('_normalization_gate')


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
        if not torch.jit.is_scripting() and self._fusable(x):
            return self._fused(x)
        weight = _channel_weight(self.bn.weight)
        if not isinstance(self.bn, nn.BatchNorm2d):
            # The logits are a fresh tensor that no backward needs: squash them in place.
            return apply_gate(x, torch.sigmoid_(self.bn(x).mul_(weight.view(1, -1, 1, 1))), self.inplace)
        # nn.BatchNorm2d's forward, with w folded into gamma and beta.
        bn = self.bn
        momentum = 0. if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                momentum = 1. / float(bn.num_batches_tracked)
        batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        keep = not bn.training or bn.track_running_stats
        return _normalization_gate(
            x, bn.running_mean if keep else None, bn.running_var if keep else None, bn.weight * weight,
            bn.bias * weight, batch_stats, momentum, bn.eps, self.inplace)

    @torch.jit.unused
    def _fusable(self, x: torch.Tensor) -> bool:
        return use_triton(x) and type(self.bn) is nn.BatchNorm2d  # a SyncBatchNorm or frozen one runs its own forward

    @torch.jit.unused
    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels._gate import batchnorm_state, fused_gate
        from ..kernels.nam import NamKernels
        state = batchnorm_state(self.bn)
        if state.batch_stats:
            _check_values_per_channel(x)
        return fused_gate(NamKernels(state), x, (self.bn.weight, self.bn.bias), self.inplace)

    def extra_repr(self) -> str:
        return f'sparsity={self.sparsity}, inplace={self.inplace}'
