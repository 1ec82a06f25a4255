""" The last step of every channel gate, ``x * gate``, without a new feature map when nothing needs ``x`` again.

Writing the product into a fresh tensor costs an allocation and a first touch of every page, about as much as the
product itself on a CPU. Without autograd (``torch.no_grad`` / ``inference_mode``) a layer built with
``inplace=True`` scales its input in place instead, as timm's ``inplace`` activations do; its caller must not read the
input again (timm's blocks never do). With autograd on, and in TorchScript or torch.compile, it is always the plain
product. The choice depends on run-time state that torch.fx cannot branch on, so this is an FX leaf (registered for
timm's FX feature extraction; a calling module also calls ``torch.fx.wrap('apply_gate')``).
"""
from typing import List

import torch
from timm.layers import register_notrace_function

__all__ = ['apply_gate', 'autograd_records', 'in_place_allowed']


@torch.jit.unused
def autograd_records(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on ``tensors`` (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


@torch.jit.unused
def in_place_allowed(tensors: List[torch.Tensor]) -> bool:
    """Whether an elementwise result on ``tensors`` may be written in place: autograd records nothing on them and
    torch.compile is not tracing (inductor fuses the op anyway; an in-place write would only add a mutation)."""
    if torch.compiler.is_compiling():
        return False
    return not autograd_records(*tensors)


@register_notrace_function
def apply_gate(x: torch.Tensor, gate: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``x * gate`` (gate broadcast, cast to x's dtype); into ``x`` itself when ``inplace`` and autograd is off."""
    gate = gate.to(x.dtype)
    if torch.jit.is_scripting() or not inplace or not in_place_allowed([x, gate]):
        return x * gate
    return x.mul_(gate)

