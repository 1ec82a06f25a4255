""" Multi-spectral channel attention (FcaNet)

Paper: `FcaNet: Frequency Channel Attention Networks` - https://arxiv.org/abs/2012.11879 (ICCV 2021)
Official code: https://github.com/cfzd/FcaNet (``model/layer.py``, ``MultiSpectralAttentionLayer`` and
    ``MultiSpectralDCTLayer``; placement in ``model/fcanet.py``; commit aa5fb63)

Math, for an (N, C, H, W) input x, an S x S DCT (S = ``dct_size``) and the K = 16 'top16' frequencies (u_k, v_k):
    B(p, f)  = cos(pi * f * (p + 1/2) / S) / sqrt(S), times sqrt(2) for f > 0        orthonormal DCT-II basis
    F_c(h,w) = B(h, u_k * (S // 7)) * B(w, v_k * (S // 7))     channel c in group k = c // (C / K) of C / K channels
    y_c      = sum_hw pool_S(x)_c(h, w) * F_c(h, w)             pool_S: adaptive average pooling to S x S
    out      = x * sigmoid(W_2 ReLU(W_1 y))                      W_1: Linear(C, C / 16), W_2: Linear(C / 16, C), no bias
The frequency indices come from the authors' ranking on a 7 x 7 grid; the factor S // 7 keeps the same absolute
frequencies on an S x S grid (e.g. (1, 1) at 7 x 7 is (2, 2) at 14 x 14). With u = v = 0, y_c is sqrt(HW) times
the mean, so SE's global average pooling is one of the 16 components.

Official defaults: 'top16' frequencies, reduction 16, a fixed (not learnt) DCT filter.

Placement: one layer per residual block after the last BN, before the add, in every block (FcaBasicBlock and
FcaBottleneck). The DCT size follows the stage, ``c2wh = {64: 56, 128: 28, 256: 14, 512: 7}`` keyed by the block's
``planes``: 56, 28, 14 and 7 in stages 1-4 for both block types, the feature-map sizes at 224 x 224. timm's hook only
passes the channel count, so the model must pass ``dct_size`` per stage; inputs of another size are pooled to
``dct_size`` first (the authors suggest 7 everywhere for other networks and resolutions, cfzd/FcaNet #10, #24).

Checkpoints: the released ``fca{34,50,101,152}.pth`` hold ``layerX.Y.att.dct_layer.weight`` (the DCT filter, a
persistent buffer of shape (C, S, S)) and ``layerX.Y.att.fc.{0,2}.weight``; in timm's ResNet, where the layer is
``layerX.Y.se``, they load after renaming ``.att.`` to ``.se.`` (the ``fca_resnet*.official_in1k`` tags do so). The
buffers are large at the official sizes (5.5 M values in a ResNet-50, 22 MB in float32), as in the released
checkpoints.

Deviations from the official code, none in the math:
* The weighted spatial sum accumulates in float32 (float64 for float64 input); the official sum runs in the input
  dtype (float16 under its apex O2 training).
* ``inplace=True`` (set by the registered models): without autograd the input is scaled in place (``_gating.py``).
* The size check in front of the pooling lives in a helper that torch.fx treats as a leaf, so the layer traces;
  as officially, the pooling only runs when the input size differs from ``dct_size`` (adaptive average pooling has
  no deterministic CUDA backward, cfzd/FcaNet #37).
* Bad arguments are a ValueError at construction: ``dct_size`` < 7 would scale every frequency index to 0 (the
  official code silently builds 16 copies of the DC filter), and channels must split into the 16 frequency groups.
* ``freq_sel_method`` takes the 'top' family only ('top1' ... 'top32'); the official 'low' and 'bot' rankings are
  ablations and are not implemented.
* On the GPU (``timm_gct.kernels``, with the default ReLU): three fused Triton kernels each way. The DCT-weighted sum
  is one pass over x (PyTorch's path writes x * F as a full-size map first); an input of another size than the DCT is
  not pooled but weighted by the pooling's adjoint applied to F (``MultiSpectralDCTLayer.filter_for``: the same
  linear function of x, summed in another order); the excitation and the sigmoid are one small kernel.
"""
import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from timm.layers import LayerType, create_act_layer, register_notrace_function

