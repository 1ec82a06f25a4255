""" Second-order Channel Attention (SOCA) from SAN

Paper: `Second-Order Attention Network for Single Image Super-Resolution` - https://doi.org/10.1109/CVPR.2019.01132
    (CVPR 2019; there is no arXiv version)
Official code: https://github.com/daitao/SAN (``TrainCode/model/san.py``, ``SOCA``; the covariance and matrix square
    root in ``TrainCode/model/MPNCOV/python/MPNCOV.py``, ``Covpool`` / ``Sqrtm``; commit 7c1e61f)

Math, per sample, with X the (C, M = H*W) feature matrix and I the C x C identity:
    S    = (1/M) (X - mean_M X)(X - mean_M X)^T                          biased covariance, C x C
    A    = S / tr(S);  Z_0 = (3I - A)/2;  Y_0 = A Z_0                      trace pre-normalisation, first step
    T_k  = (3I - Z_{k-1} Y_{k-1})/2;  Y_k = Y_{k-1} T_k;  Z_k = T_k Z_{k-1}      k = 1 .. iter_n - 2
    R    = sqrt(tr S) * Y_{n-2} (3I - Z_{n-2} Y_{n-2}) / 2                 Newton-Schulz, then post-compensation
    z_c  = mean_i R_ic;   out = x * sigmoid(W_2 ReLU(W_1 z + b_1) + b_2)   column mean, then SE-style 1x1 convs
R approximates S^(1/2) with the official, fixed iter_n = 5 (the argument ``SqrtmLayer(cov_mat, 5)`` in
``SOCA.forward``): a truncated iteration, not an exact square root. W_1: C -> C // reduction and W_2 back, with bias.

Defaults: ``reduction=16``, the value the released SAN models use (``--reduction`` defaults to 16 and is passed to
every SOCA that runs; the class default of 8 only reaches a SOCA inside ``Nonlocal_CA`` that its forward never
calls), ``iter_n=5``.

Placement: SAN puts one SOCA at the end of each residual group of a 64-channel super-resolution network; the authors
never used it in a ResNet. Here it is a per-block ``attn_layer`` like SE.

Deviations from the official code:
* Cost (``cov_group_size``, default 64). The official layer forms one C x C covariance and runs 12 C x C matrix
  products per sample: 1e11 multiply-adds per sample at C = 2048, and +397 GMACs in a ResNet-50 with one layer per
  block, 97x the network itself (+1.1 GMACs, 27 %, with groups of 64; +0.36 GMACs with 32). Here the channels are
  split into ceil(C / 64) consecutive groups of near-equal size, and S is replaced by its block-diagonal part (the
  covariances within each group). Everything else is the official math applied to that matrix: the trace used for
  normalisation is the trace of the whole S (the same value), the Newton-Schulz steps act block by block
  (block-diagonal matrices stay block-diagonal), and the column mean divides by C. With C <= 64 (SAN's own width)
  there is one group and the layer is exactly the official one; ``cov_group_size=None`` always uses the full C x C
  covariance. What is lost for C > 64 is the correlation between channels of different groups.
* tr(S) is replaced by tr(S) + eps (default 1e-12). The official layer divides by tr(S), which is exactly 0 for an
  all-zero or spatially constant input (what every attention layer sees at init in timm's ResNet, whose zero-init of
  the last BN zeroes the block output), giving NaN in the forward and the backward pass. The change is a relative
  1e-12 / tr(S); in float32, tr(S) + 1e-12 rounds to tr(S) whenever tr(S) >= 2^-15 (3.1e-5).
* Covariance and Newton-Schulz run in float32 (float64 stays float64) with autocast disabled, and the result is cast
  back to the input dtype before the 1x1 convs; the official ``Sqrtm`` allocates its buffers in the default dtype
  and breaks in float16. (A TorchScript-compiled layer cannot switch autocast off; run it without autocast.)
* Plain autograd replaces the official hand-written ``Covpool``/``Sqrtm`` backward passes (same gradient: the tests
  compare against the official backward formula), so TorchScript and torch.fx work.
* The centre crop of the official forward to at most 1000 x 1000 positions is dropped; classification feature maps
  are far smaller.
"""
from typing import Optional

import torch
import torch.fx
from torch import nn
from timm.layers import LayerType, create_act_layer, register_notrace_function

from ._checks import check_act_layer, check_channels, check_int, check_positive, divided_channels
from ._precision import upcast, without_autocast
from ._reduce import covariance

__all__ = ['SecondOrderChannelAttention']


