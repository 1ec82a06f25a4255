""" SRM on fused Triton kernels: the mean / M2 pass, one small kernel for style integration, the BatchNorm over the
batch and the sigmoid, one pass to apply the gate.

Per channel c: mu_nc and sigma_nc = sqrt(M2 / (HW - 1) + eps) from the map, z_nc = cfc_c0 mu_nc + cfc_c1 sigma_nc,
then BatchNorm of z over the batch (batch statistics in training, with the running statistics and
num_batches_tracked updated as ``nn.BatchNorm2d`` does; running statistics in eval) and the sigmoid. The BatchNorm
couples the samples of a channel, so the small kernels work per block of channels over the whole batch, and write
the parameter gradients (cfc, BN weight and bias) whole. They do the BatchNorm's arithmetic in float64: over a small
batch its backward cancels most of itself (with two samples, all but eps / (var + eps) of it), which float32 sums
(CUDA's BatchNorm) lose and PyTorch's CPU BatchNorm, accumulating in float64, keeps. It is N x C values, not the map.
"""
import torch
import triton
import triton.language as tl

from ..layers.srm import style_gate
from ._gate import BatchNormState, GateGrad, GateSpec, or_placeholder
from ._maps import (
    DOT, MOMENTS, TERM_CENTRED, cast_to, launch, merge_moments, reduce_map, sigmoid_grad, small_block,
    update_running,
)

__all__ = ['SrmKernels']

_BLOCK_N = 16


@triton.jit
def _style(stat_ptr, cfc_ptr, n, c, mask, N, C, HW, n_split, hw_per_split, eps):
    """The mean, the std and z = cfc_0 mean + cfc_1 std at (n, c), in float64."""
    mean, m2 = merge_moments(stat_ptr, n[:, None], c[None, :], mask, N, C, n_split, HW, hw_per_split)
    mean = mean.to(tl.float64)
    std = tl.sqrt(m2.to(tl.float64) / (HW - 1) + eps)
    cmask = c < C
    cfc0 = tl.load(cfc_ptr + 2 * c, mask=cmask, other=0.).to(tl.float64)[None, :]
    cfc1 = tl.load(cfc_ptr + 2 * c + 1, mask=cmask, other=0.).to(tl.float64)[None, :]
    return mean, std, tl.where(mask, cfc0 * mean + cfc1 * std, 0.)


