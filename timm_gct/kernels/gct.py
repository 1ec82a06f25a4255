""" GCT on fused Triton kernels: the statistic pass, one small kernel for the gate, one pass to apply it.

Per sample, from s_c = sum_hw phi(x_c) (phi = x^2, |x| or x): e_c = alpha_c sqrt(s_c + eps) (l2) or alpha_c s_c
(l1), inv = (mean_c e_c^2 + eps)^(-1/2) (l2) or 1 / (mean_c |e_c| + eps) (l1), and the gate
1 + tanh(gamma_c e_c inv + beta_c), computed as 2 sigmoid(2 z) (the same function, one exp). The backward kernel
works per block of samples, sweeping the channels three times (inv, then the cross-channel sum d inv, then the
per-channel terms), and writes each block's partial parameter gradients for the input-gradient pass to sum.
"""
import torch
import triton
import triton.language as tl

from ..layers.gct import _plain
from ._gate import GateGrad, GateSpec
from ._maps import (
    ABS, DOT, SQUARE, SUM, TERM_NONE, TERM_SIGN, TERM_X, launch, reduce_map, small_block, sum_splits,
)

__all__ = ['GctKernels']

_BLOCK_N = 4


@triton.jit
def _embedding(stat_ptr, alpha_ptr, n, c, mask, N, C, n_split, eps, L2: tl.constexpr):
    """e and, for the gradient of alpha, sqrt(s + eps) (l2) or s (l1); zero outside the mask."""
    s = sum_splits(stat_ptr, 0, n[:, None], c[None, :], mask, N, C, n_split)
    alpha = tl.load(alpha_ptr + c, mask=c < C, other=0.).to(tl.float32)[None, :]
    if L2:
        base = tl.sqrt(s + eps)
    else:
        base = s
    return tl.where(mask, base * alpha, 0.), base


@triton.jit
def _terms(stat_ptr, alpha_ptr, gamma_ptr, beta_ptr, n, c, mask, inv, N, C, n_split, eps, L2: tl.constexpr):
    """At (n, c): e, its base, gamma, and sigmoid(2 z) with z = gamma e inv + beta (the gate is 2 sigmoid(2 z))."""
    e, base = _embedding(stat_ptr, alpha_ptr, n, c, mask, N, C, n_split, eps, L2)
    cmask = c < C
    gamma = tl.load(gamma_ptr + c, mask=cmask, other=0.).to(tl.float32)[None, :]
    beta = tl.load(beta_ptr + c, mask=cmask, other=0.).to(tl.float32)[None, :]
    return e, base, gamma, tl.sigmoid(2. * (e * gamma * inv + beta))


