""" Triton kernels that pass over the feature map, shared by every fused channel gate.

A channel gate reads its (N, C, H, W) input once for per-channel statistics, computes a small gate from them and
reads and writes the map once more to apply it; its backward reads the map and the incoming gradient once for
per-channel sums and once more to form the input gradient. These are the four map passes, here as three kernels:

* ``reduce``: per (sample, channel) statistics over H x W in float32, written per split of H x W (the map is split
  along H x W when there are too few (sample, channel) tiles to fill the GPU; the consumer merges the splits). The
  statistic is a constexpr: sum, sum of |x|, sum of squares, a weighted sum (FcaNet's DCT), mean and M2 (merged
  chunk by chunk as Chan et al.'s parallel variance, so no sum-of-squares cancellation), the dot product with the
  incoming gradient, or NAM's two gradient sums.
* ``apply``: out = x * gate, the gate per (sample, channel) and rounded to x's dtype first (bit for bit PyTorch's
  ``x * gate.to(x.dtype)``), or NAM's per-element gate sigmoid(a_c x + b_c).
* ``grad_input``: dL/dx = g * gate + A + B * phi(x) with A, B per (sample, channel) and phi(x) one of x, sign(x) or a
  per-channel spatial filter (or NAM's BatchNorm backward); its last row of programs also sums the parameter
  gradients' per-block partials, so a fused backward needs no separate reduction launch.

Shapes and strides are run-time arguments: a new batch size or resolution does not recompile (Triton specialises
integer arguments only on being 1 or divisible by 16). Both memory formats are read in place through strides: NCHW
has H x W contiguous, channels_last has C contiguous.
"""
import functools
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

__all__ = [
    'ABS', 'DOT', 'INTERPRETED', 'MOMENTS', 'NAM_GRAD', 'SQUARE', 'SUM', 'WEIGHTED', 'GATE_CHANNEL', 'GATE_NAM',
    'TERM_NONE', 'TERM_X', 'TERM_SIGN', 'TERM_FILTER', 'TERM_CENTRED', 'TERM_NAM', 'NAM_ROWS', 'apply_map', 'cast_to',
    'grad_input_map', 'launch', 'map_strides', 'merge_moments', 'reduce_map', 'round_to', 'sigmoid_grad',
    'small_block', 'sum_splits', 'update_running',
]

# What ``reduce`` computes per (sample, channel); MOMENTS and NAM_GRAD write two values.
SUM: tl.constexpr = tl.constexpr(0)
ABS: tl.constexpr = tl.constexpr(1)
SQUARE: tl.constexpr = tl.constexpr(2)
WEIGHTED: tl.constexpr = tl.constexpr(3)
MOMENTS: tl.constexpr = tl.constexpr(4)
DOT: tl.constexpr = tl.constexpr(5)
NAM_GRAD: tl.constexpr = tl.constexpr(6)
# How ``apply`` gates.
GATE_CHANNEL: tl.constexpr = tl.constexpr(0)
GATE_NAM: tl.constexpr = tl.constexpr(1)
# Which term ``grad_input`` adds to g * gate (+ A): none, B * x, B * sign(x), B * filter[c, h, w], B * (x - center)
# (a centred term cancels nothing: A - B center + B x would, for a map whose values sit close to their mean), or
# NAM's.
TERM_NONE: tl.constexpr = tl.constexpr(0)
TERM_X: tl.constexpr = tl.constexpr(1)
TERM_SIGN: tl.constexpr = tl.constexpr(2)
TERM_FILTER: tl.constexpr = tl.constexpr(3)
TERM_CENTRED: tl.constexpr = tl.constexpr(4)
TERM_NAM: tl.constexpr = tl.constexpr(5)
# NAM's per-channel float32 rows: the gate's affine a, b (BN scale and shift times w), the batch mean and 1/std,
# and its backward's scale k and the two gradient means.
NAM_ROWS = 7

