""" Bi-attention: bilinear attention block of BAT-net

Paper: `Bilinear Attention Networks for Person Retrieval` - ICCV 2019, no arXiv version;
    https://openaccess.thecvf.com/content_ICCV_2019/html/Fang_Bilinear_Attention_Networks_for_Person_Retrieval_ICCV_2019_paper.html
    (extended as `Attention in Attention Networks for Person Retrieval`, TPAMI 2021)
Official code: https://github.com/PengfeiFANGanu/Attention-in-Attention-Networks (``models/incep_m_bi.py``,
    ``BilinearAttention``, ``_dim_change`` and ``ConvBlock``; commit b5b9822; the class is identical in
    ``bilinear_baseline_AIA.py``, ``incep_g_mbi.py`` and ``GL_m_bi.py``)

Math, for an (B, C, H, W) input x and R = int(C * rd_ratio) reduced channels (official R = C // 16):
    z      = ReLU(BN(Conv1x1_{C->R}(x)))                           1x1 convs with bias, BN over the batch
    P      = [z_{j+d} * z_j  for d = 0..R-1, j = 0..R-1-d]         per-pixel lower triangle of z z^T with its
                                                                   diagonal, diagonal by diagonal: R(R+1)/2 maps
    S      = ReLU(BN(Conv1x1_{R(R+1)/2->C}(P)))                    spatial branch, (B, C, H, W)
    Q      = ReLU(BN(Conv1x1_{R(R+1)/2->C}(mean_hw P)))            channel branch, (B, C, 1, 1)
    out    = x * sigmoid(Q * S)
Q and S are post-ReLU, so the gate lies in [0.5, 1). The channel order of P is the official one
(``torch.diagonal(z z^T, offset=-d)`` concatenated for d = 0, 1, ...), so the two R(R+1)/2 -> C convs map weight for
weight.

Official placement: an InceptionV1-BN person re-ID net (256x128 input) with one block after each of
inception1/2/3: 480 channels at stride 16, 832 and 1024 at stride 32 (R = 30, 52, 64); there is no ResNet placement.
timm's hook puts one in every residual block of the stages it is given; stages 3 and 4 (strides 16 and 32) are the
closest match.

Cost: the two R(R+1)/2 -> C convs dominate, about R^2 * C weights and R^2 * C / 2 MACs per pixel. With the official
R = C // 16 at C = 2048 (ResNet-50 stage 4) that is R = 128, 8256 bilinear maps per pixel, 33.8 M parameters per
block and 0.83 GMACs per block at 7x7. ``rd_max`` caps R; its default 64 is the widest R the official models use
(inception3, 1024 channels), so every width up to 1024 is official and the 2048-channel stage gets R = 64 (2080
maps, 8.5 M parameters per block). ``rd_max=None`` restores the official C // 16 at every width. Measured at 224 in
every block: ResNet-50 +54.4 M parameters and +4.5 GMACs (4.1 -> 8.6) with the default cap, +130.7 M and +6.4 GMACs
with the official width; ResNet-18 (R <= 32, never capped) +1.3 M and +0.06 GMACs.

Deviations from the official code:
* ``rd_max=64`` by default caps R (see above); pass ``rd_max=None`` for the official width at 2048 channels.
* The bilinear maps are built by multiplying shifted channel slices, diagonal by diagonal, instead of forming the
  full R x R outer product per pixel and then taking its diagonals (same values, same order, half the memory).
* P and everything computed from it up to the sigmoid (both R(R+1)/2 -> C convs, their BNs, Q * S) are computed in
  float32 (float64 stays float64), with autocast off: at RMS 100 the reduced map z reaches ~260 in eval and its
  products pass float16's 65504. In a float16 layer those convs and BNs keep float16 parameters and running
  statistics (``UpcastConv2d``, ``UpcastBatchNorm2d``); the gate is cast back to x's dtype. Same math: float64
  results are unchanged.
* A training batch of one sample is a ValueError: the channel branch's BN normalises (B, C, 1, 1) statistics over
  the batch alone (the official code fails inside BatchNorm).
"""
from typing import Optional

