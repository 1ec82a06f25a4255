""" EncNet's in-block encoding attention as the official PyTorch-Encoding code computes it (benchmark reference)

Mechanism: the CIFAR ``EncLayer`` of EncNet (Encoding layer + L2 normalisation + Linear + sigmoid channel gate).
Official code: https://github.com/zhanghang1989/PyTorch-Encoding at commit 5a1e3fb
    (5a1e3fbcc7fbe4424d4b82fc77b7bfe5746c3838, the parent of b872eb8, which removed the CIFAR experiment):
    ``experiments/recognition/model/mynn.py`` (``EncLayer``, ``EncDropLayer``), ``encoding/nn/encoding.py``
    (``Encoding``, ``EncodingDrop``), ``encoding/nn/customize.py`` (``View``, ``Normalize``),
    ``encoding/functions/encoding.py`` (``scaled_l2``, ``aggregate``: autograd Functions with hand-written backward
    passes) and ``encoding/lib/cpu/encoding_cpu.cpp`` (the ATen kernels of those Functions).

Kept from the official code, in its order: ``fc = Sequential(Conv2d, BatchNorm2d, ReLU, Encoding, View, Normalize,
Linear, Sigmoid)`` (the official parameter names ``fc.0`` ... ``fc.6``); in ``Encoding``: ``view(B, D, -1)
.transpose(1, 2).contiguous()``, ``softmax(scaled_l2(X, codewords, scale), dim=2)``, ``aggregate(A, X, codewords)``;
``View(-1, K * D)``, ``F.normalize(p=2, dim=1, eps=1e-8)``; ``x * y.view(b, c, 1, 1)``. Everything runs in the input's
dtype (no upcast). In ``EncodingDrop`` the smoothing factors are overwritten through ``.data`` before and after the
forward (U(-1, 0) in training, -0.5 in eval), so its backward reads the redrawn factors, as officially.

Differences from the official code:
* ``scaled_l2`` and ``aggregate`` are written with the ops of the official CPU kernels (``encoding_cpu.cpp``), which
  build B x N x K x D tensors in the forward and in the backward passes, on every device. On CUDA the official package
  runs its compiled kernels instead (``encoding/lib/gpu/encoding_kernel.cu``: one thread block per output element,
  reducing over D or N without any B x N x K x D tensor), which need the compiled extension; so on a GPU this
  reference has the official CPU formulation's memory and kernels, not those of the official CUDA kernels.
* The codeword gradient of ``scaled_l2`` has the sign of the CUDA kernel (``GC = -sum``); the CPU kernel's
  ``GC = tmp.sum(0).sum(0)`` lacks the minus (a wrong gradient; the cost is the same).
* The layer sizes are taken from our layer: D = our ``rd_channels`` (officially int(channel / reduction); every D our
  ``rd_ratio`` / ``rd_max`` give is such a value), K = our ``num_codes``. Our smoothing factors, shape (1, K), are
  copied into the official shape (K,).
"""
from typing import Any, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import EncodingAttention

__all__ = ['OfficialEncLayer', 'from_layer']

LAYER = EncodingAttention