@triton.jit
def _gate_kernel(stat_ptr, cfc_ptr, w_ptr, b_ptr, rmean_ptr, rvar_ptr, count_ptr, gate_ptr, bstat_ptr,
                 N, C, HW, n_split, hw_per_split, eps, bn_eps, momentum,
                 BATCH: tl.constexpr, UPDATE: tl.constexpr, CUMULATIVE: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    if BATCH:  # mean and biased variance of z over the batch, two sweeps
        total = tl.zeros([BLOCK_C], tl.float64)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            mask = (n < N)[:, None] & cmask[None, :]
            _, _, z = _style(stat_ptr, cfc_ptr, n, c, mask, N, C, HW, n_split, hw_per_split, eps)
            total += tl.sum(z, axis=0)
        z_mean = total / N
        total = tl.zeros([BLOCK_C], tl.float64)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            mask = (n < N)[:, None] & cmask[None, :]
            _, _, z = _style(stat_ptr, cfc_ptr, n, c, mask, N, C, HW, n_split, hw_per_split, eps)
            centred = tl.where(mask, z - z_mean[None, :], 0.)
            total += tl.sum(centred * centred, axis=0)
        z_var = total / N
        if UPDATE:
            update_running(rmean_ptr, rvar_ptr, count_ptr, c, cmask, z_mean, z_var * N / (N - 1), momentum, CUMULATIVE)
    else:
        z_mean = tl.load(rmean_ptr + c, mask=cmask, other=0.).to(tl.float64)
        z_var = tl.load(rvar_ptr + c, mask=cmask, other=1.).to(tl.float64)
    rstd = 1. / tl.sqrt(z_var + bn_eps)
    tl.store(bstat_ptr + c, z_mean, mask=cmask)
    tl.store(bstat_ptr + C + c, rstd, mask=cmask)
    scale = (tl.load(w_ptr + c, mask=cmask, other=0.).to(tl.float64) * rstd)[None, :]
    shift = tl.load(b_ptr + c, mask=cmask, other=0.).to(tl.float64)[None, :]
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = (n < N)[:, None] & cmask[None, :]
        _, _, z = _style(stat_ptr, cfc_ptr, n, c, mask, N, C, HW, n_split, hw_per_split, eps)
        gate = tl.sigmoid(((z - z_mean[None, :]) * scale + shift).to(tl.float32))
        tl.store(gate_ptr + n[:, None] * C + c[None, :], gate, mask=mask)


@triton.jit
def _gate_grad_kernel(stat_ptr, dot_ptr, cfc_ptr, w_ptr, gate_ptr, bstat_ptr, coef_ptr, pgrad_ptr,
                      N, C, HW, n_split, hw_per_split, eps,
                      BATCH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    z_mean = tl.load(bstat_ptr + c, mask=cmask, other=0.)[None, :]
    rstd = tl.load(bstat_ptr + C + c, mask=cmask, other=0.)[None, :]
    grad_bn_w = tl.zeros([BLOCK_C], tl.float64)
    grad_bn_b = tl.zeros([BLOCK_C], tl.float64)
    for n0 in range(0, N, BLOCK_N):  # dL/d(BN weight) = sum_n dL/dlogit zhat, dL/d(BN bias) = sum_n dL/dlogit
        n = n0 + tl.arange(0, BLOCK_N)
        mask = (n < N)[:, None] & cmask[None, :]
        _, _, z = _style(stat_ptr, cfc_ptr, n, c, mask, N, C, HW, n_split, hw_per_split, eps)
        grad_logit = sigmoid_grad(dot_ptr, gate_ptr, n[:, None], c[None, :], mask, N, C, n_split).to(tl.float64)
        grad_bn_w += tl.sum(grad_logit * (z - z_mean) * rstd, axis=0)
        grad_bn_b += tl.sum(grad_logit, axis=0)
    scale = tl.load(w_ptr + c, mask=cmask, other=0.).to(tl.float64)[None, :] * rstd
    cfc0 = tl.load(cfc_ptr + 2 * c, mask=cmask, other=0.).to(tl.float64)[None, :]
    cfc1 = tl.load(cfc_ptr + 2 * c + 1, mask=cmask, other=0.).to(tl.float64)[None, :]
    grad_cfc0 = tl.zeros([BLOCK_C], tl.float64)
    grad_cfc1 = tl.zeros([BLOCK_C], tl.float64)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = (n < N)[:, None] & cmask[None, :]
        mean, std, z = _style(stat_ptr, cfc_ptr, n, c, mask, N, C, HW, n_split, hw_per_split, eps)
        grad_logit = sigmoid_grad(dot_ptr, gate_ptr, n[:, None], c[None, :], mask, N, C, n_split).to(tl.float64)
        if BATCH:  # BatchNorm backward through the batch statistics
            grad_z = scale * (grad_logit - grad_bn_b[None, :] / N - (z - z_mean) * rstd * grad_bn_w[None, :] / N)
        else:
            grad_z = scale * grad_logit
        grad_z = tl.where(mask, grad_z, 0.)
        grad_cfc0 += tl.sum(grad_z * mean, axis=0)
        grad_cfc1 += tl.sum(grad_z * std, axis=0)
        # dL/dx = g gate + dL/dmean / HW + dL/dstd (x - mean) / ((HW - 1) std): A + B (x - center)
        nc = n[:, None] * C + c[None, :]
        tl.store(coef_ptr + nc, (grad_z * cfc0 / HW).to(tl.float32), mask=mask)
        tl.store(coef_ptr + N * C + nc, (grad_z * cfc1 / ((HW - 1) * std)).to(tl.float32), mask=mask)
        tl.store(coef_ptr + 2 * N * C + nc, mean.to(tl.float32), mask=mask)
    out_type = pgrad_ptr.dtype.element_ty
    tl.store(pgrad_ptr + 2 * c, cast_to(grad_cfc0.to(tl.float32), out_type), mask=cmask)
    tl.store(pgrad_ptr + 2 * c + 1, cast_to(grad_cfc1.to(tl.float32), out_type), mask=cmask)
    tl.store(pgrad_ptr + 2 * C + c, cast_to(grad_bn_w.to(tl.float32), out_type), mask=cmask)
    tl.store(pgrad_ptr + 3 * C + c, cast_to(grad_bn_b.to(tl.float32), out_type), mask=cmask)


class SrmKernels(GateSpec):
    """SRM's settings for one call: eps of the std and its BatchNorm's state."""

    def __init__(self, eps: float, bn: BatchNormState):
        self.eps, self.bn = eps, bn
        self.hw_per_split = 0

    def gate(self, x, params):
        cfc, weight, bias = params
        bn = self.bn
        n, c, h, w = x.shape
        stats, self.hw_per_split = reduce_map(x, MOMENTS.value, count=bn.counter)
        gate = torch.empty(n, c, device=x.device, dtype=torch.float32)
        batch_stats = torch.empty(2, c, device=x.device, dtype=torch.float64)
        block_c = small_block(c, 64)
        launch(_gate_kernel, (triton.cdiv(c, block_c),), stats, cfc, weight, bias,
               or_placeholder(bn.running_mean, gate), or_placeholder(bn.running_var, gate),
               or_placeholder(bn.counter, gate), gate, batch_stats,
               n, c, h * w, stats.shape[-1], self.hw_per_split, self.eps, bn.eps,
               0. if bn.momentum is None else bn.momentum,
               BATCH=bn.batch_stats, UPDATE=bn.update, CUMULATIVE=bn.cumulative, BLOCK_N=_BLOCK_N, BLOCK_C=block_c)
        return gate, (stats, batch_stats)

    def gate_grad(self, x, grad, gate, saved, params):
        cfc, weight, bias = params
        stats, batch_stats = saved
        n, c, h, w = x.shape
        dots, _ = reduce_map(x, DOT.value, g=grad)
        coef = torch.empty(3, n, c, device=x.device, dtype=torch.float32)
        param_grads = torch.empty(4 * c, device=x.device, dtype=cfc.dtype)
        block_c = small_block(c, 64)
        launch(_gate_grad_kernel, (triton.cdiv(c, block_c),), stats, dots, cfc, weight, gate, batch_stats, coef,
               param_grads, n, c, h * w, stats.shape[-1], self.hw_per_split, self.eps,
               BATCH=self.bn.batch_stats, BLOCK_N=_BLOCK_N, BLOCK_C=block_c)
        return GateGrad(coef, TERM_CENTRED.value, has_a=True, param_grads=param_grads)

    def formula(self, x, cfc, weight, bias):
        bn = self.bn
        running = (None, None) if bn.batch_stats else (bn.running_mean, bn.running_var)
        return x * style_gate(x, cfc, weight, bias, *running, bn.batch_stats, self.eps, bn.eps).to(x.dtype)
