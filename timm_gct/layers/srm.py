""" Style-based Recalibration Module (SRM)

Paper: `SRM: A Style-based Recalibration Module for Convolutional Neural Networks` - https://arxiv.org/abs/1903.10829
    (ICCV 2019)
Official code: https://github.com/hyunjaelee410/style-based-recalibration-module (``models/recalibration_modules.py``,
    ``SRMLayer``; ``models/resnet.py``; ``imagenet.py``, ``set_optimizer``; commit f6221c7)

Math, per sample and channel c of an (N, C, H, W) input x:
    mu_c    = mean_hw x_c,   sigma_c = sqrt(var_hw(x_c) + eps)       style pooling; var is unbiased (HW - 1), eps 1e-5
    z_c     = cfc[c, 0] * mu_c + cfc[c, 1] * sigma_c                  channel-wise fully connected layer
    out_c   = x_c * sigmoid(BN(z)_c)                                  BatchNorm2d(C) on z shaped (N, C, 1, 1)
cfc starts at zero, so z = 0, BN(z) = beta = 0 and every gate is 0.5 at init. Parameters: 4 C (cfc 2 C, BN 2 C).

Weight decay: the official recipe (``set_optimizer``) trains every SRM parameter (cfc, BN weight and bias) without
weight decay and all others with 1e-4. timm's optimizer factory (``create_optimizer_v2(model, weight_decay=...)``)
leaves out of weight decay exactly the parameters with ndim <= 1 (and names ending in '.bias'), so ``cfc`` is stored
1-D: shape (2 C,), holding the official (C, 2) matrix in its row-major order, [cfc[0, 0], cfc[0, 1], cfc[1, 0], ...],
i.e. ``cfc.view(C, 2)`` is the official tensor. With that, timm reproduces the official recipe with no extra
configuration. No official weights were released; a state dict of the official code (``layerX.Y.rclb.*``) converts
by renaming ``rclb`` -> ``se`` and flattening ``cfc``.

Placement: after the last BN of every residual block of every stage, before the residual add. The official ResNet
only runs with Bottleneck blocks (its BasicBlock path refers to undefined ``is_ge`` / ``layer_idx`` and cannot be
built), so the paper's models are ResNet-50/101/152; this layer works in BasicBlock ResNets (18/34) as well.

Inputs it rejects with a ValueError naming the layer (instead of torch's BatchNorm error or a silent NaN):
* a training batch of one sample: the BN normalises each channel over the batch's N values of z;
* a 1 x 1 feature map (in any mode): the unbiased variance of a single value is 0 / 0.

Deviations from the official code, all without a change of math:
* The mean and unbiased variance are computed in float32 (float64 stays float64) and the gate is cast back to the
  input dtype; in float16 the variance of a map with std above 256 overflows to inf.
* ``cfc`` is stored 1-D, shape (2 C,), instead of (C, 2), for the weight-decay filter (see above).
* The variance takes two passes (the mean, then the norm of the centred map) in an ``autograd.Function`` that keeps
  only the input for the backward; ``torch.var_mean`` over H x W is far slower on the CPU. A backward that autograd
  records (``create_graph=True``) differentiates ``torch.var_mean`` instead (``_double_backward.py``); TorchScript
  and torch.compile use ``torch.var_mean``.
* ``inplace=True`` (set by the registered models): without autograd the input is scaled in place (``_gating.py``).
* The two input checks above.
* On the GPU (``timm_gct.kernels``): three fused Triton kernels each way instead of about twenty PyTorch operations
  (the style pooling as one mean / M2 pass merged as Chan et al.'s parallel variance, style integration, the
  BatchNorm over the batch with its running statistics, the sigmoid, the product; their backward likewise), when the
  BatchNorm is a plain ``nn.BatchNorm2d`` (a SyncBatchNorm or frozen one runs its own forward in PyTorch).
"""
from typing import Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from timm.layers import LayerType, register_notrace_function

from ..kernels import use_triton
from ._checks import check_bool, check_channels, check_positive
from ._double_backward import differentiate
from ._gating import apply_gate
from ._guards import check_batch_for_batchnorm, check_min_spatial
from ._precision import upcast

__all__ = ['StyleRecalibration', 'style_gate']

torch.fx.wrap('apply_gate')

torch.fx.wrap('check_batch_for_batchnorm')
torch.fx.wrap('check_min_spatial')


