""" Gated Channel Transformation (GCT)

Paper: `Gated Channel Transformation for Visual Recognition` - https://arxiv.org/abs/1909.11519 (CVPR 2020)
Official code: https://github.com/z-x-yang/GCT (``PyTorch/GCT.py``)

Math, mode 'l2' (the default), per sample and channel c of an (N, C, H, W) input x:
    s_c   = alpha_c * sqrt(sum_hw x_c^2 + eps)                 global context embedding
    s'_c  = gamma_c * s_c / sqrt(mean_c(s_c^2) + eps)           channel normalisation (sqrt(C) * s_c / ||s||_2)
    out_c = x_c * (1 + tanh(s'_c + beta_c))                     gating adaptation
Mode 'l1' uses s_c = alpha_c * sum_hw |x_c| (sum_hw x_c with ``after_relu``) and s'_c = gamma_c * s_c /
(mean_c |s_c| + eps). alpha = 1 and gamma = beta = 0 at init, so the gate is exactly 1: the layer is the identity.

Deviations from the official code, all without a change of math:
* The spatial reductions accumulate in float32 (float64 for float64 input) and the gate is cast back to the input
  dtype; the official code sums x^2 in the input dtype and overflows to inf/NaN in pure float16.
* ``beta`` is stored 1-D, shape (C,), where the official code uses (1, C, 1, 1). timm's optimizer factory leaves 1-D
  parameters out of weight decay, which reproduces the official recipe (weight decay on everything but beta);
  alpha and gamma keep their 4-D shape and are decayed, as officially.
* An unknown mode is a ValueError at construction (the official code calls an unimported ``sys.exit``).

Speed (``timm-gct bench``; no change of math): in eager training the layer is one ``autograd.Function`` whose
backward makes four passes over the feature map (the official code's autograd graph makes seven, with six full-size
temporaries). It keeps only the input for the backward, as the official code does. A backward that autograd records
(``create_graph=True``, e.g. a gradient penalty) differentiates the plain formula instead (``_double_backward.py``);
TorchScript and torch.compile (where inductor fuses the passes itself) run the plain formula (torch.fx keeps
``gated_channel_transform`` as a leaf, which picks its path at run time). Without autograd (``eval`` under
``torch.no_grad`` / ``inference_mode``), ``inplace=True`` scales the input in place instead of allocating the output
(``_gating.py``): the models registered here set it, since timm's blocks never read the attention layer's input
again.

Placement: the official ResNets put a GCT in front of every convolution (stride in the first 1x1 conv; registered
as ``gct_resnet*_official``); timm's ``attn_layer`` hook places one per residual block after the last BN. The
authors' README reports that one GCT per block costs only 0.1-0.2 % top-1 on ImageNet, but placed before the first
or the last 1x1 conv, not after the last BN.
"""
from typing import Optional, Tuple

import torch
import torch.fx
from torch import nn
from timm.layers import LayerType, register_notrace_function

from ..kernels import use_triton
from ._checks import check_bool, check_channels, check_choice, check_positive
from ._double_backward import differentiate
from ._gating import apply_gate, autograd_records
from ._precision import acc_dtype
from ._reduce import spatial_sum

__all__ = ['GatedChannelTransform', 'gated_channel_transform']

torch.fx.wrap('spatial_sum')


def _gate(embedding_sum: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float,
          l2: bool) -> torch.Tensor:
    """1 + tanh(normalised embedding * gamma + beta) from the per-channel sums, shape (N, C, 1, 1)."""
    if l2:
        embedding = (embedding_sum + eps).sqrt() * alpha
        norm = gamma / (embedding.square().mean(dim=1, keepdim=True) + eps).sqrt()
    else:
        embedding = embedding_sum * alpha
        norm = gamma / (embedding.abs().mean(dim=1, keepdim=True) + eps)
    return 1. + torch.tanh(embedding * norm + beta.view(1, -1, 1, 1))