def newton_schulz_sqrtm(cov: torch.Tensor, iter_n: int, eps: float) -> torch.Tensor:
    """The official ``Sqrtm`` forward: trace pre-normalisation, iter_n Newton-Schulz steps, post-compensation.

    Args:
        cov: (B, G, g, g): the G diagonal blocks of each sample's covariance (G = 1: the whole matrix).
        iter_n: Newton-Schulz iteration count (official: 5), at least 2.
        eps: Added to the trace of the whole covariance (the sum over all blocks) before dividing by it.

    Returns:
        The approximate square roots, same shape as ``cov``.
    """
    B, G, g, _ = cov.shape
    trace = torch.diagonal(cov, dim1=-2, dim2=-1).sum(dim=(1, 2)).reshape(B, 1, 1, 1) + eps
    a = cov / trace
    eye3 = 3. * torch.eye(g, dtype=cov.dtype, device=cov.device)
    zy = 0.5 * (eye3 - a)
    y = torch.matmul(a, zy)
    z = zy
    for _ in range(iter_n - 2):
        zy = 0.5 * (eye3 - torch.matmul(z, y))
        y, z = torch.matmul(y, zy), torch.matmul(zy, z)
    y = 0.5 * torch.matmul(y, eye3 - torch.matmul(z, y))
    return y * trace.sqrt()


def _newton_schulz_column_mean(
        x: torch.Tensor, groups: int, group_channels: int, iter_n: int, eps: float) -> torch.Tensor:
    """Column means (N, C) of the square root of the block-diagonal covariance of x (N, C, H, W), in x's dtype."""
    B, C, H, W = x.shape
    feats = x.reshape(B, C, H * W)
    padding = groups * group_channels - C
    if padding > 0:
        # Zero channels add zero rows and columns to the covariance, which every step keeps exactly zero.
        feats = torch.cat([feats, feats.new_zeros(B, padding, H * W)], dim=1)
    cov = covariance(feats.reshape(B, groups, group_channels, H * W))  # (B, G, g, g)
    root = newton_schulz_sqrtm(cov, iter_n, eps)
    # Official column mean over all C rows of the (block-diagonal) C x C root.
    return (root.sum(dim=-2) / C).reshape(B, groups * group_channels)[:, :C]


@register_notrace_function
def second_order_descriptor(
        x: torch.Tensor, groups: int, group_channels: int, iter_n: int, eps: float) -> torch.Tensor:
    """Official SOCA statistic z (N, C) of an (N, C, H, W) map, in float32 (float64 for float64) without autocast."""
    acc = upcast(x)
    if torch.jit.is_scripting():
        z = _newton_schulz_column_mean(acc, groups, group_channels, iter_n, eps)
    else:
        z = without_autocast(_newton_schulz_column_mean, acc, groups, group_channels, iter_n, eps)
    return z


torch.fx.wrap('second_order_descriptor')


class SecondOrderChannelAttention(nn.Module):
    """SAN's second-order channel attention (SOCA), a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            reduction: int = 16,
            iter_n: int = 5,
            cov_group_size: Optional[int] = 64,
            eps: float = 1e-12,
            act_layer: LayerType = nn.ReLU,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels.
            reduction: Hidden width of the 1x1-conv MLP is channels // reduction (SAN: 16; must leave >= 1).
            iter_n: Newton-Schulz iterations (official: 5); at least 2.
            cov_group_size: Largest number of channels per covariance block (see the module docstring); None
                forms the full C x C covariance as officially, at O(C^3) cost per sample.
            eps: Added to the covariance trace before the normalisation (> 0).
            act_layer: Activation between the two 1x1 convs (official: ReLU).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        name = type(self).__name__
        check_channels(name, channels)
        check_int(name, 'iter_n', iter_n, 2)
        check_int(name, 'cov_group_size', cov_group_size, allow_none=True)
        check_positive(name, 'eps', eps)
        hidden = divided_channels(name, channels, reduction)
        check_act_layer(name, act_layer)
        groups = 1 if cov_group_size is None else -(-channels // cov_group_size)
        self.reduction = reduction
        self.iter_n = iter_n
        self.cov_group_size = cov_group_size
        self.eps = float(eps)
        self.groups = groups
        self.group_channels = -(-channels // groups)
        # Names follow the official SOCA (conv_du.0 / conv_du.2), so its weights map key for key.
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=True, **dd),
            create_act_layer(act_layer, inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=True, **dd),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        z = second_order_descriptor(x, self.groups, self.group_channels, self.iter_n, self.eps)
        gate = self.conv_du(z.to(x.dtype).reshape(B, C, 1, 1))
        return x * gate.to(x.dtype)

    def extra_repr(self) -> str:
        return (f'reduction={self.reduction}, iter_n={self.iter_n}, cov_group_size={self.cov_group_size} '
                f'({self.groups} x {self.group_channels} channels), eps={self.eps}')