def _residuals(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    # The official kernels' X.unsqueeze(2).expand({B, N, K, D}) - C.unsqueeze(0).unsqueeze(0): a B x N x K x D tensor.
    return x.unsqueeze(2).expand(x.size(0), x.size(1), c.size(0), c.size(1)) - c.unsqueeze(0).unsqueeze(0)


class _ScaledL2(torch.autograd.Function):
    """The official ``scaled_l2`` (``ScaledL2_{Forward,Backward}_CPU``): sl_ik = s_k ||x_i - c_k||^2."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        sl = s.view(1, 1, c.size(0)) * _residuals(x, c).pow(2).sum(3)
        ctx.save_for_backward(x, c, s, sl)
        return sl

    @staticmethod
    def backward(ctx: Any, gsl: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, c, s, sl = ctx.saved_tensors
        tmp = (2 * gsl * s.view(1, 1, c.size(0))).unsqueeze(3) * _residuals(x, c)
        gx = tmp.sum(2)
        gc = -tmp.sum(0).sum(0)  # the CUDA kernel's sign (the CPU kernel has none)
        gs = (gsl * (sl / s.view(1, 1, c.size(0)))).sum(0).sum(0)
        return gx, gc, gs


class _Aggregate(torch.autograd.Function):
    """The official ``aggregate`` (``Aggregate_{Forward,Backward}_CPU``): e_k = sum_i a_ik (x_i - c_k)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, x, c)
        return (a.unsqueeze(3) * _residuals(x, c)).sum(1)

    @staticmethod
    def backward(ctx: Any, ge: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, x, c = ctx.saved_tensors
        grad_a = (ge.unsqueeze(1) * _residuals(x, c)).sum(3)
        grad_x = torch.bmm(a, ge)
        grad_c = (-ge * a.sum(1).unsqueeze(2)).sum(0)
        return grad_a, grad_x, grad_c


class _Encoding(nn.Module):
    """The official ``Encoding`` (``drop=False``) or ``EncodingDrop`` (``drop=True``) layer for 4-D input."""

    def __init__(self, D: int, K: int, drop: bool = False, device=None, dtype=None):
        super().__init__()
        self.D, self.K = D, K
        self.drop = drop
        self.codewords = nn.Parameter(torch.empty(K, D, device=device, dtype=dtype))
        self.scale = nn.Parameter(torch.empty(K, device=device, dtype=dtype))
        self.reset_params()

    def reset_params(self) -> None:
        std1 = 1. / ((self.K * self.D) ** (1 / 2))
        self.codewords.data.uniform_(-std1, std1)
        self.scale.data.uniform_(-1, 0)

    def _drop(self) -> None:
        # Through .data, as officially: no autograd version bump, so scaled_l2's backward reads the redrawn values.
        if self.training:
            self.scale.data.uniform_(-1, 0)
        else:
            self.scale.data.zero_().add_(-0.5)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        B, D = X.size(0), self.D
        X = X.view(B, D, -1).transpose(1, 2).contiguous()  # B x D x H x W -> B x (HW) x D
        if self.drop:
            self._drop()
        A = F.softmax(_ScaledL2.apply(X, self.codewords, self.scale), dim=2)  # B x N x K
        E = _Aggregate.apply(A, X, self.codewords)  # B x K x D
        if self.drop:
            self._drop()
        return E


class _View(nn.Module):
    """The official ``View``."""

    def __init__(self, *size: int):
        super().__init__()
        self.size = torch.Size(size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input.view(self.size)


class _Normalize(nn.Module):
    """The official ``Normalize``: v / max(||v||_p, 1e-8) over ``dim``."""

    def __init__(self, p: float = 2, dim: int = 1):
        super().__init__()
        self.p = p
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, self.p, self.dim, eps=1e-8)


class OfficialEncLayer(nn.Module):
    """The official ``EncLayer`` (``drop=False``) or ``EncDropLayer`` (``drop=True``) with D codeword dimensions."""

    def __init__(self, channel: int, K: int = 16, out_channel: int = 1, drop: bool = False, device=None, dtype=None):
        """
        Args:
            channel: Input (and output) channels.
            K: Number of codewords (official ``--ncodes``, 32 in the released model).
            out_channel: Codeword dimension D (official ``int(channel / reduction)``).
            drop: ``EncodingDrop`` (the released CIFAR-10 model) instead of ``Encoding``.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.fc = nn.Sequential(
            nn.Conv2d(channel, out_channel, 1, **dd),
            nn.BatchNorm2d(out_channel, **dd),
            nn.ReLU(inplace=True),
            _Encoding(D=out_channel, K=K, drop=drop, **dd),
            _View(-1, out_channel * K),
            _Normalize(),
            nn.Linear(out_channel * K, channel, **dd),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.fc(x).view(b, c, 1, 1)
        return x * y


def from_layer(layer: EncodingAttention) -> OfficialEncLayer:
    """The official computation with ``layer``'s settings, parameters and BN statistics, on its device and dtype."""
    if type(layer.act) is not nn.ReLU:
        raise ValueError(
            f'Encoding reference: act_layer={type(layer.act).__name__} is not supported; the official code hard-codes '
            f'ReLU.')
    weight = layer.conv.weight
    ref = OfficialEncLayer(
        layer.conv.in_channels, K=layer.num_codes, out_channel=layer.rd_channels, drop=layer.scale_drop,
        device=weight.device, dtype=weight.dtype)
    state = {}
    for name, value in layer.state_dict().items():
        module, _, rest = name.partition('.')
        if module == 'scale':
            state['fc.3.scale'] = value.reshape(layer.num_codes)  # ours (1, K), officially (K,)
        elif module == 'codewords':
            state['fc.3.codewords'] = value
        else:
            state[f"fc.{dict(conv=0, bn=1, fc=6)[module]}.{rest}"] = value
    if layer.scale_drop:  # no smoothing factors of ours: the official drop layer overwrites them on every call
        state['fc.3.scale'] = ref.fc[3].scale.detach().clone()
    ref.load_state_dict(state)
    ref.train(layer.training)
    return ref
