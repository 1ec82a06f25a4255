""" SAN's second-order channel attention (SOCA) as the official SAN code computes it (benchmark reference)

Mechanism: Second-order Channel Attention (SOCA) from SAN.
Official code: https://github.com/daitao/SAN at commit 7c1e61f (7c1e61f0d17b58e3400a14e631d9185dde1881b6):
    ``TrainCode/model/san.py`` (``SOCA``) and ``TrainCode/model/MPNCOV/python/MPNCOV.py`` (``Covpool`` and ``Sqrtm``,
    ``torch.autograd.Function`` s with hand-written backward passes).

Kept from the official code, in its order: the centre crop to at most 1000 x 1000 positions (a no-op on
classification maps); ``Covpool``: the full C x C covariance X I_hat X^T with the M x M centring matrix
I_hat = (I - 1 1^T / M) / M built in the default dtype, cast, repeated per sample and saved for the backward;
``Sqrtm``: trace pre-normalisation, Newton-Schulz iterations stored in (N, iter_n, C, C) buffers, post-compensation,
and the official backward (including its per-sample loop); the mean over dim 1, ``view(N, C, 1, 1)``, ``conv_du``
(1x1 conv, ReLU, 1x1 conv, sigmoid) and ``y_cov * x``. Parameter names and shapes are the official ones.

Differences from the official code:
* ``iter_n`` is a constructor argument (official: the literal 5 in ``SOCA.forward``).
* ``Sqrtm`` allocates its Y and Z buffers and the identity of its backward in the input's dtype. The official code
  allocates them in the default dtype: identical for float32 input, while for float64 input the official forward
  stops with a bmm dtype mismatch (and float16 input would be computed in float32).
* Our layer's options that the official code lacks are refused by ``from_layer``: a block-diagonal covariance
  (``cov_group_size`` smaller than the channel count; ``cov_group_size=None`` or C <= cov_group_size is the official
  full covariance) and an activation other than ReLU. Our layer's ``eps`` (added to the trace) is not taken: the
  official division by the plain trace is kept, so an all-zero or spatially constant input gives NaN, as officially.
"""
from typing import Any, Tuple

import torch
from torch import nn

from ._mpncov import Covpool
from ...layers import SecondOrderChannelAttention

__all__ = ['OfficialSOCA', 'from_layer']

LAYER = SecondOrderChannelAttention

_CROP = 1000  # official h1 = w1 = 1000