class _StylePool(torch.autograd.Function):
    """Mean and sqrt(unbiased var + eps) over H x W by two passes (the mean, then the norm of the centred map):
    ``torch.var_mean`` over the spatial dims is far slower than a sum on the CPU. Only the input is kept for the
    backward, dL/dx = dL/dmean / M + dL/dstd * (x - mean) / ((M - 1) std), one pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float):
        ctx.eps = eps
        acc = upcast(x)
        m = x.shape[-2] * x.shape[-1]
        mean = acc.mean(dim=(2, 3), keepdim=True)
        std = (torch.linalg.vector_norm(acc - mean, 2, dim=(2, 3), keepdim=True).square() / (m - 1) + eps).sqrt()
        ctx.save_for_backward(x, mean, std)
        return mean, std

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor, grad_std: torch.Tensor):
        x, mean, std = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: gradients with a graph, from the plain formula
            return differentiate(lambda t: _mean_std(t, ctx.eps), (x,), (grad_mean, grad_std), (True,)) + (None,)
        m = x.shape[-2] * x.shape[-1]
        scale = grad_std / ((m - 1) * std)
        return torch.addcmul(grad_mean / m - mean * scale, x, scale.to(x.dtype)).to(x.dtype), None


def _mean_std(x: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and sqrt(unbiased var + eps) over H x W by ``torch.var_mean``, each (N, C, 1, 1)."""
    var, mean = torch.var_mean(upcast(x), dim=(2, 3), correction=1, keepdim=True)
    return mean, (var + eps).sqrt()


@register_notrace_function
def _style_pool(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-channel (mean, sqrt(unbiased var + eps)) of an NCHW tensor, shape (N, C, 2), in float32 or float64."""
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        mean, std = _mean_std(x, eps)
    else:
        mean, std = _style_pool_eager(x, eps)
    return torch.stack((mean.flatten(1), std.flatten(1)), dim=2)


@torch.jit.unused
def _style_pool_eager(x: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    return _StylePool.apply(x, eps)


torch.fx.wrap('_style_pool')


def _integrate(pooled: torch.Tensor, cfc: torch.Tensor) -> torch.Tensor:
    """Style integration z = cfc_0 mean + cfc_1 std, (N, C, 1, 1) in the parameters' dtype."""
    return (pooled * cfc.view(-1, 2)).sum(dim=2).to(cfc.dtype)[..., None, None]


def style_gate(
        x: torch.Tensor,
        cfc: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        running_mean: Optional[torch.Tensor],
        running_var: Optional[torch.Tensor],
        batch_stats: bool,
        eps: float,
        bn_eps: float,
) -> torch.Tensor:
    """sigmoid(BN(z)) as a formula of its tensors, the running statistics left alone (double backward)."""
    z = _integrate(_style_pool(x, eps), cfc)
    return torch.sigmoid(F.batch_norm(z, running_mean, running_var, weight, bias, batch_stats, 0., bn_eps))


class StyleRecalibration(nn.Module):
    """SRM, a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            eps: float = 1e-5,
            inplace: bool = False,
            act_layer: Optional[LayerType] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels.
            eps: Added to the variance inside the square root of the style pooling (official 1e-5); must be > 0.
            inplace: Without autograd, scale the input in place (its caller must not read it again).
            act_layer: Accepted and ignored, so the layer also fits timm's cspnet / efficientnet attention hooks.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        check_channels(type(self).__name__, channels)
        check_positive(type(self).__name__, 'eps', eps)
        check_bool(type(self).__name__, 'inplace', inplace)
        self.eps = float(eps)
        self.inplace = inplace
        self.cfc = nn.Parameter(torch.zeros(2 * channels, **dd))
        self.bn = nn.BatchNorm2d(channels, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_min_spatial(x, 2, 'StyleRecalibration', 'the unbiased variance over H x W of one value is 0 / 0')
        x = check_batch_for_batchnorm(x, self.training, 'StyleRecalibration')
        if not torch.jit.is_scripting() and self._fusable(x):
            return self._fused(x)
        # z is float32 (or float64) until _integrate casts it: the BN runs in the parameters' dtype, as officially.
        gate = torch.sigmoid(self.bn(_integrate(_style_pool(x, self.eps), self.cfc)))
        return apply_gate(x, gate, self.inplace)

    @torch.jit.unused
    def _fusable(self, x: torch.Tensor) -> bool:
        return use_triton(x) and type(self.bn) is nn.BatchNorm2d  # a SyncBatchNorm or frozen one runs its own forward

    @torch.jit.unused
    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels._gate import batchnorm_state, fused_gate
        from ..kernels.srm import SrmKernels
        spec = SrmKernels(self.eps, batchnorm_state(self.bn))
        return fused_gate(spec, x, (self.cfc, self.bn.weight, self.bn.bias), self.inplace)

    def extra_repr(self) -> str:
        return f'{self.bn.num_features}, eps={self.eps}, inplace={self.inplace}'
