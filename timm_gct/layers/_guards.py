""" Input checks that run in forward, for layers whose math breaks on some input shapes.

A BatchNorm over per-sample statistics (N, C, 1, 1) cannot train on a batch of one, and an unbiased variance over a
1x1 map is 0 / 0. Without a check, both fail deep inside torch or silently give NaN; these raise a ValueError naming
the layer and the reason instead. The checks depend on tensor shapes, so they are leaves for torch.fx (registered
for timm's FX feature extraction; a calling module also calls ``torch.fx.wrap`` on the name it imports).
"""
import torch
from timm.layers import register_notrace_function

__all__ = ['check_batch_for_batchnorm', 'check_min_spatial']


@register_notrace_function
def check_batch_for_batchnorm(x: torch.Tensor, training: bool, layer: str) -> torch.Tensor:
    """Raise if a training batch has a single sample (a BatchNorm over per-sample statistics needs two); returns x."""
    if training and x.shape[0] < 2:
        raise ValueError(
            f'{layer}: got a training batch of {x.shape[0]} sample; its BatchNorm over per-sample statistics needs '
            f'at least 2 samples per batch in training mode (use eval mode, or a larger batch).')
    return x


@register_notrace_function
def check_min_spatial(x: torch.Tensor, min_size: int, layer: str, reason: str) -> torch.Tensor:
    """Raise if the H x W map holds fewer than ``min_size`` positions; returns x."""
    if x.shape[-2] * x.shape[-1] < min_size:
        raise ValueError(
            f'{layer}: got a {x.shape[-2]}x{x.shape[-1]} feature map; it needs at least {min_size} positions '
            f'({reason}).')
    return x
