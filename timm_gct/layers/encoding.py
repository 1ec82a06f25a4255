""" Encoding attention (EncNet's in-block CIFAR "EncLayer")

Paper: `Context Encoding for Semantic Segmentation` - https://arxiv.org/abs/1803.08904 (CVPR 2018); the Encoding
    layer is from `Deep TEN: Texture Encoding Network` - https://arxiv.org/abs/1612.02844 (CVPR 2017)
Official code: https://github.com/zhanghang1989/PyTorch-Encoding, read at commit 5a1e3fb (the parent of b872eb8,
    which removed the CIFAR experiment): ``experiments/recognition/model/mynn.py`` (``EncLayer``, ``EncDropLayer``,
    ``EncBasicBlock``, ``EncBottleneck``), ``experiments/recognition/model/encnet{,drop}.py``,
    ``experiments/recognition/option.py``, ``encoding/nn/encoding.py`` (``Encoding``, ``EncodingDrop``),
    ``encoding/nn/customize.py`` (``Normalize``), ``encoding/lib/cpu/encoding_cpu.cpp`` (the reference kernels)

Math, for an (B, C, H, W) input x, D = int(C * rd_ratio) reduced channels and K codewords d_k with smoothing s_k:
    z_i  = ReLU(BN(Conv1x1_{C->D}(x)))_i                      N = H * W features of dimension D (conv with bias)
    a_ik = softmax_k(s_k * ||z_i - d_k||^2)                   soft assignment (s_k < 0 at init: near codes win)
    e_k  = sum_i a_ik (z_i - d_k)                             (B, K, D), flattened k-major to K * D
    out  = x * sigmoid(Linear_{K*D->C}(e / max(||e||_2, 1e-8)))
||z_i - d_k||^2 is computed as ||z_i||^2 - 2 z_i.d_k + ||d_k||^2 and e_k as (A^T Z)_k - (sum_i a_ik) d_k, so no
B x N x K x D tensor is ever built (the official CPU kernels build one in every forward and backward op).

Official defaults: K = 32 codewords (``--ncodes`` default, and the released EncNet-32k128d model; the class
default K=16 is always overridden by the network), ``reduction`` 4 in basic blocks (``EncBasicBlock`` passes
``expansion * 4``) and 16 in bottleneck blocks (``EncBottleneck`` passes ``4 * 4``; defined, but no released net
uses it), i.e. D = planes / 4 in both.
Codewords start U(-1/sqrt(K*D), 1/sqrt(K*D)), smoothing factors U(-1, 0); everything else has PyTorch's default init.
The released CIFAR-10 model (3.35 % error) uses the ``EncodingDrop`` variant (``scale_drop=True`` here): the
smoothing factors are redrawn from U(-1, 0) on every training forward pass and fixed to -0.5 in eval mode.

Placement: the official CIFAR net (3 stages of 2 basic blocks, widths 16 * widen, widen 8 for the released
model) puts one layer in every residual block after bn2, before the residual add: where timm's ``attn_layer`` hook
puts it. In bottleneck blocks pass ``rd_ratio=1/16`` (official ``EncBottleneck``).

Cost: the Linear has K * D * C weights, K * C^2 / 16 with the official reductions: 8.4 M per block at C = 2048.
Measured (all blocks, official settings): ResNet-18 +5.8 M parameters (11.7 -> 17.4 M), ResNet-50 (rd_ratio 1/16)
+41.5 M (25.6 -> 67.1 M); compute stays small (+0.05 / +0.27 GMACs at 224). ``rd_max`` caps D (ResNet-50 with
``rd_max=32``: +15.6 M).

Inside timm's ResNet the 1x1 conv is re-initialised (kaiming normal, fan_out) like every Conv2d; codewords,
smoothing factors and the Linear keep their init (timm's ResNet init does not touch them).

Deviations from the official code:
* The distances, the softmax, the aggregation and the L2 normalisation run in float32 (float64 stays float64) with
  autocast disabled, and use the expansion above (same math, different rounding); the official CUDA ops do not
  support float16 at all and its CPU ops build B x N x K x D tensors.
* The smoothing factors are stored with shape (1, K) instead of (K,), so that timm's optimizer factory, which never
  decays 1-D parameters, decays them as the official recipe (SGD, weight decay 1e-4 on every parameter) does.
* ``scale_drop=True`` draws the smoothing factors as a fresh tensor on every training forward instead of overwriting
  a parameter in place; the official ``scale`` parameter is overwritten before each use (and its gradient step is
  thrown away), so this variant has no ``scale`` parameter at all. The official ``EncodingDrop`` also redraws
  ``scale.data`` right after its forward, and its ``scaled_l2`` backward reads the saved (now redrawn) tensor, so
  its gradients use other smoothing factors than its forward did; here backward uses the forward's factors.
* ``rd_max`` (off by default) is an addition: it caps D for wide stages (see Cost).
"""
from typing import Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from timm.layers import LayerType, create_act_layer, register_notrace_function

