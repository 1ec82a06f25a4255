""" FcaNet on fused Triton kernels: the DCT-weighted sum pass (no x * filter map in memory), one small kernel for the
two-layer excitation and the sigmoid, one pass to apply the gate.

y_nc = sum_hw x_nc(h, w) F_c(h, w), gate = sigmoid(W_2 ReLU(W_1 y)). An input of another size than the DCT is not
pooled first: F is replaced by the adjoint of the adaptive average pooling applied to it (the same linear function of
x, ``MultiSpectralDCTLayer.filter_for``). The excitation runs per block of 16 samples with ``tl.dot`` in the dtype the
PyTorch path's linear layers would use (the autocast dtype, else the weights'; float32 honours
``torch.backends.cuda.matmul.allow_tf32``), its operands and outputs rounded as there. The backward kernel writes
dL/dy and each block's partial weight gradients (dW_1 = dh^T y, dW_2 = dz^T h) for the input-gradient pass to sum.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..layers._reduce import spatial_sum
from ._gate import GateGrad, GateSpec
from ._maps import (
    DOT, INTERPRETED, TERM_FILTER, WEIGHTED, cast_to, launch, reduce_map, sigmoid_grad, small_block, sum_splits,
)

__all__ = ['FcaKernels']

_BLOCK_N = 16  # tl.dot needs 16 rows


@triton.jit
def _cast(v, CODE: tl.constexpr):
    if CODE == 1:
        return cast_to(v, tl.bfloat16)
    elif CODE == 2:
        return v.to(tl.float16)
    else:
        return v


@triton.jit
def _rounded(v, CODE: tl.constexpr):
    return _cast(v, CODE).to(tl.float32)


@triton.jit
def _mm(a, b, ROUND: tl.constexpr, DOT_CODE: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b with float32 accumulation, the operands rounded to the compute dtype (ROUND) and multiplied in DOT_CODE
    (the same dtype on a GPU; float32 in Triton's interpreter, whose bfloat16 dot is wrong)."""
    a = _cast(_rounded(a, ROUND), DOT_CODE)
    b = _cast(_rounded(b, ROUND), DOT_CODE)
    return tl.dot(a, b, input_precision=PRECISION, out_dtype=tl.float32)


