""" Float32 islands: math that overflows or loses too much in half precision.

Sums of squares, covariances, matrix iterations and softmax logits run in float32 (float64 stays float64). Under
autocast an explicit upcast is not enough, since autocast would run the matmuls inside in half precision again, so
such a region also switches autocast off. TorchScript cannot switch autocast off for a device known only at run time:
scripted layers run the same math with the upcast only (run them without autocast).
"""
from typing import Any, Callable, TypeVar

import torch

__all__ = ['acc_dtype', 'upcast', 'without_autocast']

T = TypeVar('T')


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """The accumulation dtype for x: float64 for float64, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def upcast(x: torch.Tensor) -> torch.Tensor:
    """x in at least float32 (a copy only when x is in half precision)."""
    return x.to(acc_dtype(x))


def without_autocast(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with autocast off on the device of the first argument (eager and torch.fx only).

    Callers branch on ``torch.jit.is_scripting()`` and call ``fn`` directly when scripted.
    """
    device_type = args[0].device.type
    is_available = getattr(torch.amp, 'is_autocast_available', None)  # torch >= 2.3
    if not (is_available(device_type) if is_available is not None else device_type in ('cpu', 'cuda')):
        return fn(*args)  # e.g. 'meta', where model statistics are counted: nothing to switch off
    with torch.autocast(device_type=device_type, enabled=False):
        return fn(*args)
