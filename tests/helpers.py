""" Shared test helpers. """
import torch
from torch import nn

__all__ = ['randomize']


def randomize(module: nn.Module, seed: int = 0, scale: float = 1.) -> nn.Module:
    """Move a module away from its init so that no path through it is trivially zero.

    Every parameter gets N(0, scale^2) values; BatchNorm running statistics get N(0, 1) means and U(0.5, 1.5)
    variances; other buffers (e.g. FcaNet's fixed DCT filters) keep their values.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
        for name, b in module.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64))
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=g, dtype=torch.float64) + 0.5)
    return module
