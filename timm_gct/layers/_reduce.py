""" Overflow-safe per-channel spatial reductions shared by the attention layers.

Half-precision sums of squares over a feature map overflow (65504 is reached by a 56x56 map of RMS ~4.6), so the
reductions accumulate in float32, or float64 when the input already is. The dtype choice depends on the input's
dtype, which torch.fx cannot branch on, so the helper is registered as a leaf for timm's FX feature extraction; a
module that calls it also calls ``torch.fx.wrap('spatial_sum')`` so that plain ``torch.fx.symbolic_trace`` works.
"""
import torch
from timm.layers import register_notrace_function

__all__ = ['spatial_sum']


@register_notrace_function
def spatial_sum(x: torch.Tensor, p: int) -> torch.Tensor:
    """Per-channel reduction over H x W of an NCHW tensor, keeping dims, in at least float32.

    Args:
        x: Input of shape (N, C, H, W).
        p: 2 for the sum of squares, 1 for the sum of absolute values, 0 for the plain sum.

    Returns:
        Tensor of shape (N, C, 1, 1) in float64 if ``x`` is float64, else float32.
    """
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if p == 2:
        return torch.linalg.vector_norm(x, 2, dim=(2, 3), keepdim=True, dtype=acc_dtype).square()
    if p == 1:
        return torch.linalg.vector_norm(x, 1, dim=(2, 3), keepdim=True, dtype=acc_dtype)
    return torch.sum(x, dim=(2, 3), keepdim=True, dtype=acc_dtype)

