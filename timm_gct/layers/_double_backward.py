""" Second derivatives through the layers whose training backward is written out by hand (GCT, NAM, SRM).

Those ``autograd.Function`` backwards run without autograd, which is what makes them fast. When autograd records a
backward itself (``create_graph=True``: gradient penalties, double backpropagation, MAML-style meta-learning), the
backward calls ``differentiate`` instead: autograd differentiates the plain formula, rebuilt on the saved inputs, so
the gradients it returns carry a graph and second derivatives are exact. (``once_differentiable`` would raise in most
such cases, and where the layer's output is the differentiated quantity itself it would return gradients without a
graph, which silently drops a penalty's second-order term.)
"""
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

__all__ = ['differentiate']


def differentiate(
        formula: Callable[..., Union[torch.Tensor, Tuple[torch.Tensor, ...]]],
        inputs: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        needs: Sequence[bool],
) -> Tuple[Optional[torch.Tensor], ...]:
    """Gradients of ``formula(*inputs)`` against ``grads``, with a graph, for the inputs flagged in ``needs``."""
    with torch.enable_grad():
        outputs = formula(*inputs)
    outputs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
    wanted = [t for t, need in zip(inputs, needs) if need]
    found = iter(torch.autograd.grad(outputs, wanted, tuple(grads), create_graph=True, allow_unused=True))
    return tuple(next(found) if need else None for need in needs)
