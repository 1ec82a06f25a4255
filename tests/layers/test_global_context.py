""" GlobalContextBlock against the official GC block (xvjiarui/GCNet, mmdet/ops/gcb/context_block.py). """
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from timm_gct.layers import GlobalContextBlock
from tests.helpers import randomize


def _transform(context, seq):
    """Official transform: conv -> LayerNorm([P, 1, 1]) -> ReLU -> conv, written with functional ops."""
    conv1, ln, _, conv2 = seq
    t = F.conv2d(context, conv1.weight, conv1.bias)
    t = F.layer_norm(t, t.shape[1:], ln.weight, ln.bias, eps=1e-5)
    return F.conv2d(F.relu(t), conv2.weight, conv2.bias)


def _reference(x, block):
    """Official forward: spatial_pool (att or avg), then channel_mul (if any), then channel_add (if any)."""
    batch, channel, height, width = x.shape
    if block.pooling_type == 'att':
        logits = F.conv2d(x, block.conv_mask.weight, block.conv_mask.bias).view(batch, 1, height * width)
        mask = torch.softmax(logits, dim=2).unsqueeze(3)  # [N, 1, HW, 1]
        context = torch.matmul(x.view(batch, 1, channel, height * width), mask).view(batch, channel, 1, 1)
    else:
        context = F.adaptive_avg_pool2d(x, 1)
    out = x
    if block.channel_mul_conv is not None:
        out = out * torch.sigmoid(_transform(context, block.channel_mul_conv))
    if block.channel_add_conv is not None:
        out = out + _transform(context, block.channel_add_conv)
    return out


def _randomize(block):
    return randomize(block, seed=3)


@pytest.mark.parametrize('pooling_type', ['att', 'avg'])
@pytest.mark.parametrize('fusion_types', [('channel_add',), ('channel_mul',), ('channel_add', 'channel_mul')])
def test_matches_official_math_in_float64(pooling_type, fusion_types):
    block = _randomize(GlobalContextBlock(
        32, rd_ratio=1 / 4, pooling_type=pooling_type, fusion_types=fusion_types, dtype=torch.float64))
    x = torch.randn(3, 32, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(block(x), _reference(x, block), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_mask_conv_is_the_official_1x1_conv(bias, memory_format):
    """The mask conv runs as a matrix product; it must stay the conv the official state dicts and hooks expect."""
    conv = _randomize(GlobalContextBlock(32, dtype=torch.float64)).conv_mask
    assert isinstance(conv, torch.nn.Conv2d) and conv.weight.shape == (1, 32, 1, 1)
    if not bias:
        conv.bias = None
    x = torch.randn(3, 32, 6, 7, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_(True)
    seen = []
    conv.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    out = conv(x)
    expected = F.conv2d(x, conv.weight, conv.bias)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert seen == [(3, 1, 6, 7)]
    grad = torch.randn_like(out)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    for got, want in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(expected, params, grad)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_official_default_is_r16_attention_pooling_add_fusion():
    block = GlobalContextBlock(256)
    assert block.channel_add_conv[0].out_channels == 16
    assert block.channel_mul_conv is None and block.conv_mask is not None
    assert block.channel_add_conv[1].eps == 1e-5 and block.channel_add_conv[1].normalized_shape == (16, 1, 1)


def test_identity_at_init():
    block = GlobalContextBlock(64)
    x = torch.randn(2, 64, 8, 8)
    assert torch.equal(block(x), x)


def test_official_init_survives_timms_resnet_init():
    """timm's ResNet re-initialises every Conv2d, then calls zero_init_last(), which restores the block's init."""
    model = timm.create_model('gc_resnet50')
    blocks = [m for m in model.modules() if isinstance(m, GlobalContextBlock)]
    assert len(blocks) == 4 + 6 + 3  # official placement: stages c3-c5 only
    for block in blocks:
        last = block.channel_add_conv[3]
        assert not last.weight.any() and not last.bias.any()
        assert not block.conv_mask.bias.any()
        # kaiming normal with fan_in = C (official) has std sqrt(2 / C); timm's fan_out (= 1) would give sqrt(2).
        channels = block.conv_mask.in_channels
        assert block.conv_mask.weight.std().item() == pytest.approx(math.sqrt(2 / channels), rel=0.2)


def test_rd_ratio_one_quarter_is_r4():
    assert GlobalContextBlock(256, rd_ratio=1 / 4).channel_add_conv[0].out_channels == 64


@pytest.mark.parametrize('kwargs,match', [
    (dict(rd_ratio=1 / 16), r'rd_ratio=0.0625 leaves int\(8 \* 0.0625\) = 0 hidden channels.*>= 1 / 8'),
    (dict(rd_ratio=0.), r'rd_ratio=0.0 is not allowed; expected a finite number > 0'),
    (dict(pooling_type='max'), r"pooling_type='max' is not allowed; expected one of 'att', 'avg'"),
    (dict(fusion_types=()), r'fusion_types=\(\) is not allowed'),
    (dict(fusion_types='channel_add'), r"fusion_types='channel_add' is not allowed"),
    (dict(fusion_types=('channel_add', 'channel_add')), r'expected a non-empty sequence of distinct values'),
    (dict(fusion_types=('channel_scale',)), r"\('channel_add', 'channel_mul'\)"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GlobalContextBlock(8, **kwargs)
