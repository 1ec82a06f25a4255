""" Criss-cross attention (CCNet)

Paper: `CCNet: Criss-Cross Attention for Semantic Segmentation` - https://arxiv.org/abs/1811.11721 (ICCV 2019,
    TPAMI 2020)
Official code: https://github.com/speedinghzl/CCNet (``cc_attention/functions.py``, ``CrissCrossAttention``, the
    pure-PyTorch version on master, commit 1fae6c6; ``networks/ccnet.py``, ``RCCAModule``; ``train.py``)

Math, for an (B, C, H, W) input x, one pass:
    q, k = Conv1x1_{C->C/8}(x), Conv1x1_{C->C/8}(x);  v = Conv1x1_{C->C}(x)          all with bias
    e^col_{hw,j} = q_hw . k_jw  (j = 1..H, -inf at j = h: the centre is counted once, in the row)
    e^row_{hw,j} = q_hw . k_hj  (j = 1..W)
    a_hw = softmax over the H + W concatenated energies [e^col_hw, e^row_hw]
    out_hw = gamma * (sum_j a^col_{hw,j} v_jw + sum_j a^row_{hw,j} v_hj) + x_hw,   gamma a scalar, 0 at init
The recurrent module (RCCA) applies the same attention ``recurrence`` times (official R = 2, shared weights), which
gives every pixel a path to every other pixel. gamma = 0 makes the layer exactly the identity at init.

Official placement: once, in the segmentation head: layer4 of a dilated ResNet-101 (2048 channels, output stride 8)
-> 3x3 conv 2048 -> 512 + BN -> criss-cross attention applied R = 2 times -> 3x3 conv -> concat with layer4 ->
classifier. timm's hook puts one layer (with its own recurrence) in every residual block of the stages it is given;
stage 4 alone is the closest match: the official position (after the last backbone stage), and R = 2 links every
pixel pair at any map size, so the small stage-4 maps lose no reach. In ResNet-18/34 stage 4 has the official 512
channels. Cost per block: about 1.25 C^2 parameters and, per pass, 1.25 C^2 + 1.125 C (H + W) MACs per pixel (the
C x C value conv dominates). Measured at 224: ResNet-50 +25.2 M parameters and +9.1 GMACs (4.1 -> 13.2) in all
stages, +15.7 M and +1.55 GMACs in stage 4 only; ResNet-18 +0.87 M / +0.40 GMACs in all stages, +0.66 M / +0.07
GMACs in stage 4 only.

Official quirk, kept: the key conv's bias adds q_hw . b to all H + W energies of pixel hw, which the one softmax
ignores, so it never changes the output and its gradient is zero up to rounding. It stays so that the official state
dict (query_conv, key_conv, value_conv, gamma) loads key for key (gamma reshaped to (1, 1, 1, 1)).

gamma (the only scalar) is weight-decayed by the official recipe (SGD, weight decay 1e-4 on every parameter). It is
stored with shape (1, 1, 1, 1) so that timm's optimizer factory, which never decays 1-D parameters, decays it too.

Deviations from the official code:
* No hard-coded device: the official ``INF()`` builds a (B*W, H, H) -inf diagonal with ``.cuda()`` on every call;
  here an H x 1 x H boolean diagonal on the input's device masks the column energies (out of place, so that
  torch.export and the ONNX exporter see a functional graph).
* Energies and the softmax run in float32 (float64 stays float64) with autocast disabled; the weighted sums of v run
  in v's dtype (convex combinations cannot overflow).
* The energies and sums are einsums on the (B, C, H, W) layout instead of permute/contiguous/bmm round trips.
* ``recurrence`` lives in the layer (official: a loop in the head's forward); gamma has shape (1, 1, 1, 1), not (1,).
"""
from typing import Optional, Tuple

import torch
import torch.fx
from torch import nn
from timm.layers import LayerType, register_notrace_function

from ._checks import check_channels, check_int
from ._precision import upcast, without_autocast

__all__ = ['CrissCrossAttention']


def _weights_impl(q: torch.Tensor, k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    q = upcast(q)
    k = upcast(k)
    H = q.shape[2]
    energy_col = torch.einsum('bchw,bcjw->bhwj', q, k)  # (B, H, W, H)
    energy_row = torch.einsum('bchw,bchj->bhwj', q, k)  # (B, H, W, W)
    # The centre pixel is in its column and its row: keep it once (in the row), as the official -inf diagonal does.
    # (H, 1, H): h == j for any w; from arange, since onnxruntime has no boolean EyeLike for an exported torch.eye
    rows = torch.arange(H, device=q.device)
    centre = rows.view(H, 1, 1) == rows.view(1, 1, H)
    energy_col = energy_col.masked_fill(centre, float('-inf'))
    attn = torch.softmax(torch.cat([energy_col, energy_row], dim=3), dim=3)
    return attn[..., :H], attn[..., H:]


@register_notrace_function
def criss_cross_weights(q: torch.Tensor, k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Criss-cross attention weights, in at least float32.

    Args:
        q: Queries (B, C', H, W).
        k: Keys (B, C', H, W).

    Returns:
        Column weights (B, H, W, H) and row weights (B, H, W, W) of one softmax over H + W; the column weight of the
        centre pixel is 0. float64 for float64 input, else float32.
    """
    if torch.jit.is_scripting():
        weights = _weights_impl(q, k)
    else:
        weights = without_autocast(_weights_impl, q, k)
    return weights


torch.fx.wrap('criss_cross_weights')


class CrissCrossAttention(nn.Module):
    """Recurrent criss-cross attention (RCCA), a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            recurrence: int = 2,
            act_layer: Optional[LayerType] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels, at least 8 (queries and keys have channels // 8).
            recurrence: How many times the attention is applied, with shared weights (official R = 2).
            act_layer: Accepted and ignored, so the layer also fits timm's cspnet / efficientnet attention hooks.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        name = type(self).__name__
        check_channels(name, channels)
        if channels < 8:
            raise ValueError(
                f'{name}: channels={channels!r} is not allowed; expected at least 8 (queries and keys have '
                f'channels // 8 channels).')
        check_int(name, 'recurrence', recurrence)
        self.recurrence = recurrence
        self.query_conv = nn.Conv2d(channels, channels // 8, kernel_size=1, **dd)
        self.key_conv = nn.Conv2d(channels, channels // 8, kernel_size=1, **dd)
        self.value_conv = nn.Conv2d(channels, channels, kernel_size=1, **dd)
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, 1, **dd))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """One criss-cross pass."""
        weights = criss_cross_weights(self.query_conv(x), self.key_conv(x))  # indexed: a leaf's output under FX
        v = self.value_conv(x)
        out = torch.einsum('bhwj,bcjw->bchw', weights[0].to(v.dtype), v)
        out = out + torch.einsum('bhwj,bchj->bchw', weights[1].to(v.dtype), v)
        # x first: the sum takes x's memory layout (contiguous or channels_last), not the einsum's permuted one
        return x + (self.gamma * out).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = self.attend(x)
        return x

    def extra_repr(self) -> str:
        return f'recurrence={self.recurrence}'