@triton.jit
def _gate_kernel(stat_ptr, w1_ptr, w2_ptr, gate_ptr, h_ptr, N, C, HID, n_split,
                 ROUND: tl.constexpr, DOT_CODE: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    j = tl.arange(0, BLOCK_H)
    jmask = j < HID
    hidden = tl.zeros([BLOCK_N, BLOCK_H], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cmask = c < C
        y = sum_splits(stat_ptr, 0, n[:, None], c[None, :], nmask[:, None] & cmask[None, :], N, C, n_split)
        w1 = tl.load(w1_ptr + j[None, :] * C + c[:, None], mask=cmask[:, None] & jmask[None, :], other=0.)
        hidden += _mm(y, w1, ROUND, DOT_CODE, PRECISION)
    hidden = tl.maximum(_rounded(hidden, ROUND), 0.)
    tl.store(h_ptr + n[:, None] * HID + j[None, :], hidden, mask=nmask[:, None] & jmask[None, :])
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cmask = c < C
        w2 = tl.load(w2_ptr + c[None, :] * HID + j[:, None], mask=jmask[:, None] & cmask[None, :], other=0.)
        gate = _rounded(tl.sigmoid(_rounded(_mm(hidden, w2, ROUND, DOT_CODE, PRECISION), ROUND)), ROUND)
        tl.store(gate_ptr + n[:, None] * C + c[None, :], gate, mask=nmask[:, None] & cmask[None, :])


@triton.jit
def _grad_logit(dot_ptr, gate_ptr, n, c, mask, N, C, n_split, ROUND: tl.constexpr):
    """dL/dz of the excitation's sigmoid, rounded as the PyTorch path's sigmoid backward rounds it."""
    return _rounded(sigmoid_grad(dot_ptr, gate_ptr, n[:, None], c[None, :], mask, N, C, n_split), ROUND)


@triton.jit
def _gate_grad_kernel(stat_ptr, dot_ptr, w1_ptr, w2_ptr, gate_ptr, h_ptr, coef_ptr, part_ptr, N, C, HID, n_split,
                      ROUND: tl.constexpr, DOT_CODE: tl.constexpr, PRECISION: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    r = tl.program_id(0)
    n = r * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    j = tl.arange(0, BLOCK_H)
    jmask = j < HID
    grad_h = tl.zeros([BLOCK_N, BLOCK_H], tl.float32)
    for c0 in range(0, C, BLOCK_C):  # dL/dh = dL/dz W_2
        c = c0 + tl.arange(0, BLOCK_C)
        cmask = c < C
        grad_z = _grad_logit(dot_ptr, gate_ptr, n, c, nmask[:, None] & cmask[None, :], N, C, n_split, ROUND)
        w2 = tl.load(w2_ptr + c[:, None] * HID + j[None, :], mask=cmask[:, None] & jmask[None, :], other=0.)
        grad_h += _mm(grad_z, w2, ROUND, DOT_CODE, PRECISION)
    hidden = tl.load(h_ptr + n[:, None] * HID + j[None, :], mask=nmask[:, None] & jmask[None, :], other=0.)
    grad_h = tl.where(hidden > 0., _rounded(grad_h, ROUND), 0.)  # through the ReLU
    part = part_ptr + r * 2 * C * HID
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cmask = c < C
        mask = nmask[:, None] & cmask[None, :]
        w1 = tl.load(w1_ptr + j[:, None] * C + c[None, :], mask=jmask[:, None] & cmask[None, :], other=0.)
        grad_y = _mm(grad_h, w1, ROUND, DOT_CODE, PRECISION)
        tl.store(coef_ptr + N * C + n[:, None] * C + c[None, :], grad_y, mask=mask)  # B: dL/dx += B F_c(h, w)
        y = sum_splits(stat_ptr, 0, n[:, None], c[None, :], mask, N, C, n_split)
        grad_z = _grad_logit(dot_ptr, gate_ptr, n, c, mask, N, C, n_split, ROUND)
        grad_w1 = _mm(tl.trans(grad_h), y, ROUND, DOT_CODE, PRECISION)  # (BLOCK_H, BLOCK_C): W_1 is (HID, C)
        tl.store(part + j[:, None] * C + c[None, :], grad_w1, mask=jmask[:, None] & cmask[None, :])
        grad_w2 = _mm(tl.trans(grad_z), hidden, ROUND, DOT_CODE, PRECISION)  # (BLOCK_C, BLOCK_H): W_2 is (C, HID)
        tl.store(part + C * HID + c[:, None] * HID + j[None, :], grad_w2, mask=cmask[:, None] & jmask[None, :])


class FcaKernels(GateSpec):
    """FcaNet's settings for one call: the (C, H, W) filter for this input size and the dtype of the excitation's
    matrix products (the autocast dtype of the input's device when autocast is on, else the weights' dtype)."""

    def __init__(self, weight: torch.Tensor, compute_dtype: torch.dtype):
        self.weight = weight
        self.round = _CODES[compute_dtype]
        self.dot = 0 if INTERPRETED else self.round
        # float32 products follow PyTorch's TF32 setting; half-precision ones take Triton's default
        tf32 = compute_dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32
        self.precision = 'tf32' if tf32 else 'ieee'

    def _meta(self, c: int, hid: int) -> dict:
        return dict(ROUND=self.round, DOT_CODE=self.dot, PRECISION=self.precision, BLOCK_N=_BLOCK_N,
                    BLOCK_C=max(small_block(c, 64), 16), BLOCK_H=max(triton.next_power_of_2(hid), 16))

    def gate(self, x, params):
        w1, w2 = params
        n, c = x.shape[:2]
        hid = w1.shape[0]
        stats, _ = reduce_map(x, WEIGHTED.value, weight=self.weight)
        gate = torch.empty(n, c, device=x.device, dtype=torch.float32)
        hidden = torch.empty(n, hid, device=x.device, dtype=torch.float32)
        launch(_gate_kernel, (triton.cdiv(n, _BLOCK_N),), stats, w1, w2, gate, hidden, n, c, hid, stats.shape[-1],
               **self._meta(c, hid))
        return gate, (stats, hidden)

    def gate_grad(self, x, grad, gate, saved, params):
        w1, w2 = params
        stats, hidden = saved
        n, c = x.shape[:2]
        hid = w1.shape[0]
        dots, _ = reduce_map(x, DOT.value, g=grad)
        blocks = triton.cdiv(n, _BLOCK_N)
        coef = torch.empty(2, n, c, device=x.device, dtype=torch.float32)
        partials = torch.empty(blocks, 2 * c * hid, device=x.device, dtype=torch.float32)
        launch(_gate_grad_kernel, (blocks,), stats, dots, w1, w2, gate, hidden, coef, partials, n, c, hid,
               stats.shape[-1], **self._meta(c, hid))
        return GateGrad(coef, TERM_FILTER.value, weight=self.weight, partials=partials)

    def formula(self, x, w1, w2):
        y = spatial_sum(x * self.weight, 0).flatten(1)
        gate = torch.sigmoid(F.linear(F.relu(F.linear(y.to(x.dtype), w1)), w2))
        return x * gate.to(x.dtype)[..., None, None]


_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
