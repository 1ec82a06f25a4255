""" Float32 islands: math that overflows or loses too much in half precision.

Sums of squares, covariances, matrix iterations, softmax logits and products of activations run in float32 (float64
stays float64). Under autocast an explicit upcast is not enough, since autocast would run the matmuls and convs inside
in half precision again, so such a region also switches autocast off. TorchScript cannot switch autocast off for a
device known only at run time: scripted layers run the same math with the upcast only (run them without autocast).

``UpcastConv2d`` and ``UpcastBatchNorm2d`` carry such a region through the convs and BatchNorms that consume its
values while they are still large: in a float16 model their parameters stay float16, the arithmetic does not.
"""
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from timm.layers import register_notrace_function

__all__ = ['UpcastBatchNorm2d', 'UpcastConv2d', 'acc_dtype', 'upcast', 'without_autocast']

T = TypeVar('T')


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """The accumulation dtype for x: float64 for float64, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@register_notrace_function  # its dtype choice is a leaf for timm's FX tracer; callers also torch.fx.wrap('upcast')
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


def _conv2d_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int) -> torch.Tensor:
    dtype = acc_dtype(x)
    return F.conv2d(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), groups=groups)


@register_notrace_function
def conv2d_upcast(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int) -> torch.Tensor:
    """Stride-1, unpadded ``F.conv2d`` in x's accumulation dtype (weights cast to it) without autocast."""
    if torch.jit.is_scripting():
        return _conv2d_impl(x, weight, bias, groups)
    return without_autocast(_conv2d_impl, x, weight, bias, groups)


@register_notrace_function
def batch_norm_upcast(
        x: torch.Tensor,
        running_mean: Optional[torch.Tensor],
        running_var: Optional[torch.Tensor],
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        use_batch_stats: bool,
        momentum: float,
        eps: float,
) -> torch.Tensor:
    """``F.batch_norm`` in x's accumulation dtype; updated running statistics are stored back in their own dtype."""
    dtype = acc_dtype(x)
    mean = None if running_mean is None else running_mean.to(dtype)
    var = None if running_var is None else running_var.to(dtype)
    out = F.batch_norm(
        x.to(dtype), mean, var, None if weight is None else weight.to(dtype), None if bias is None else bias.to(dtype),
        use_batch_stats, momentum, eps)
    # Running statistics in another dtype were updated in float32 copies (in place when the dtypes match).
    if use_batch_stats and running_mean is not None and mean is not None and running_mean.dtype != dtype:
        running_mean.copy_(mean)
    if use_batch_stats and running_var is not None and var is not None and running_var.dtype != dtype:
        running_var.copy_(var)
    return out


torch.fx.wrap('conv2d_upcast')
torch.fx.wrap('batch_norm_upcast')


class UpcastConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (stride 1, no padding) that convolves in at least float32 without autocast, whatever the dtype
    of its input and parameters: its output is float32 (float64 for float64 input)."""

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: Any,
            groups: int = 1,
            bias: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, groups=groups, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d_upcast(x, self.weight, self.bias, self.groups)


class UpcastBatchNorm2d(nn.BatchNorm2d):
    """An ``nn.BatchNorm2d`` that normalises in at least float32, whatever the dtype of its input and parameters: its
    output is float32 (float64 for float64 input). Its running statistics keep the module's dtype (in a float16
    module a running variance above 65504 is stored as inf)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.BatchNorm2d's bookkeeping: count the batch, choose the average, use batch statistics when training
        factor = 0.0 if self.momentum is None else self.momentum
        update = self.training and self.track_running_stats
        if update and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_stats = update or not self.training
        return batch_norm_upcast(
            x,
            self.running_mean if keep_stats else None,
            self.running_var if keep_stats else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )
