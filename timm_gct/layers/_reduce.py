""" Overflow-safe per-channel spatial reductions shared by the attention layers.

Half-precision sums of squares over a feature map overflow (65504 is reached by a 56x56 map of RMS ~4.6), so the
reductions accumulate in float32, or float64 when the input already is. The dtype choice depends on the input's
dtype, which torch.fx cannot branch on, so the helper is registered as a leaf for timm's FX feature extraction; a
module that calls it also calls ``torch.fx.wrap('spatial_sum')`` so that plain ``torch.fx.symbolic_trace`` works.
"""
import torch
from timm.layers import register_notrace_function

from ._precision import acc_dtype

__all__ = ['covariance', 'spatial_sum']


@register_notrace_function
def spatial_sum(x: torch.Tensor, p: int) -> torch.Tensor:
    """Per-channel reduction over H x W of an NCHW tensor, keeping dims, in at least float32.

    Args:
        x: Input of shape (N, C, H, W).
        p: 2 for the sum of squares, 1 for the sum of absolute values, 0 for the plain sum.

    Returns:
        Tensor of shape (N, C, 1, 1) in float64 if ``x`` is float64, else float32.
    """
    dtype = acc_dtype(x)
    if p == 2:
        if x.device.type == 'cpu' and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            # On the CPU, vector_norm over the strided H x W of a channels_last map is several times slower than a
            # square and a plain sum (the same float32 math, summed in another order).
            return x.to(dtype).square().sum(dim=(2, 3), keepdim=True)
        return torch.linalg.vector_norm(x, 2, dim=(2, 3), keepdim=True, dtype=dtype).square()
    if p == 1:
        if x.device.type == 'cpu':
            # abs + sum: about twice as fast on the CPU as vector_norm(x, 1), which takes a generic p-norm kernel
            return torch.sum(x.abs(), dim=(2, 3), keepdim=True, dtype=dtype)
        return torch.linalg.vector_norm(x, 1, dim=(2, 3), keepdim=True, dtype=dtype)
    return torch.sum(x, dim=(2, 3), keepdim=True, dtype=dtype)


def covariance(feats: torch.Tensor) -> torch.Tensor:
    """Biased covariance (1/M)(X - mean)(X - mean)^T of the rows of (..., n, M) features: (..., n, n).

    Formed from the centred features, never from the official M x M centring matrix I_bar = (I - 11^T / M) / M.
    Callers upcast and switch autocast off (see _precision.py).
    """
    feats = feats - feats.mean(dim=-1, keepdim=True)
    return torch.matmul(feats, feats.transpose(-1, -2)) / feats.shape[-1]