@triton.jit
def _inv_norm(stat_ptr, alpha_ptr, n, nmask, N, C, n_split, eps, L2: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_C: tl.constexpr):
    total = tl.zeros([BLOCK_N], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = nmask[:, None] & (c < C)[None, :]
        e, _ = _embedding(stat_ptr, alpha_ptr, n, c, mask, N, C, n_split, eps, L2)
        if L2:
            total += tl.sum(e * e, axis=1)
        else:
            total += tl.sum(tl.abs(e), axis=1)
    if L2:
        return 1. / tl.sqrt(total / C + eps)
    return 1. / (total / C + eps)


@triton.jit
def _gate_kernel(stat_ptr, alpha_ptr, gamma_ptr, beta_ptr, gate_ptr, N, C, n_split, eps,
                 L2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    inv = _inv_norm(stat_ptr, alpha_ptr, n, nmask, N, C, n_split, eps, L2, BLOCK_N, BLOCK_C)[:, None]
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = nmask[:, None] & (c < C)[None, :]
        _, _, _, sig = _terms(stat_ptr, alpha_ptr, gamma_ptr, beta_ptr, n, c, mask, inv, N, C, n_split, eps, L2)
        tl.store(gate_ptr + n[:, None] * C + c[None, :], 2. * sig, mask=mask)


@triton.jit
def _gate_grad_kernel(stat_ptr, dot_ptr, alpha_ptr, gamma_ptr, beta_ptr, coef_ptr, part_ptr, N, C, n_split, eps,
                      L2: tl.constexpr, P_ZERO: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0)
    n = r * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    inv = _inv_norm(stat_ptr, alpha_ptr, n, nmask, N, C, n_split, eps, L2, BLOCK_N, BLOCK_C)[:, None]
    grad_inv = tl.zeros([BLOCK_N], tl.float32)
    for c0 in range(0, C, BLOCK_C):  # d inv = sum_c dL/dz_c e_c gamma_c
        c = c0 + tl.arange(0, BLOCK_C)
        mask = nmask[:, None] & (c < C)[None, :]
        e, _, gamma, sig = _terms(stat_ptr, alpha_ptr, gamma_ptr, beta_ptr, n, c, mask, inv, N, C, n_split, eps, L2)
        grad_z = sum_splits(dot_ptr, 0, n[:, None], c[None, :], mask, N, C, n_split) * 4. * sig * (1. - sig)
        grad_inv += tl.sum(grad_z * e * gamma, axis=1)
    grad_inv = grad_inv[:, None]
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cmask = c < C
        mask = nmask[:, None] & cmask[None, :]
        e, base, gamma, sig = _terms(stat_ptr, alpha_ptr, gamma_ptr, beta_ptr, n, c, mask, inv, N, C, n_split, eps,
                                     L2)
        alpha = tl.load(alpha_ptr + c, mask=cmask, other=0.).to(tl.float32)[None, :]
        grad_z = sum_splits(dot_ptr, 0, n[:, None], c[None, :], mask, N, C, n_split) * 4. * sig * (1. - sig)
        if L2:  # inv = (mean e^2 + eps)^(-1/2); s enters as sqrt(s + eps), dL/dx = 2 x dL/ds
            grad_e = grad_z * gamma * inv - grad_inv * inv * inv * inv * e / C
            coef = grad_e * alpha / base
        else:  # inv = 1 / (mean |e| + eps); dL/dx = sign(x) dL/ds, or dL/ds after ReLU
            sign_e = tl.where(e > 0, 1., tl.where(e < 0, -1., 0.))
            grad_e = grad_z * gamma * inv - grad_inv * inv * inv * sign_e / C
            coef = grad_e * alpha
        # the constant term A (phi = x after ReLU) at row 0, the multiplier B of x or sign(x) at row 1
        if P_ZERO:
            tl.store(coef_ptr + n[:, None] * C + c[None, :], coef, mask=mask)
        else:
            tl.store(coef_ptr + N * C + n[:, None] * C + c[None, :], coef, mask=mask)
        part = part_ptr + r * 3 * C + c
        tl.store(part, tl.sum(tl.where(mask, grad_e * base, 0.), axis=0), mask=cmask)
        tl.store(part + C, tl.sum(grad_z * e * inv, axis=0), mask=cmask)
        tl.store(part + 2 * C, tl.sum(grad_z, axis=0), mask=cmask)


class GctKernels(GateSpec):
    """GCT's settings for one call: eps and the embedding's power p (2: l2, 1: l1, 0: l1 after ReLU)."""

    def __init__(self, eps: float, p: int):
        self.eps, self.p = eps, p

    def gate(self, x, params):
        alpha, gamma, beta = params
        n, c = x.shape[:2]
        stats, _ = reduce_map(x, (SUM, ABS, SQUARE)[self.p].value)
        gate = torch.empty(n, c, device=x.device, dtype=torch.float32)
        launch(_gate_kernel, (triton.cdiv(n, _BLOCK_N),), stats, alpha, gamma, beta, gate, n, c, stats.shape[-1],
               self.eps, L2=self.p == 2, BLOCK_N=_BLOCK_N, BLOCK_C=small_block(c))
        return gate, (stats,)

    def gate_grad(self, x, grad, gate, saved, params):
        alpha, gamma, beta = params
        (stats,) = saved
        n, c = x.shape[:2]
        dots, _ = reduce_map(x, DOT.value, g=grad)
        blocks = triton.cdiv(n, _BLOCK_N)
        coef = torch.empty(2, n, c, device=x.device, dtype=torch.float32)
        partials = torch.empty(blocks, 3 * c, device=x.device, dtype=torch.float32)
        launch(_gate_grad_kernel, (blocks,), stats, dots, alpha, gamma, beta, coef, partials, n, c, stats.shape[-1],
               self.eps, L2=self.p == 2, P_ZERO=self.p == 0, BLOCK_N=_BLOCK_N, BLOCK_C=small_block(c))
        term = (TERM_NONE, TERM_SIGN, TERM_X)[self.p].value
        return GateGrad(coef, term, has_a=self.p == 0, partials=partials)

    def formula(self, x, alpha, gamma, beta):
        return _plain(x, alpha, gamma, beta, self.eps, self.p)
