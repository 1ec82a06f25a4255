""" The fused channel gate: one autograd Function for every mechanism, which supplies only its small gate math.

Forward: the mechanism's ``gate`` runs the statistics pass over the map and its small gate kernel; then one pass
applies the gate. Backward: the mechanism's ``gate_grad`` runs the dot-product pass and its small backward kernel;
then one pass forms the input gradient and sums the parameter gradients. At most three launches each way. Saved for
the backward: the input and small (N, C) or (C,) float32 tensors, never a second full-size map.
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from ..layers._double_backward import differentiate
from ..layers._gating import autograd_records
from ._maps import apply_map, grad_input_map

__all__ = ['BatchNormState', 'GateGrad', 'GateSpec', 'batchnorm_state', 'fused_gate', 'or_placeholder']


class GateGrad(NamedTuple):
    """What a mechanism's backward kernel hands the input-gradient pass."""
    coef: torch.Tensor  # (2 or 3, N, C) float32 A, B (, center) of dL/dx = g gate + A + B phi(x); NAM: its rows
    term: int  # _maps.TERM_*
    has_a: bool = False
    weight: Optional[torch.Tensor] = None  # phi's (C, H, W) filter for TERM_FILTER
    partials: Optional[torch.Tensor] = None  # (R, P) per-block parameter gradients, summed by the input pass
    param_grads: Optional[torch.Tensor] = None  # (P,) already summed by the backward kernel


class BatchNormState(NamedTuple):
    """What ``nn.BatchNorm2d.forward`` reads from its module, for a kernel that does its work."""
    batch_stats: bool  # normalise with the batch's statistics (training, or no running statistics)
    running_mean: Optional[torch.Tensor]  # None: not used, not updated
    running_var: Optional[torch.Tensor]
    counter: Optional[torch.Tensor]  # num_batches_tracked, to be incremented by one (training and tracking)
    momentum: Optional[float]  # None: the cumulative average 1 / num_batches_tracked
    eps: float

    @property
    def update(self) -> bool:
        """Whether the running statistics take this batch's."""
        return self.batch_stats and self.running_mean is not None

    @property
    def cumulative(self) -> bool:
        """Whether they take it as a cumulative average (momentum=None: 1 / num_batches_tracked)."""
        return self.update and self.counter is not None and self.momentum is None


def batchnorm_state(bn: nn.BatchNorm2d) -> BatchNormState:
    """``bn``'s state as its forward would use it (without the side effects: the kernels count and update)."""
    tracks = bn.training and bn.track_running_stats
    keep = not bn.training or bn.track_running_stats
    return BatchNormState(
        batch_stats=bn.training or (bn.running_mean is None and bn.running_var is None),
        running_mean=bn.running_mean if keep else None, running_var=bn.running_var if keep else None,
        counter=bn.num_batches_tracked if tracks else None, momentum=bn.momentum, eps=bn.eps)


def or_placeholder(t: Optional[torch.Tensor], placeholder: torch.Tensor) -> torch.Tensor:
    """A kernel's tensor argument that its flags leave unread (e.g. no running statistics) still needs a pointer."""
    return placeholder if t is None else t


class GateSpec:
    """One mechanism's part of a fused gate call: its settings, its two small kernels and its plain formula."""

    nam = False  # NAM's gate is per element (sigmoid(a_c x + b_c)), the others' per (sample, channel)

    def gate(self, x: torch.Tensor, params: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """The gate for ``apply_map`` (float32) and the small tensors the backward needs."""
        raise NotImplementedError

    def gate_grad(self, x: torch.Tensor, grad: torch.Tensor, gate: torch.Tensor, saved: Sequence[torch.Tensor],
                  params: Sequence[torch.Tensor]) -> GateGrad:
        raise NotImplementedError

    def param_grads(self, flat: Optional[torch.Tensor], params: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """The parameter gradients as views of the summed (P,) vector, in the order and shapes of ``params``."""
        grads, start = [], 0
        for p in params:
            grads.append(flat[start:start + p.numel()].view(p.shape))
            start += p.numel()
        return tuple(grads)

    def formula(self, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        """The layer's plain PyTorch formula on these settings (differentiated for double backward)."""
        raise NotImplementedError


class _FusedGate(torch.autograd.Function):

    @staticmethod
    def forward(ctx, spec: GateSpec, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        gate, saved = spec.gate(x, params)
        ctx.spec, ctx.num_saved = spec, len(saved)
        ctx.save_for_backward(x, gate, *saved, *params)
        return apply_map(x, gate, torch.empty_like(x), spec.nam)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        spec = ctx.spec
        x, gate, *rest = ctx.saved_tensors
        saved, params = rest[:ctx.num_saved], rest[ctx.num_saved:]
        needs = ctx.needs_input_grad[1:]
        if torch.is_grad_enabled():  # create_graph=True: gradients with a graph, from the plain formula
            return (None,) + differentiate(spec.formula, (x, *params), (grad,), needs)
        result = spec.gate_grad(x, grad, gate, saved, params)
        grad_x, summed = grad_input_map(
            grad, x, gate, result.coef, result.term, result.has_a, result.weight, result.partials,
            params[0].dtype if params else torch.float32, needs[0])
        flat = summed if result.partials is not None else result.param_grads
        grads = spec.param_grads(flat, params) if params else ()
        return (None, grad_x) + tuple(g if need else None for g, need in zip(grads, needs[1:]))


@torch.jit.unused
def fused_gate(spec: GateSpec, x: torch.Tensor, params: Sequence[torch.Tensor], inplace: bool) -> torch.Tensor:
    """x gated by the mechanism ``spec`` describes, on the fused kernels: through the autograd Function when autograd
    records, else straight (into x itself with ``inplace``, as the PyTorch path's ``apply_gate``)."""
    if autograd_records(x, *params):
        return _FusedGate.apply(spec, x, *params)
    gate, _ = spec.gate(x, params)
    if not inplace:
        return apply_map(x, gate, torch.empty_like(x), spec.nam)
    if not x.is_inference():
        torch.autograd.graph.increment_version(x)  # as x.mul_() would: autograd must see that x changed
    return apply_map(x, gate, x, spec.nam)
