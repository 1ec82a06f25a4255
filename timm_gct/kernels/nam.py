""" NAM on fused Triton kernels: the mean / M2 pass (training), one small kernel for the BatchNorm statistics and the
gate's per-channel affine, one pass for x * sigmoid(a_c x + b_c).

a_c = w_c gamma_c / std_c and b_c = w_c (beta_c - gamma_c mean_c / std_c), w = |gamma| / sum |gamma| (no gradient,
as officially), the BatchNorm's statistics over the batch and H x W in training (running statistics and
num_batches_tracked updated as ``nn.BatchNorm2d`` does) or its running statistics in eval. The backward recomputes
the gate from x rather than saving it (one full-size tensor less than autograd of the plain formula): one pass for
the per-channel sums of dL/dz and dL/dz * xhat, one small kernel, one pass for dL/dx = g s + (BatchNorm backward of
dL/dz = g x s (1 - s)).
"""
import torch
import triton
import triton.language as tl

from ..layers.nam import normalization_gate
from ._gate import BatchNormState, GateGrad, GateSpec, or_placeholder
from ._maps import (
    MOMENTS, NAM_GRAD, NAM_ROWS, TERM_NAM, cast_to, launch, reduce_map, small_block, sum_splits, update_running,
)

__all__ = ['NamKernels']

_BLOCK_N = 16