from ._checks import check_act_layer, check_bool, check_channels, check_int, reduced_channels
from ._precision import upcast, without_autocast

__all__ = ['EncodingAttention']


def _encode_impl(z: torch.Tensor, codewords: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    x = upcast(z.flatten(2))  # (B, D, N)
    c = codewords.to(x.dtype)  # (K, D)
    # ||x_i - d_k||^2 = ||x_i||^2 - 2 x_i.d_k + ||d_k||^2, all (B, K, N)
    dist = x.square().sum(1, keepdim=True) - 2. * torch.matmul(c, x) + c.square().sum(1).view(1, -1, 1)
    assign = torch.softmax(scale.to(x.dtype).view(1, -1, 1) * dist, dim=1)
    # e_k = sum_i a_ik x_i - (sum_i a_ik) d_k, (B, K, D)
    encoded = torch.matmul(assign, x.transpose(1, 2)) - assign.sum(2).unsqueeze(2) * c
    return F.normalize(encoded.flatten(1), p=2., dim=1, eps=1e-8)


@register_notrace_function
def encode_normalized(z: torch.Tensor, codewords: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Encoding layer + flatten + L2 normalisation, in at least float32.

    Args:
        z: Features (B, D, H, W).
        codewords: (K, D).
        scale: Smoothing factors, K values (any shape with K elements).

    Returns:
        (B, K * D) unit vectors (k-major, as the official ``View(-1, K * D)``), float64 for float64 ``z``, else
        float32.
    """
    if torch.jit.is_scripting():
        encoded = _encode_impl(z, codewords, scale)
    else:
        encoded = without_autocast(_encode_impl, z, codewords, scale)
    return encoded


torch.fx.wrap('encode_normalized')


class EncodingAttention(nn.Module):
    """EncNet encoding attention (the CIFAR ``EncLayer``), a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            num_codes: int = 32,
            rd_ratio: float = 1. / 4,
            rd_max: Optional[int] = None,
            scale_drop: bool = False,
            act_layer: LayerType = nn.ReLU,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels.
            num_codes: Number of codewords K (official ``--ncodes``, default 32).
            rd_ratio: Codeword dimension D as a fraction of ``channels`` (official 1 / ``reduction``): 1/4 in basic
                blocks (default), 1/16 in bottleneck blocks; int(channels * rd_ratio) must be at least 1.
            rd_max: Optional cap on D (not in the official code; None keeps the official width).
            scale_drop: The ``EncodingDrop`` variant of the released CIFAR-10 model: smoothing factors drawn from
                U(-1, 0) on every training forward and -0.5 in eval mode, instead of learned.
            act_layer: Activation after the BN (official: ReLU).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        name = type(self).__name__
        check_channels(name, channels)
        check_int(name, 'num_codes', num_codes)
        check_int(name, 'rd_max', rd_max, allow_none=True)
        check_bool(name, 'scale_drop', scale_drop)
        check_act_layer(name, act_layer)
        rd_channels = reduced_channels(name, channels, rd_ratio, 'codeword dimensions')
        if rd_max is not None:
            rd_channels = min(rd_channels, rd_max)
        self.num_codes = num_codes
        self.rd_channels = rd_channels
        self.scale_drop = scale_drop

        self.conv = nn.Conv2d(channels, rd_channels, kernel_size=1, **dd)
        self.bn = nn.BatchNorm2d(rd_channels, **dd)
        self.act = create_act_layer(act_layer, inplace=True)
        self.codewords = nn.Parameter(torch.empty(num_codes, rd_channels, **dd))
        if scale_drop:
            self.register_parameter('scale', None)
        else:
            self.scale = nn.Parameter(torch.empty(1, num_codes, **dd))
        self.fc = nn.Linear(num_codes * rd_channels, channels, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init of the Encoding layer (the conv, BN and Linear keep PyTorch's default init)."""
        bound = 1. / (self.num_codes * self.rd_channels) ** 0.5
        nn.init.uniform_(self.codewords, -bound, bound)
        if self.scale is not None:
            nn.init.uniform_(self.scale, -1., 0.)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        z = self.act(self.bn(self.conv(x)))
        if self.scale is not None:
            scale = self.scale
        elif self.training:
            scale = self.codewords.new_empty(1, self.num_codes).uniform_(-1., 0.)
        else:
            scale = self.codewords.new_full((1, self.num_codes), -0.5)
        encoded = encode_normalized(z, self.codewords, scale)
        gate = torch.sigmoid(self.fc(encoded.to(x.dtype)))
        return x * gate.view(B, C, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f'num_codes={self.num_codes}, rd_channels={self.rd_channels}, scale_drop={self.scale_drop}'