class _Sqrtm(torch.autograd.Function):
    """The official ``MPNCOV.Sqrtm`` for iter_n >= 2: Newton-Schulz square root and its hand-written backward."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, iter_n: int) -> torch.Tensor:
        x = input
        batch_size, dim = x.shape[0], x.shape[1]
        dtype = x.dtype
        i3 = 3.0 * torch.eye(dim, dim, device=x.device).view(1, dim, dim).repeat(batch_size, 1, 1).type(dtype)
        norm_a = (1.0 / 3.0) * x.mul(i3).sum(dim=1).sum(dim=1)
        a = x.div(norm_a.view(batch_size, 1, 1).expand_as(x))
        # Officially in the default dtype (see the module docstring).
        y = torch.zeros(batch_size, iter_n, dim, dim, requires_grad=False, device=x.device, dtype=dtype)
        z = torch.eye(dim, dim, device=x.device, dtype=dtype).view(1, dim, dim).repeat(batch_size, iter_n, 1, 1)
        zy = 0.5 * (i3 - a)
        y[:, 0, :, :] = a.bmm(zy)
        z[:, 0, :, :] = zy
        for i in range(1, iter_n - 1):
            zy = 0.5 * (i3 - z[:, i - 1, :, :].bmm(y[:, i - 1, :, :]))
            y[:, i, :, :] = y[:, i - 1, :, :].bmm(zy)
            z[:, i, :, :] = zy.bmm(z[:, i - 1, :, :])
        zy = 0.5 * y[:, iter_n - 2, :, :].bmm(i3 - z[:, iter_n - 2, :, :].bmm(y[:, iter_n - 2, :, :]))
        out = zy * torch.sqrt(norm_a).view(batch_size, 1, 1).expand_as(x)
        ctx.save_for_backward(input, a, zy, norm_a, y, z)
        ctx.iter_n = iter_n
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Tuple[torch.Tensor, None]:
        input, a, zy, norm_a, y, z = ctx.saved_tensors
        n = ctx.iter_n
        x = input
        batch_size, dim = x.shape[0], x.shape[1]
        dtype = x.dtype
        der_post_com = grad_output * torch.sqrt(norm_a).view(batch_size, 1, 1).expand_as(x)
        der_post_com_aux = (grad_output * zy).sum(dim=1).sum(dim=1).div(2 * torch.sqrt(norm_a))
        i3 = 3.0 * torch.eye(dim, dim, device=x.device).view(1, dim, dim).repeat(batch_size, 1, 1).type(dtype)
        dldy = 0.5 * (der_post_com.bmm(i3 - y[:, n - 2, :, :].bmm(z[:, n - 2, :, :]))
                      - z[:, n - 2, :, :].bmm(y[:, n - 2, :, :]).bmm(der_post_com))
        dldz = -0.5 * y[:, n - 2, :, :].bmm(der_post_com).bmm(y[:, n - 2, :, :])
        for i in range(n - 3, -1, -1):
            yz_i = i3 - y[:, i, :, :].bmm(z[:, i, :, :])
            zy_i = z[:, i, :, :].bmm(y[:, i, :, :])
            dldy_ = 0.5 * (dldy.bmm(yz_i) - z[:, i, :, :].bmm(dldz).bmm(z[:, i, :, :]) - zy_i.bmm(dldy))
            dldz_ = 0.5 * (yz_i.bmm(dldz) - y[:, i, :, :].bmm(dldy).bmm(y[:, i, :, :]) - dldz.bmm(zy_i))
            dldy = dldy_
            dldz = dldz_
        der_ns_iter = 0.5 * (dldy.bmm(i3 - a) - dldz - a.bmm(dldy))
        grad_input = der_ns_iter.div(norm_a.view(batch_size, 1, 1).expand_as(x))
        grad_aux = der_ns_iter.mul(x).sum(dim=1).sum(dim=1)
        for i in range(batch_size):  # the official per-sample loop; the identity in x's dtype (officially default)
            grad_input[i, :, :] += ((der_post_com_aux[i] - grad_aux[i] / (norm_a[i] * norm_a[i]))
                                    * torch.ones(dim, device=x.device, dtype=dtype).diag())
        return grad_input, None


class OfficialSOCA(nn.Module):
    """The official SAN ``SOCA`` (full C x C covariance, Newton-Schulz square root, column mean, 1x1-conv gate)."""

    def __init__(self, channel: int, reduction: int = 16, iter_n: int = 5, device=None, dtype=None):
        """
        Args:
            channel: Input (and output) channels.
            reduction: Hidden width of the gate is channel // reduction (official ``--reduction``, default 16).
            iter_n: Newton-Schulz iterations, >= 2 (official: the literal 5).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if iter_n < 2:
            raise ValueError(f'OfficialSOCA: iter_n={iter_n!r} is not supported; expected an int >= 2.')
        self.iter_n = iter_n
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1, padding=0, bias=True, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(channel // reduction, channel, 1, padding=0, bias=True, **dd),
            nn.Sigmoid(),
        )

    @staticmethod
    def _crop(x: torch.Tensor) -> torch.Tensor:
        # The official centre crop, branches as written (the first one for every classification map).
        h, w = x.shape[2], x.shape[3]
        if h < _CROP and w < _CROP:
            return x
        if h < _CROP and w > _CROP:
            left = (w - _CROP) // 2
            return x[:, :, :, left:(left + _CROP)]
        if w < _CROP and h > _CROP:
            top = (h - _CROP) // 2
            return x[:, :, top:top + _CROP, :]
        top = (h - _CROP) // 2
        left = (w - _CROP) // 2
        return x[:, :, top:(top + _CROP), left:(left + _CROP)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, C, h, w = x.shape
        x_sub = self._crop(x)
        cov_mat = Covpool.apply(x_sub)
        cov_mat_sqrt = _Sqrtm.apply(cov_mat, self.iter_n)
        cov_mat_sum = torch.mean(cov_mat_sqrt, 1)
        cov_mat_sum = cov_mat_sum.view(batch_size, C, 1, 1)
        y_cov = self.conv_du(cov_mat_sum)
        return y_cov * x


def _unsupported(option: str, why: str) -> ValueError:
    return ValueError(f'SOCA reference: {option} is not supported; {why}.')


def from_layer(layer: SecondOrderChannelAttention) -> OfficialSOCA:
    """The official computation with ``layer``'s settings and parameters, on its device and dtype.

    Raises ValueError for a grouped covariance (``cov_group_size`` < channels) or a non-ReLU activation, which the
    official code does not have. ``layer.eps`` is not used (see the module docstring).
    """
    conv = layer.conv_du[0]
    channels = conv.in_channels
    if layer.groups != 1:
        raise _unsupported(
            f'cov_group_size={layer.cov_group_size} with {channels} channels ({layer.groups} covariance blocks)',
            'the official SOCA forms the full C x C covariance (use cov_group_size=None)')
    if type(layer.conv_du[1]) is not nn.ReLU:
        raise _unsupported(f'act_layer={type(layer.conv_du[1]).__name__}', 'the official code hard-codes ReLU')
    ref = OfficialSOCA(
        channels, reduction=layer.reduction, iter_n=layer.iter_n, device=conv.weight.device, dtype=conv.weight.dtype)
    ref.load_state_dict(layer.state_dict())  # conv_du.0 / conv_du.2, as officially
    ref.train(layer.training)
    return ref