from ..kernels import use_triton
from ._checks import check_act_layer, check_bool, check_channels, check_choice, check_int, divided_channels
from ._gating import apply_gate
from ._reduce import spatial_sum

__all__ = ['MultiSpectralAttention', 'MultiSpectralDCTLayer', 'dct_filter', 'freq_indices']

torch.fx.wrap('apply_gate')

torch.fx.wrap('spatial_sum')

# The authors' ranking of the 7 x 7 DCT frequencies (u along H, v along W), best first; 'topK' takes the first K.
_TOP_U = (0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2, 4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1)
_TOP_V = (0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2, 6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3)
_FREQ_METHODS = ('top1', 'top2', 'top4', 'top8', 'top16', 'top32')


def freq_indices(freq_sel_method: str = 'top16', dct_size: int = 7):
    """The (u, v) frequency index pairs of a selection method, scaled from the 7 x 7 grid to dct_size."""
    num_freq = int(freq_sel_method[3:])
    scale = dct_size // 7
    return [(u * scale, v * scale) for u, v in zip(_TOP_U[:num_freq], _TOP_V[:num_freq])]


def dct_filter(channels: int, dct_size: int, freq_sel_method: str = 'top16') -> torch.Tensor:
    """The (channels, dct_size, dct_size) float64 DCT filter: channel group k holds the k-th 2-D basis function."""
    freqs = freq_indices(freq_sel_method, dct_size)
    pos = torch.arange(dct_size, dtype=torch.float64) + 0.5

    def basis(f: int) -> torch.Tensor:
        scale = math.sqrt(2. / dct_size) if f > 0 else math.sqrt(1. / dct_size)
        return torch.cos(math.pi * f * pos / dct_size) * scale

    filters = torch.stack([torch.outer(basis(u), basis(v)) for u, v in freqs])  # (K, S, S)
    return filters.repeat_interleave(channels // len(freqs), dim=0)


@register_notrace_function
def _pool_to_dct_size(x: torch.Tensor, dct_size: int) -> torch.Tensor:
    """Adaptive average pooling to dct_size x dct_size, skipped (as officially) when x already has that size."""
    if x.shape[-2] == dct_size and x.shape[-1] == dct_size:
        return x
    return F.adaptive_avg_pool2d(x, dct_size)


torch.fx.wrap('_pool_to_dct_size')


def _pool_matrix(size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """(out_size, size) matrix of adaptive average pooling along one axis: row i averages positions
    floor(i * size / out_size) to ceil((i + 1) * size / out_size) - 1, as ``F.adaptive_avg_pool2d``."""
    matrix = torch.zeros(out_size, size, dtype=torch.float32)
    for i in range(out_size):
        start, end = (i * size) // out_size, -(-(i + 1) * size // out_size)
        matrix[i, start:end] = 1. / (end - start)
    return matrix.to(device)


class MultiSpectralDCTLayer(nn.Module):
    """Per-channel DCT coefficient: sum_hw x_c(h, w) * F_c(h, w), with F a fixed persistent buffer ``weight``."""

    def __init__(self, channels: int, dct_size: int, freq_sel_method: str = 'top16', device=None, dtype=None):
        super().__init__()
        self.dct_size = dct_size
        self.freq_sel_method = freq_sel_method
        # Built in float64 on the CPU, then moved: exact values for any dtype, and no computation on 'meta'.
        weight = dct_filter(channels, dct_size, freq_sel_method)
        self.register_buffer('weight', weight.to(device=device, dtype=dtype or torch.get_default_dtype()))

    def reset_parameters(self) -> None:
        """Refill the DCT filter, e.g. after ``to_empty()`` from the meta device."""
        with torch.no_grad():
            self.weight.copy_(dct_filter(self.weight.shape[0], self.dct_size, self.freq_sel_method))

    @torch.jit.unused
    def filter_for(self, height: int, width: int) -> torch.Tensor:
        """The (C, H, W) filter G with sum_hw x G = sum_hw pool_S(x) F for an H x W input: F itself at the DCT's size,
        else the adjoint of the adaptive average pooling applied to F (kept until the size or F changes)."""
        if (height, width) == (self.dct_size, self.dct_size):
            return self.weight
        w = self.weight
        key = (height, width, w.device, w.dtype, w.data_ptr(), w._version)
        cached = getattr(self, '_filter_cache', None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                rows = _pool_matrix(height, self.dct_size, w.device)
                cols = _pool_matrix(width, self.dct_size, w.device)
                pooled = rows.t() @ w.float() @ cols  # (H, S) @ (C, S, S) @ (S, W)
            cached = self._filter_cache = (key, pooled)
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spatial_sum(x * self.weight, 0).flatten(1)


class MultiSpectralAttention(nn.Module):
    """FcaNet multi-spectral channel attention, a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            dct_size: int = 7,
            reduction: int = 16,
            freq_sel_method: str = 'top16',
            inplace: bool = False,
            act_layer: LayerType = nn.ReLU,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels; a multiple of the number of frequencies (16).
            dct_size: Side S of the square DCT; inputs of another size are adaptive-average-pooled to S x S.
                Official: 56, 28, 14, 7 in stages 1-4 (the map sizes at 224 x 224); at least 7.
            reduction: The excitation's hidden width is channels // reduction (official: 16).
            freq_sel_method: Frequency selection, 'topK' with K in 1, 2, 4, 8, 16, 32 (official: 'top16').
            inplace: Without autograd, scale the input in place (its caller must not read it again).
            act_layer: Activation between the two linear layers (official: ReLU).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        name = type(self).__name__
        check_channels(name, channels)
        check_choice(name, 'freq_sel_method', freq_sel_method, _FREQ_METHODS)
        check_int(name, 'dct_size', dct_size, 7)  # the frequency indices scale by dct_size // 7, which is 0 below 7
        num_freq = int(freq_sel_method[3:])
        if channels % num_freq:
            raise ValueError(
                f'{name}: channels={channels!r} is not allowed with freq_sel_method={freq_sel_method!r}; expected a '
                f'multiple of {num_freq} (one group of channels per frequency).')
        hidden = divided_channels(name, channels, reduction)
        check_bool(name, 'inplace', inplace)
        check_act_layer(name, act_layer)
        self.dct_size = dct_size
        self.inplace = inplace
        self.reduction = reduction
        self.dct_layer = MultiSpectralDCTLayer(channels, dct_size, freq_sel_method, **dd)
        # Indices 0 and 2 hold the weights, as in the official checkpoints (``att.fc.0.weight``, ``att.fc.2.weight``).
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False, **dd),
            create_act_layer(act_layer, inplace=True),
            nn.Linear(hidden, channels, bias=False, **dd),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._fusable(x):
            return self._fused(x)
        B, C, H, W = x.shape
        y = self.dct_layer(_pool_to_dct_size(x, self.dct_size))
        return apply_gate(x, self.fc(y.to(x.dtype)).reshape(B, C, 1, 1), self.inplace)

    @torch.jit.unused
    def _fusable(self, x: torch.Tensor) -> bool:
        return use_triton(x) and type(self.fc[1]) is nn.ReLU  # the kernel's excitation has the default ReLU

    @torch.jit.unused
    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels._gate import fused_gate
        from ..kernels.fca import FcaKernels
        w1, w2 = self.fc[0].weight, self.fc[2].weight
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else w1.dtype
        spec = FcaKernels(self.dct_layer.filter_for(x.shape[-2], x.shape[-1]), dtype)
        return fused_gate(spec, x, (w1, w2), self.inplace)

    def extra_repr(self) -> str:
        method = self.dct_layer.freq_sel_method
        return (f'dct_size={self.dct_size}, reduction={self.reduction}, freq_sel_method={method!r}, '
                f'inplace={self.inplace}')
