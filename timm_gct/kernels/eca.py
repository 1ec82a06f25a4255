""" ECA on fused Triton kernels: the sum pass, one small kernel for the k-tap filter across channels and the
sigmoid, one pass to apply the gate.

gate_nc = sigmoid(sum_j w_j y_{n, c + j - (k - 1) / 2}), y the spatial mean, zero outside the channels (the official
Conv1d's zero padding). The backward kernel forms dL/dy by the transposed filter and each block of samples' partial
gradient of the k taps, which the input-gradient pass sums.
"""
import torch
import triton
import triton.language as tl

from ..layers.eca import channel_gate
from ._gate import GateGrad, GateSpec
from ._maps import DOT, SUM, TERM_NONE, launch, reduce_map, sigmoid_grad, small_block, sum_splits

__all__ = ['EcaKernels']

_BLOCK_N = 4


@triton.jit
def _mean(stat_ptr, n, c, nmask, N, C, HW, n_split):
    """The spatial mean at channels c (any ints: zero outside 0..C-1, the filter's zero padding)."""
    mask = nmask[:, None] & ((c >= 0) & (c < C))[None, :]
    return sum_splits(stat_ptr, 0, n[:, None], c[None, :], mask, N, C, n_split) / HW


@triton.jit
def _logit(stat_ptr, w_ptr, n, c, nmask, N, C, HW, n_split, K: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_C: tl.constexpr):
    z = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    for j in tl.static_range(K):
        z += tl.load(w_ptr + j).to(tl.float32) * _mean(stat_ptr, n, c + j - (K - 1) // 2, nmask, N, C, HW, n_split)
    return z


@triton.jit
def _gate_kernel(stat_ptr, w_ptr, gate_ptr, N, C, HW, n_split,
                 K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        gate = tl.sigmoid(_logit(stat_ptr, w_ptr, n, c, nmask, N, C, HW, n_split, K, BLOCK_N, BLOCK_C))
        tl.store(gate_ptr + n[:, None] * C + c[None, :], gate, mask=nmask[:, None] & (c < C)[None, :])


@triton.jit
def _grad_logit(dot_ptr, gate_ptr, n, c, nmask, N, C, n_split):
    """dL/dz at channels c, zero outside 0..C-1 (the transposed filter's zero padding)."""
    mask = nmask[:, None] & ((c >= 0) & (c < C))[None, :]
    return sigmoid_grad(dot_ptr, gate_ptr, n[:, None], c[None, :], mask, N, C, n_split)


@triton.jit
def _gate_grad_kernel(stat_ptr, dot_ptr, w_ptr, gate_ptr, coef_ptr, part_ptr, N, C, HW, n_split,
                      K: tl.constexpr, K_POW2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0)
    n = r * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    taps = tl.arange(0, K_POW2)
    grad_w = tl.zeros([K_POW2], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = nmask[:, None] & (c < C)[None, :]
        grad_z = _grad_logit(dot_ptr, gate_ptr, n, c, nmask, N, C, n_split)
        grad_y = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
        for j in tl.static_range(K):
            shift = j - (K - 1) // 2
            w = tl.load(w_ptr + j).to(tl.float32)
            grad_y += w * _grad_logit(dot_ptr, gate_ptr, n, c - shift, nmask, N, C, n_split)
            tap = tl.sum(tl.sum(grad_z * _mean(stat_ptr, n, c + shift, nmask, N, C, HW, n_split), axis=1), axis=0)
            grad_w += tl.where(taps == j, tap, 0.)
        tl.store(coef_ptr + n[:, None] * C + c[None, :], grad_y / HW, mask=mask)  # A: dL/dx = g gate + dL/dy / HW
    tl.store(part_ptr + r * K + taps, grad_w, mask=taps < K)


class EcaKernels(GateSpec):
    """ECA's settings for one call: the number of taps k."""

    def __init__(self, kernel_size: int):
        self.kernel_size = kernel_size

    def gate(self, x, params):
        (weight,) = params
        n, c, h, w = x.shape
        stats, _ = reduce_map(x, SUM.value)
        gate = torch.empty(n, c, device=x.device, dtype=torch.float32)
        launch(_gate_kernel, (triton.cdiv(n, _BLOCK_N),), stats, weight, gate, n, c, h * w, stats.shape[-1],
               K=self.kernel_size, BLOCK_N=_BLOCK_N, BLOCK_C=small_block(c))
        return gate, (stats,)

    def gate_grad(self, x, grad, gate, saved, params):
        (weight,) = params
        (stats,) = saved
        n, c, h, w = x.shape
        dots, _ = reduce_map(x, DOT.value, g=grad)
        blocks = triton.cdiv(n, _BLOCK_N)
        coef = torch.empty(2, n, c, device=x.device, dtype=torch.float32)
        partials = torch.empty(blocks, self.kernel_size, device=x.device, dtype=torch.float32)
        launch(_gate_grad_kernel, (blocks,), stats, dots, weight, gate, coef, partials, n, c, h * w, stats.shape[-1],
               K=self.kernel_size, K_POW2=triton.next_power_of_2(self.kernel_size), BLOCK_N=_BLOCK_N,
               BLOCK_C=small_block(c))
        return GateGrad(coef, TERM_NONE.value, has_a=True, partials=partials)

    def formula(self, x, weight):
        return x * channel_gate(x, weight).to(x.dtype)