# Whether the kernels below run in Triton's interpreter: it is chosen when they are defined, i.e. now. The
# interpreter truncates float32 -> bfloat16 conversions (the GPU rounds to nearest even), so there they are emulated.
INTERPRETED = os.environ.get('TRITON_INTERPRET', '0') == '1'
_EMULATE_BF16: tl.constexpr = tl.constexpr(INTERPRETED)

_TILE = 2048  # elements per tile of a map kernel
_PARTIAL_BLOCK = 1024  # parameter-gradient columns summed per program

# Programs to aim for per reduction launch (a few per SM keep the memory system busy); None on the CPU, where the
# interpreter runs programs one by one and more of them only cost time. Tests set it to force splits.
target_programs: Optional[int] = None


def launch(kernel, grid: Tuple[int, ...], *args, **meta) -> None:
    """Every kernel of the fused gates starts here (tests count launches by patching this function)."""
    kernel[grid](*args, **meta)


def map_strides(t: torch.Tensor) -> Optional[Tuple[int, int, int]]:
    """(sample, channel, position) strides of a 4-D tensor whose H x W positions are one arithmetic progression (NCHW,
    channels_last, or broadcast), else None."""
    n, c, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    if w == 1:
        return sn, sc, sh
    if h == 1 or sh == w * sw:
        return sn, sc, sw
    return None


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t itself if its H x W positions are addressable by one stride, else a copy in x's memory format (e.g. a
    gradient that arrived with other strides)."""
    if map_strides(t) is not None:
        return t
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    return t.contiguous(memory_format=fmt)


def _tile(x: torch.Tensor) -> Tuple[int, int, int]:
    """(BLOCK_C, BLOCK_HW, num_warps) for a map tile: long along the contiguous dimension."""
    n, c, h, w = x.shape
    hw = h * w
    sn, sc, shw = map_strides(x)
    if shw == 1 or c == 1:  # NCHW: H x W contiguous
        block_hw = min(triton.next_power_of_2(hw), 512)
        block_c = min(triton.next_power_of_2(c), max(1, _TILE // block_hw))
    else:  # channels_last: C contiguous
        block_c = min(triton.next_power_of_2(c), 256)
        block_hw = min(triton.next_power_of_2(hw), max(1, _TILE // block_c))
    return block_c, block_hw, 8 if block_c * block_hw >= 2048 else 4


def small_block(channels: int, cap: int = 256) -> int:
    """Channels per step of the small gate kernels, which sweep all channels of a block of samples."""
    return min(triton.next_power_of_2(channels), cap)


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _splits(x: torch.Tensor, tiles: int, block_hw: int) -> int:
    """H x W positions per split: all of them unless the (sample, channel) tiles are too few for the device."""
    hw = x.shape[2] * x.shape[3]
    target = target_programs
    if target is None and x.device.type == 'cuda':
        target = 4 * _multiprocessors(x.device.index if x.device.index is not None else torch.cuda.current_device())
    if target is None or tiles >= target:
        return hw
    splits = min(triton.cdiv(target, tiles), triton.cdiv(hw, block_hw))
    return triton.cdiv(triton.cdiv(hw, splits), block_hw) * block_hw


@triton.jit
def cast_to(v, dtype: tl.constexpr):
    """float32 v in ``dtype``, rounded to nearest even as PyTorch rounds."""
    if _EMULATE_BF16 and dtype == tl.bfloat16:
        bits = v.to(tl.float32).to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # round the low 16 bits away, ties to even
        v = bits.to(tl.float32, bitcast=True)
    return v.to(dtype)


@triton.jit
def round_to(v, like_ptr):
    """v rounded to the element type of ``like_ptr`` and back to float32 (PyTorch's intermediate rounding)."""
    return cast_to(v, like_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _nam_gate(x, a, b, like_ptr):
    """NAM's gate sigmoid(a x + b), with the BatchNorm output and the sigmoid rounded to x's dtype as PyTorch's
    ``sigmoid(F.batch_norm(x, ...))`` rounds them."""
    return round_to(tl.sigmoid(round_to(a * x + b, like_ptr)), like_ptr)


@triton.jit
def _channels(pid, C, BLOCK_C: tl.constexpr):
    """The sample and the block of channels a map program works on."""
    blocks = tl.cdiv(C, BLOCK_C)
    return pid // blocks, (pid % blocks) * BLOCK_C + tl.arange(0, BLOCK_C)


@triton.jit
def _reduce_kernel(
        x_ptr, g_ptr, w_ptr, coef_ptr, out_ptr, count_ptr,
        N, C, HW, hw_per_split,
        sxn, sxc, sxhw, sgn, sgc, sghw, swc, swhw,
        STAT: tl.constexpr, COUNT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    n, c = _channels(pid, C, BLOCK_C)
    cmask = c < C
    x_rows = x_ptr + n.to(tl.int64) * sxn + c[:, None].to(tl.int64) * sxc
    g_rows = g_ptr + n.to(tl.int64) * sgn + c[:, None].to(tl.int64) * sgc
    w_rows = w_ptr + c[:, None].to(tl.int64) * swc
    if STAT == NAM_GRAD:
        a = tl.load(coef_ptr + c, mask=cmask, other=0.)[:, None]
        b = tl.load(coef_ptr + C + c, mask=cmask, other=0.)[:, None]
        mean = tl.load(coef_ptr + 2 * C + c, mask=cmask, other=0.)[:, None]
        rstd = tl.load(coef_ptr + 3 * C + c, mask=cmask, other=0.)[:, None]
    start = split * hw_per_split
    end = tl.minimum(start + hw_per_split, HW)
    acc0 = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
    acc1 = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
    run_mean = tl.zeros([BLOCK_C], tl.float32)
    run_m2 = tl.zeros([BLOCK_C], tl.float32)
    count = 0.
    for hw0 in range(start, end, BLOCK_HW):
        hw = hw0 + tl.arange(0, BLOCK_HW)
        mask = cmask[:, None] & (hw < end)[None, :]
        x = tl.load(x_rows + hw[None, :] * sxhw, mask=mask, other=0.).to(tl.float32)
        if STAT == MOMENTS:
            chunk = tl.minimum(end - hw0, BLOCK_HW).to(tl.float32)
            chunk_mean = tl.sum(x, axis=1) / chunk
            centred = tl.where(mask, x - chunk_mean[:, None], 0.)
            total = count + chunk
            delta = chunk_mean - run_mean
            run_mean += delta * (chunk / total)
            run_m2 += tl.sum(centred * centred, axis=1) + delta * delta * (count * chunk / total)
            count = total
        elif STAT == SUM:
            acc0 += x
        elif STAT == ABS:
            acc0 += tl.abs(x)
        elif STAT == SQUARE:
            acc0 += x * x
        elif STAT == WEIGHTED:
            acc0 += x * tl.load(w_rows + hw[None, :] * swhw, mask=mask, other=0.).to(tl.float32)
        elif STAT == DOT:
            acc0 += x * tl.load(g_rows + hw[None, :] * sghw, mask=mask, other=0.).to(tl.float32)
        else:  # NAM_GRAD: sums of dL/dz and dL/dz * xhat, z = a x + b the gate's logit
            g = tl.load(g_rows + hw[None, :] * sghw, mask=mask, other=0.).to(tl.float32)
            s = _nam_gate(x, a, b, x_ptr)
            dz = g * x * s * (1. - s)
            acc0 += dz
            acc1 += dz * (x - mean) * rstd
    if STAT == MOMENTS:
        first, second = run_mean, run_m2
    else:
        first, second = tl.sum(acc0, axis=1), tl.sum(acc1, axis=1)
    n_split = tl.num_programs(1)
    out = out_ptr + (n.to(tl.int64) * C + c) * n_split + split
    tl.store(out, first, mask=cmask)
    if STAT == MOMENTS or STAT == NAM_GRAD:
        tl.store(out + N * C * n_split, second, mask=cmask)
    if COUNT:  # a BatchNorm's num_batches_tracked += 1, before the kernel that reads it runs
        if pid == 0 and split == 0:
            tl.store(count_ptr, tl.load(count_ptr) + 1)


@triton.jit
def sum_splits(ptr, row, n, c, mask, N, C, n_split):
    """Row ``row`` of a (rows, N, C, n_split) reduction, summed over the splits, at (n, c)."""
    base = ptr + ((row * N + n.to(tl.int64)) * C + c) * n_split
    total = tl.load(base, mask=mask, other=0.)
    for s in range(1, n_split):
        total += tl.load(base + s, mask=mask, other=0.)
    return total


@triton.jit
def merge_moments(ptr, n, c, mask, N, C, n_split, HW, hw_per_split):
    """Mean and M2 over H x W at (n, c) from a MOMENTS reduction, its splits merged (Chan et al.)."""
    base = ptr + (n.to(tl.int64) * C + c) * n_split
    second = N * C * n_split
    mean = tl.load(base, mask=mask, other=0.)
    m2 = tl.load(base + second, mask=mask, other=0.)
    count = tl.minimum(hw_per_split, HW).to(tl.float32)
    for s in range(1, n_split):
        chunk = tl.minimum(hw_per_split, HW - s * hw_per_split).to(tl.float32)
        part_mean = tl.load(base + s, mask=mask, other=0.)
        delta = part_mean - mean
        total = count + chunk
        mean += delta * (chunk / total)
        m2 += tl.load(base + second + s, mask=mask, other=0.) + delta * delta * (count * chunk / total)
        count = total
    return mean, m2


@triton.jit
def sigmoid_grad(dot_ptr, gate_ptr, n, c, mask, N, C, n_split):
    """dL/dz of a gate sigmoid(z) at (n, c): dL/dgate = sum_hw g x (a DOT reduction) times gate (1 - gate)."""
    gate = tl.load(gate_ptr + n * C + c, mask=mask, other=0.)
    return sum_splits(dot_ptr, 0, n, c, mask, N, C, n_split) * gate * (1. - gate)


@triton.jit
def update_running(mean_ptr, var_ptr, count_ptr, c, cmask, mean, unbiased_var, momentum, CUMULATIVE: tl.constexpr):
    """A BatchNorm's running statistics take this batch's, as ``nn.BatchNorm2d`` does; with CUMULATIVE (momentum=None)
    the factor is 1 / num_batches_tracked, already counted by the reduction before."""
    if CUMULATIVE:
        momentum = 1. / tl.load(count_ptr).to(tl.float32)
    old_mean = tl.load(mean_ptr + c, mask=cmask, other=0.)
    old_var = tl.load(var_ptr + c, mask=cmask, other=0.)
    new_mean = (1. - momentum) * old_mean.to(tl.float32) + momentum * mean.to(tl.float32)
    new_var = (1. - momentum) * old_var.to(tl.float32) + momentum * unbiased_var.to(tl.float32)
    tl.store(mean_ptr + c, cast_to(new_mean, old_mean.dtype), mask=cmask)
    tl.store(var_ptr + c, cast_to(new_var, old_var.dtype), mask=cmask)


def reduce_map(
        x: torch.Tensor,
        stat: int,
        g: Optional[torch.Tensor] = None,
        weight: Optional[torch.Tensor] = None,
        coef: Optional[torch.Tensor] = None,
        count: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, int]:
    """Per (sample, channel) float32 statistics of x over H x W: a (rows, N, C, splits) tensor and the positions per
    split. ``g``: the incoming gradient (DOT, NAM_GRAD); ``weight``: a (C, H, W) filter (WEIGHTED); ``coef``: NAM's
    rows (NAM_GRAD); ``count``: an int64 counter incremented once (a BatchNorm's num_batches_tracked)."""
    n, c, h, w = x.shape
    block_c, block_hw, warps = _tile(x)
    hw_per_split = _splits(x, n * triton.cdiv(c, block_c), block_hw)
    n_split = triton.cdiv(h * w, hw_per_split)
    rows = 2 if stat in (MOMENTS.value, NAM_GRAD.value) else 1
    out = torch.empty(rows, n, c, n_split, device=x.device, dtype=torch.float32)
    g = x if g is None else _like(g, x)
    w_strides = (0, 0) if weight is None else (weight.stride(0), weight.stride(2) if w > 1 else weight.stride(1))
    launch(
        _reduce_kernel, (n * triton.cdiv(c, block_c), n_split),
        x, g, x if weight is None else weight, out if coef is None else coef, out, out if count is None else count,
        n, c, h * w, hw_per_split, *map_strides(x), *map_strides(g), *w_strides,
        STAT=stat, COUNT=count is not None, BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=warps)
    return out, hw_per_split


@triton.jit
def _apply_kernel(
        x_ptr, out_ptr, gate_ptr, C, HW, sxn, sxc, sxhw, son, soc, sohw,
        GATE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    n, c = _channels(tl.program_id(0), C, BLOCK_C)
    hw = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cmask = c < C
    mask = cmask[:, None] & (hw < HW)[None, :]
    n64 = n.to(tl.int64)
    c64 = c[:, None].to(tl.int64)
    x = tl.load(x_ptr + n64 * sxn + c64 * sxc + hw[None, :] * sxhw, mask=mask, other=0.).to(tl.float32)
    if GATE == GATE_CHANNEL:
        gate = round_to(tl.load(gate_ptr + n * C + c, mask=cmask, other=0.), x_ptr)[:, None]
    else:
        a = tl.load(gate_ptr + c, mask=cmask, other=0.)[:, None]
        b = tl.load(gate_ptr + C + c, mask=cmask, other=0.)[:, None]
        gate = _nam_gate(x, a, b, x_ptr)
    y = cast_to(x * gate, out_ptr.dtype.element_ty)
    tl.store(out_ptr + n64 * son + c64 * soc + hw[None, :] * sohw, y, mask=mask)


def apply_map(x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor, nam: bool = False) -> torch.Tensor:
    """out = x * gate: ``gate`` (N, C) float32, rounded to x's dtype, or with ``nam`` NAM's (NAM_ROWS, C) rows (the
    gate sigmoid(a_c x + b_c) per element). ``out`` may be x itself."""
    n, c, h, w = x.shape
    block_c, block_hw, warps = _tile(x)
    launch(
        _apply_kernel, (n * triton.cdiv(c, block_c), triton.cdiv(h * w, block_hw)),
        x, out, gate, c, h * w, *map_strides(x), *map_strides(out),
        GATE=GATE_NAM.value if nam else GATE_CHANNEL.value, BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=warps)
    return out


@triton.jit
def _grad_input_kernel(
        g_ptr, x_ptr, out_ptr, gate_ptr, coef_ptr, w_ptr, part_ptr, pgrad_ptr,
        N, C, HW, R, P, hw_blocks,
        sgn, sgc, sghw, sxn, sxc, sxhw, son, soc, sohw, swc, swhw,
        TERM: tl.constexpr, HAS_A: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
        BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    hb = tl.program_id(1)
    if hb < hw_blocks:
        n, c = _channels(pid, C, BLOCK_C)
        hw = hb * BLOCK_HW + tl.arange(0, BLOCK_HW)
        cmask = c < C
        mask = cmask[:, None] & (hw < HW)[None, :]
        n64 = n.to(tl.int64)
        c64 = c[:, None].to(tl.int64)
        g = tl.load(g_ptr + n64 * sgn + c64 * sgc + hw[None, :] * sghw, mask=mask, other=0.).to(tl.float32)
        x = tl.load(x_ptr + n64 * sxn + c64 * sxc + hw[None, :] * sxhw, mask=mask, other=0.).to(tl.float32)
        if TERM == TERM_NAM:  # x * s(z), z = BN(x) w: g s + BN backward of dL/dz = g x s (1 - s)
            a = tl.load(coef_ptr + c, mask=cmask, other=0.)[:, None]
            b = tl.load(coef_ptr + C + c, mask=cmask, other=0.)[:, None]
            mean = tl.load(coef_ptr + 2 * C + c, mask=cmask, other=0.)[:, None]
            rstd = tl.load(coef_ptr + 3 * C + c, mask=cmask, other=0.)[:, None]
            k = tl.load(coef_ptr + 4 * C + c, mask=cmask, other=0.)[:, None]
            mean_dz = tl.load(coef_ptr + 5 * C + c, mask=cmask, other=0.)[:, None]
            mean_dz_xhat = tl.load(coef_ptr + 6 * C + c, mask=cmask, other=0.)[:, None]
            s = _nam_gate(x, a, b, x_ptr)
            grad = g * s + k * (g * x * s * (1. - s) - mean_dz - (x - mean) * rstd * mean_dz_xhat)
        else:
            nc = n * C + c
            gate = round_to(tl.load(gate_ptr + nc, mask=cmask, other=0.), x_ptr)[:, None]
            grad = g * gate
            if HAS_A:
                grad += tl.load(coef_ptr + nc, mask=cmask, other=0.)[:, None]
            if TERM != TERM_NONE:
                b = tl.load(coef_ptr + N * C + nc, mask=cmask, other=0.)[:, None]
                if TERM == TERM_X:
                    grad += b * x
                elif TERM == TERM_SIGN:
                    grad += b * tl.where(x > 0, 1., tl.where(x < 0, -1., 0.))
                elif TERM == TERM_CENTRED:
                    grad += b * (x - tl.load(coef_ptr + 2 * N * C + nc, mask=cmask, other=0.)[:, None])
                else:
                    grad += b * tl.load(w_ptr + c64 * swc + hw[None, :] * swhw, mask=mask, other=0.).to(tl.float32)
        tl.store(out_ptr + n64 * son + c64 * soc + hw[None, :] * sohw, cast_to(grad, out_ptr.dtype.element_ty),
                 mask=mask)
    else:  # the parameter gradients: column sums of the (R, P) partials the gate's backward wrote per block
        programs = tl.num_programs(0)
        for p0 in range(pid * BLOCK_P, P, programs * BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            pmask = p < P
            total = tl.zeros([BLOCK_P], tl.float32)
            for r in range(R):
                total += tl.load(part_ptr + r * P + p, mask=pmask, other=0.)
            tl.store(pgrad_ptr + p, cast_to(total, pgrad_ptr.dtype.element_ty), mask=pmask)


def grad_input_map(
        g: torch.Tensor,
        x: torch.Tensor,
        gate: torch.Tensor,
        coef: torch.Tensor,
        term: int,
        has_a: bool = False,
        weight: Optional[torch.Tensor] = None,
        partials: Optional[torch.Tensor] = None,
        param_dtype: torch.dtype = torch.float32,
        need_input: bool = True,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """dL/dx (in x's dtype and memory format) and, from ``partials`` (R, P) float32, the summed parameter gradients
    (P,) in ``param_dtype``, in one launch. ``coef``: (2, N, C) float32 A and B for the channel gates, NAM's rows for
    TERM_NAM (a third row, the center, for TERM_CENTRED); ``weight``: the (C, H, W) filter of TERM_FILTER."""
    n, c, h, w = x.shape
    block_c, block_hw, warps = _tile(x)
    g = _like(g, x)
    grad_x = torch.empty_like(x) if need_input else None
    hw_blocks = triton.cdiv(h * w, block_hw) if need_input else 0
    rows, cols = partials.shape if partials is not None else (0, 0)
    pgrad = torch.empty(cols, device=x.device, dtype=param_dtype) if partials is not None else None
    if hw_blocks == 0 and pgrad is None:
        return None, None
    w_strides = (0, 0) if weight is None else (weight.stride(0), weight.stride(2) if w > 1 else weight.stride(1))
    out = x if grad_x is None else grad_x
    launch(
        _grad_input_kernel, (n * triton.cdiv(c, block_c), hw_blocks + (pgrad is not None)),
        g, x, out, gate, coef, x if weight is None else weight, coef if partials is None else partials,
        coef if pgrad is None else pgrad, n, c, h * w, rows, cols, hw_blocks,
        *map_strides(g), *map_strides(x), *map_strides(out), *w_strides,
        TERM=term, HAS_A=has_a, BLOCK_C=block_c, BLOCK_HW=block_hw, BLOCK_P=_PARTIAL_BLOCK, num_warps=warps)
    return grad_x, pgrad