import torch
import torch.fx
from torch import nn
from timm.layers import LayerType, create_act_layer

from ._checks import check_act_layer, check_channels, check_int, reduced_channels
from ._guards import check_batch_for_batchnorm
from ._precision import UpcastBatchNorm2d, UpcastConv2d, upcast
from ._reduce import spatial_sum

__all__ = ['BilinearAttention']

torch.fx.wrap('spatial_sum')
torch.fx.wrap('upcast')
torch.fx.wrap('check_batch_for_batchnorm')


def lower_triangle_products(z: torch.Tensor, channels: int) -> torch.Tensor:
    """Per-pixel lower triangle (with diagonal) of z z^T, ordered diagonal by diagonal like the official code.

    Args:
        z: (B, R, H, W) with R == ``channels``.
        channels: R, a Python int so that the loop unrolls under torch.fx.

    Returns:
        (B, R(R+1)/2, H, W): channel blocks d = 0, 1, ..., R-1 hold z_{j+d} * z_j for j = 0..R-1-d.
    """
    return torch.cat([z[:, d:] * z[:, :channels - d] for d in range(channels)], dim=1)


class BilinearAttention(nn.Module):
    """Bi-attention (bilinear attention) block, a drop-in timm ``attn_layer``."""

    def __init__(
            self,
            channels: int,
            rd_ratio: float = 1. / 16,
            rd_max: Optional[int] = 64,
            act_layer: LayerType = nn.ReLU,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (and output) channels.
            rd_ratio: Reduced width R as a fraction of ``channels`` (official 1/16, i.e. C // 16); int(channels *
                rd_ratio) must be at least 1.
            rd_max: Cap on R (default 64, the widest official R). None gives the official C // 16 at every width.
            act_layer: Activation after each BN (official: ReLU).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        name = type(self).__name__
        check_channels(name, channels)
        check_int(name, 'rd_max', rd_max, allow_none=True)
        rd_channels = reduced_channels(name, channels, rd_ratio, 'reduced channels')
        check_act_layer(name, act_layer)
        if rd_max is not None:
            rd_channels = min(rd_channels, rd_max)
        self.rd_channels = rd_channels
        self.bilinear_channels = rd_channels * (rd_channels + 1) // 2
        self.reduce = _conv_bn_act(channels, rd_channels, act_layer, **dd)
        # the bilinear maps are float32 (see the deviations), and so is what these branches compute from them
        self.spatial = _conv_bn_act(self.bilinear_channels, channels, act_layer, in_float32=True, **dd)
        self.channel = _conv_bn_act(self.bilinear_channels, channels, act_layer, in_float32=True, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_batch_for_batchnorm(x, self.training, 'BilinearAttention')
        B, C, H, W = x.shape
        pairs = lower_triangle_products(upcast(self.reduce(x)), self.rd_channels)
        pooled = spatial_sum(pairs, 0) / (H * W)
        gate = torch.sigmoid(self.channel(pooled) * self.spatial(pairs))
        return x * gate.to(x.dtype)

    def extra_repr(self) -> str:
        return f'rd_channels={self.rd_channels}, bilinear_channels={self.bilinear_channels}'


def _conv_bn_act(
        in_chs: int,
        out_chs: int,
        act_layer: LayerType,
        in_float32: bool = False,
        device=None,
        dtype=None,
) -> nn.Sequential:
    """The official ``ConvBlock``: 1x1 conv with bias, BN, activation; ``in_float32``: conv and BN in >= float32."""
    dd = {'device': device, 'dtype': dtype}
    conv_layer, norm_layer = (UpcastConv2d, UpcastBatchNorm2d) if in_float32 else (nn.Conv2d, nn.BatchNorm2d)
    return nn.Sequential(
        conv_layer(in_chs, out_chs, kernel_size=1, **dd),
        norm_layer(out_chs, **dd),
        create_act_layer(act_layer, inplace=True),
    )