@triton.jit
def _weight(gamma_ptr, c, cmask, C, BLOCK_C: tl.constexpr):
    """w_c = |gamma_c| / max(sum_j |gamma_j|, 1e-12) at channels c."""
    total = tl.zeros([BLOCK_C], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        j = c0 + tl.arange(0, BLOCK_C)
        total += tl.abs(tl.load(gamma_ptr + j, mask=j < C, other=0.).to(tl.float32))
    gamma = tl.load(gamma_ptr + c, mask=cmask, other=0.).to(tl.float32)
    return tl.abs(gamma) / tl.maximum(tl.sum(total, axis=0), 1e-12), gamma


@triton.jit
def _gate_kernel(stat_ptr, gamma_ptr, beta_ptr, rmean_ptr, rvar_ptr, count_ptr, coef_ptr,
                 N, C, HW, n_split, hw_per_split, eps, momentum,
                 BATCH: tl.constexpr, UPDATE: tl.constexpr, CUMULATIVE: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    if BATCH:  # merge the (sample, split) means and M2s of every channel (Chan et al.), a block of samples at a time
        mean = tl.zeros([BLOCK_C], tl.float32)
        m2 = tl.zeros([BLOCK_C], tl.float32)
        count = 0.
        for s in range(0, n_split):
            chunk = tl.minimum(hw_per_split, HW - s * hw_per_split).to(tl.float32)
            for n0 in range(0, N, BLOCK_N):
                n = n0 + tl.arange(0, BLOCK_N)
                mask = (n < N)[:, None] & cmask[None, :]
                base = stat_ptr + (n[:, None].to(tl.int64) * C + c[None, :]) * n_split + s
                part_mean = tl.load(base, mask=mask, other=0.)
                part_m2 = tl.load(base + N * C * n_split, mask=mask, other=0.)
                rows = tl.minimum(N - n0, BLOCK_N).to(tl.float32)
                block_mean = tl.sum(part_mean, axis=0) / rows
                centred = tl.where(mask, part_mean - block_mean[None, :], 0.)
                block_m2 = tl.sum(part_m2, axis=0) + chunk * tl.sum(centred * centred, axis=0)
                block_count = rows * chunk
                total = count + block_count
                delta = block_mean - mean
                mean += delta * (block_count / total)
                m2 += block_m2 + delta * delta * (count * block_count / total)
                count = total
        var = m2 / count
        if UPDATE:
            update_running(rmean_ptr, rvar_ptr, count_ptr, c, cmask, mean, var * count / (count - 1.), momentum,
                           CUMULATIVE)
    else:
        mean = tl.load(rmean_ptr + c, mask=cmask, other=0.).to(tl.float32)
        var = tl.load(rvar_ptr + c, mask=cmask, other=1.).to(tl.float32)
    rstd = 1. / tl.sqrt(var + eps)
    w, gamma = _weight(gamma_ptr, c, cmask, C, BLOCK_C)
    beta = tl.load(beta_ptr + c, mask=cmask, other=0.).to(tl.float32)
    scale = w * gamma * rstd
    tl.store(coef_ptr + c, scale, mask=cmask)
    tl.store(coef_ptr + C + c, w * beta - mean * scale, mask=cmask)
    tl.store(coef_ptr + 2 * C + c, mean, mask=cmask)
    tl.store(coef_ptr + 3 * C + c, rstd, mask=cmask)


@triton.jit
def _gate_grad_kernel(sums_ptr, gamma_ptr, coef_ptr, pgrad_ptr, N, C, HW, n_split,
                      BATCH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    # Summed over the samples after the loop: Triton 3.0-3.1 abort compiling a loop-carried tl.sum whose result is
    # used twice (an assertion in their OptimizeThreadLocality pass).
    shift_rows = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    scale_rows = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = (n < N)[:, None] & cmask[None, :]
        shift_rows += sum_splits(sums_ptr, 0, n[:, None], c[None, :], mask, N, C, n_split)
        scale_rows += sum_splits(sums_ptr, 1, n[:, None], c[None, :], mask, N, C, n_split)
    grad_shift = tl.sum(shift_rows, axis=0)  # sum dL/dz: the folded BN bias w beta's gradient
    grad_scale = tl.sum(scale_rows, axis=0)  # sum dL/dz xhat: the folded BN weight w gamma's gradient
    w, gamma = _weight(gamma_ptr, c, cmask, C, BLOCK_C)
    out_type = pgrad_ptr.dtype.element_ty
    tl.store(pgrad_ptr + c, cast_to(w * grad_scale, out_type), mask=cmask)
    tl.store(pgrad_ptr + C + c, cast_to(w * grad_shift, out_type), mask=cmask)
    rstd = tl.load(coef_ptr + 3 * C + c, mask=cmask, other=0.)
    tl.store(coef_ptr + 4 * C + c, w * gamma * rstd, mask=cmask)
    if BATCH:  # the batch statistics' share: dL/dz's mean and its mean against xhat, over N x H x W
        m = N * HW
        tl.store(coef_ptr + 5 * C + c, grad_shift / m, mask=cmask)
        tl.store(coef_ptr + 6 * C + c, grad_scale / m, mask=cmask)
    else:
        tl.store(coef_ptr + 5 * C + c, tl.zeros([BLOCK_C], tl.float32), mask=cmask)
        tl.store(coef_ptr + 6 * C + c, tl.zeros([BLOCK_C], tl.float32), mask=cmask)


class NamKernels(GateSpec):
    """NAM's settings for one call: its BatchNorm's state."""

    nam = True

    def __init__(self, bn: BatchNormState):
        self.bn = bn

    def gate(self, x, params):
        gamma, beta = params
        bn = self.bn
        n, c, h, w = x.shape
        coef = torch.empty(NAM_ROWS, c, device=x.device, dtype=torch.float32)
        if bn.batch_stats:
            stats, hw_per_split = reduce_map(x, MOMENTS.value, count=bn.counter)
        else:
            stats, hw_per_split = coef, h * w  # not read
        block_c = small_block(c, 64)
        launch(_gate_kernel, (triton.cdiv(c, block_c),), stats, gamma, beta, or_placeholder(bn.running_mean, coef),
               or_placeholder(bn.running_var, coef), or_placeholder(bn.counter, coef), coef, n, c, h * w,
               stats.shape[-1] if bn.batch_stats else 1, hw_per_split, bn.eps,
               0. if bn.momentum is None else bn.momentum,
               BATCH=bn.batch_stats, UPDATE=bn.update, CUMULATIVE=bn.cumulative, BLOCK_N=_BLOCK_N, BLOCK_C=block_c)
        return coef, ()

    def gate_grad(self, x, grad, gate, saved, params):
        gamma, beta = params
        n, c, h, w = x.shape
        sums, _ = reduce_map(x, NAM_GRAD.value, g=grad, coef=gate)
        param_grads = torch.empty(2 * c, device=x.device, dtype=gamma.dtype)
        block_c = small_block(c, 64)
        launch(_gate_grad_kernel, (triton.cdiv(c, block_c),), sums, gamma, gate, param_grads, n, c, h * w,
               sums.shape[-1], BATCH=self.bn.batch_stats, BLOCK_N=_BLOCK_N, BLOCK_C=block_c)
        return GateGrad(gate, TERM_NAM.value, param_grads=param_grads)

    def formula(self, x, gamma, beta):
        bn = self.bn
        running = (None, None) if bn.batch_stats else (bn.running_mean, bn.running_var)
        return normalization_gate(x, gamma, beta, *running, bn.batch_stats, bn.eps)