def _gate_backward(
        grad_gate: torch.Tensor,
        embedding_sum: torch.Tensor,
        alpha: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        eps: float,
        l2: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``_gate`` for its four tensor inputs, written out (the small graph recomputed, no autograd)."""
    if l2:
        root = (embedding_sum + eps).sqrt()
        embedding = root * alpha
        inv = (embedding.square().mean(dim=1, keepdim=True) + eps).rsqrt()
    else:
        embedding = embedding_sum * alpha
        inv = 1. / (embedding.abs().mean(dim=1, keepdim=True) + eps)
    norm = gamma * inv
    tanh = torch.tanh(embedding * norm + beta.view(1, -1, 1, 1))
    grad_z = grad_gate * (1. - tanh.square())
    grad_norm = grad_z * embedding
    grad_gamma = (grad_norm * inv).sum(dim=0, keepdim=True)
    grad_inv = (grad_norm * gamma).sum(dim=1, keepdim=True)
    channels = embedding.shape[1]
    if l2:  # inv = (mean(e^2) + eps)^(-1/2)
        grad_embedding = grad_z * norm - grad_inv * inv.pow(3) * embedding / channels
        grad_alpha = (grad_embedding * root).sum(dim=0, keepdim=True)
        grad_sum = grad_embedding * alpha / (2. * root)
    else:  # inv = 1 / (mean|e| + eps)
        grad_embedding = grad_z * norm - grad_inv * inv.square() * embedding.sign() / channels
        grad_alpha = (grad_embedding * embedding_sum).sum(dim=0, keepdim=True)
        grad_sum = grad_embedding * alpha
    return grad_sum, grad_alpha, grad_gamma, grad_z.sum(dim=(0, 2, 3))


class _GatedChannelFunction(torch.autograd.Function):
    """GCT with a hand-fused backward. With s_c = sum_hw phi(x) (phi = x^2, |x| or x) and out = x * gate(s):
    dL/dx = g * gate + phi'(x) * dL/ds, with dL/ds from the small (N, C, 1, 1) gate graph fed with
    dL/dgate = sum_hw g * x. Four passes over the map: g * x (into the buffer of the result), its sum, g * gate into
    the same buffer, and the phi'(x) term added in place."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float,
                p: int) -> torch.Tensor:
        embedding_sum = spatial_sum(x, p)
        gate = _gate(embedding_sum, alpha, gamma, beta, eps, p == 2).to(x.dtype)
        ctx.eps, ctx.p = eps, p
        ctx.save_for_backward(x, embedding_sum, alpha, gamma, beta, gate)
        return x * gate

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, embedding_sum, alpha, gamma, beta, gate = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: gradients with a graph, from the plain formula
            return differentiate(lambda *t: _plain(*t, ctx.eps, ctx.p), (x, alpha, gamma, beta), (grad,),
                                 ctx.needs_input_grad[:4]) + (None, None)
        grad_x = torch.mul(grad, x)
        grad_gate = grad_x.sum(dim=(2, 3), keepdim=True, dtype=embedding_sum.dtype)
        grad_sum, grad_alpha, grad_gamma, grad_beta = _gate_backward(
            grad_gate, embedding_sum, alpha, gamma, beta, ctx.eps, ctx.p == 2)
        torch.mul(grad, gate, out=grad_x)
        if ctx.p == 2:
            grad_x.addcmul_(x, (2. * grad_sum).to(x.dtype))
        elif ctx.p == 1:
            grad_x.addcmul_(x.sign(), grad_sum.to(x.dtype))
        else:
            grad_x.add_(grad_sum.to(x.dtype))
        return grad_x, grad_alpha.to(alpha.dtype), grad_gamma.to(gamma.dtype), grad_beta.to(beta.dtype), None, None


def _plain(
        x: torch.Tensor,
        alpha: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        eps: float,
        p: int,
) -> torch.Tensor:
    """The formula for autograd to differentiate (TorchScript, torch.compile, double backward)."""
    if p == 2:
        # square + sum rather than spatial_sum's vector_norm, whose second derivative is NaN at an all-zero channel
        # (which timm's zero_init_last makes of every channel at init)
        embedding_sum = x.to(acc_dtype(x)).square().sum(dim=(2, 3), keepdim=True)
    else:
        embedding_sum = spatial_sum(x, p)
    return x * _gate(embedding_sum, alpha, gamma, beta, eps, p == 2).to(x.dtype)


@torch.jit.unused
def _eager(x: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float, p: int,
           inplace: bool) -> torch.Tensor:
    if use_triton(x):
        from ..kernels._gate import fused_gate
        from ..kernels.gct import GctKernels
        return fused_gate(GctKernels(eps, p), x, (alpha, gamma, beta), inplace)
    if autograd_records(x, alpha, gamma, beta):
        return _GatedChannelFunction.apply(x, alpha, gamma, beta, eps, p)
    return apply_gate(x, _gate(spatial_sum(x, p), alpha, gamma, beta, eps, p == 2), inplace)


@register_notrace_function  # a leaf for torch.fx: the eager path it picks at run time is not traceable
def gated_channel_transform(
        x: torch.Tensor,
        alpha: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        eps: float = 1e-5,
        p: int = 2,
        inplace: bool = False,
) -> torch.Tensor:
    """GCT of an (N, C, H, W) input. ``p``: 2 for mode 'l2', 1 for 'l1', 0 for 'l1' after ReLU; ``alpha`` and
    ``gamma`` of shape (1, C, 1, 1), ``beta`` of shape (C,). ``inplace`` scales ``x`` in place when autograd is off."""
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        return _plain(x, alpha, gamma, beta, eps, p)
    return _eager(x, alpha, gamma, beta, eps, p, inplace)


torch.fx.wrap('gated_channel_transform')


class GatedChannelTransform(nn.Module):
    """Gated Channel Transformation, a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            mode: str = 'l2',
            eps: float = 1e-5,
            after_relu: bool = False,
            inplace: bool = False,
            act_layer: Optional[LayerType] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels.
            mode: Global context embedding, 'l2' (official default) or 'l1'.
            eps: Added inside both square roots ('l2') or to the mean magnitude ('l1'); must be > 0.
            after_relu: 'l1' only: the input is known to be non-negative, so sum x instead of |x|.
            inplace: Without autograd, scale the input in place (its caller must not read it again).
            act_layer: Accepted and ignored, so the layer also fits timm's cspnet / efficientnet attention hooks.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        check_channels(type(self).__name__, channels)
        check_choice(type(self).__name__, 'mode', mode, ('l2', 'l1'))
        check_positive(type(self).__name__, 'eps', eps)
        check_bool(type(self).__name__, 'after_relu', after_relu)
        check_bool(type(self).__name__, 'inplace', inplace)
        if after_relu and mode != 'l1':
            raise ValueError(
                f"GatedChannelTransform: after_relu=True is only allowed with mode='l1', got mode={mode!r}.")
        self.mode = mode
        self.eps = eps
        self.after_relu = after_relu
        self.inplace = inplace
        self.p = 2 if mode == 'l2' else 0 if after_relu else 1
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1, **dd))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1, **dd))
        self.beta = nn.Parameter(torch.zeros(channels, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gated_channel_transform(x, self.alpha, self.gamma, self.beta, self.eps, self.p, self.inplace)

    def extra_repr(self) -> str:
        return (f'{self.alpha.shape[1]}, mode={self.mode!r}, eps={self.eps}, after_relu={self.after_relu}, '
                f'inplace={self.inplace}')
