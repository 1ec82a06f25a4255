""" GSoPChannelAttention against the official GSoP block, channel mode (ZilinGao/Global-Second-order-Pooling-
Convolutional-Networks, torchvision/models/resnet.py Bottleneck.chan_att and MPNCOV.py Covpool), written out here. """
import pytest
import timm
import torch
import torch.nn.functional as F

from timm_gct.layers.gsop import GSoPChannelAttention, channel_covariance
from tests.helpers import assert_float16_gate_matches, assert_gradients_match, randomize


def _covpool(z):
    """Official Covpool forward: X Ibar X^T with the explicit M x M Ibar = (1/M)(I - (1/M) 1 1^T)."""
    n, d, h, w = z.shape
    m = h * w
    x = z.reshape(n, d, m)
    i_hat = (-1. / m / m) * torch.ones(m, m, dtype=z.dtype) + (1. / m) * torch.eye(m, dtype=z.dtype)
    return x.bmm(i_hat.expand(n, m, m)).bmm(x.transpose(1, 2))


def _bn(t, bn, training):
    """BatchNorm with copies of the running statistics, so the reference does not touch the layer's buffers."""
    return F.batch_norm(t, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias, training,
                        bn.momentum, bn.eps)


def _reference(x, layer, params, training):
    """Official chan_att followed by ``pre_att * att``; ``params`` maps parameter names to (reference) tensors."""
    p = params
    out = F.relu(x)  # relu_normal: not in place
    out = F.conv2d(out, p['conv_for_DR.weight'], p['conv_for_DR.bias'], stride=layer.stride)
    out = F.batch_norm(out, layer.bn_for_DR.running_mean.clone(), layer.bn_for_DR.running_var.clone(),
                       p['bn_for_DR.weight'], p['bn_for_DR.bias'], training, 0.1, 1e-5)
    out = F.relu(out)
    out = _covpool(out)
    out = out.view(out.size(0), out.size(1), out.size(2), 1).contiguous()
    out = F.batch_norm(out, layer.row_bn.running_mean.clone(), layer.row_bn.running_var.clone(),
                       p['row_bn.weight'], p['row_bn.bias'], training, 0.1, 1e-5)
    out = F.conv2d(out, p['row_conv_group.weight'], p['row_conv_group.bias'], groups=layer.att_dim)
    out = F.conv2d(out, p['fc_adapt_channels.weight'], p['fc_adapt_channels.bias'])
    return x * torch.sigmoid(out)


def _random_gsop(channels, **kwargs):
    return randomize(GSoPChannelAttention(channels, dtype=torch.float64, **kwargs), seed=5, scale=0.5)


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('stride,hw', [(1, (6, 5)), (2, (7, 8)), (2, (1, 3))])
def test_matches_official_math_in_float64(training, stride, hw):
    layer = _random_gsop(16, att_dim=8, stride=stride).train(training)
    x = torch.randn(3, 16, *hw, dtype=torch.float64)
    expected = _reference(x, layer, dict(layer.named_parameters()), training)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('training', [True, False])
def test_gradients_match_official_math_in_float64(training):
    layer = _random_gsop(16, att_dim=8, stride=2).train(training)
    x = torch.randn(3, 16, 6, 6, dtype=torch.float64)
    assert_gradients_match(layer, x, lambda x_ref, params: _reference(x_ref, layer, params, training))


def test_running_statistics_update_like_the_official_block():
    layer = _random_gsop(16, att_dim=8).train()
    before = {n: b.clone() for n, b in layer.named_buffers()}
    x = torch.randn(4, 16, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        layer(x)
        z = F.conv2d(F.relu(x), layer.conv_for_DR.weight, layer.conv_for_DR.bias)
        cov = _covpool(F.relu(F.batch_norm(z, None, None, layer.bn_for_DR.weight, layer.bn_for_DR.bias, True)))
    for name, t in (('bn_for_DR', z), ('row_bn', cov.unsqueeze(-1))):
        torch.testing.assert_close(
            before[name + '.running_mean'] * 0.9 + 0.1 * t.mean((0, 2, 3)), getattr(layer, name).running_mean)
        torch.testing.assert_close(
            before[name + '.running_var'] * 0.9 + 0.1 * t.var((0, 2, 3)), getattr(layer, name).running_var)
    assert int(layer.row_bn.num_batches_tracked) == 1


def test_gradcheck_in_training_mode():
    layer = _random_gsop(4, att_dim=3, stride=1).train()
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_input_is_not_modified():
    # The official block applies a non-in-place ReLU to x: the pre-attention features are needed for x * att.
    layer = GSoPChannelAttention(32, att_dim=16).train()
    x = torch.randn(2, 32, 6, 6)
    x_before = x.clone()
    out = layer(x)
    assert torch.equal(x, x_before)
    assert (x < 0).any() and ((out < 0) == (x < 0)).all()  # the gate is positive, so signs survive


def test_covariance_equals_the_official_ibar_form():
    z = torch.randn(3, 5, 4, 7, dtype=torch.float64) * 3 + 2
    torch.testing.assert_close(channel_covariance(z), _covpool(z), rtol=1e-12, atol=1e-12)


def test_covariance_runs_in_float32_under_autocast():
    z = (torch.randn(2, 8, 14, 14, dtype=torch.float64) * 4 + 1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = channel_covariance(z.bfloat16())
    assert out.dtype == torch.float32
    # Only the input's own rounding separates it from the float64 value (a bfloat16 matmul would be off by ~1e-2).
    torch.testing.assert_close(out.double(), _covpool(z.bfloat16().double()), rtol=1e-5, atol=1e-5)


def test_float16_covariance_does_not_overflow():
    z = torch.randn(2, 4, 56, 56, dtype=torch.float64) * 300  # variances ~9e4, above float16's 65504
    out = channel_covariance(z.half())
    assert out.dtype == torch.float32 and out.amax() > 65504
    torch.testing.assert_close(out.double(), _covpool(z.half().double()), rtol=1e-5, atol=1.)


@pytest.mark.parametrize('autocast', [False, True], ids=['float16', 'float16_autocast'])
def test_float16_where_the_covariance_passes_65504(autocast):
    # A default layer at 2048 channels in eval on an input of RMS 100: the covariance passes float16's 65504. The row
    # BN gets calibrated statistics, so the comparison is well conditioned.
    torch.manual_seed(0)
    layer = GSoPChannelAttention(2048).eval()
    x = (torch.randn(2, 2048, 7, 7) * 100).half()
    with torch.no_grad():
        cov = channel_covariance(layer.relu(layer.bn_for_DR(layer.conv_for_DR(layer.relu_normal(x.float())))))
        assert cov.amax() > 65504
        layer.row_bn.running_mean.copy_(cov.mean((0, 2)))
        layer.row_bn.running_var.copy_(cov.var((0, 2)))
    assert_float16_gate_matches(layer, x, autocast)


@pytest.mark.parametrize('stride', [1, 2])
def test_batch_of_one_trains(stride):
    # Row BN sees d values per channel per sample (and the reduction BN H'W' positions), so batch 1 is fine.
    layer = GSoPChannelAttention(64, stride=stride).train()
    x = torch.randn(1, 64, 8, 8, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.row_bn.running_var).all()


def test_strided_gate_scales_every_position():
    layer = GSoPChannelAttention(16, att_dim=8, stride=2).eval()
    x = torch.randn(2, 16, 7, 7)
    out = layer(x)
    gate = out / x
    assert out.shape == x.shape
    torch.testing.assert_close(gate, gate[:, :, :1, :1].expand_as(gate))  # one gate value per channel


def test_official_structure_and_parameter_count():
    layer = GSoPChannelAttention(256)
    assert layer.att_dim == 128 and layer.stride == 1
    assert layer.conv_for_DR.weight.shape == (128, 256, 1, 1) and layer.conv_for_DR.bias is not None
    assert layer.row_conv_group.weight.shape == (512, 1, 128, 1) and layer.row_conv_group.groups == 128
    assert layer.fc_adapt_channels.weight.shape == (256, 512, 1, 1)
    for channels in (64, 256, 2048):
        assert sum(p.numel() for p in GSoPChannelAttention(channels).parameters()) == 641 * channels + 66688
    # GSoP-Net1 ResNet-50: one block at the end of each stage.
    assert sum(641 * c + 66688 for c in (256, 512, 1024, 2048)) == 2728192


def test_official_initialisation():
    layer = GSoPChannelAttention(256)
    # kaiming normal, fan_out, ReLU gain: std sqrt(2 / fan_out); fan_out of the row conv is 512 * 128.
    assert layer.conv_for_DR.weight.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.1)
    assert layer.row_conv_group.weight.std().item() == pytest.approx((2 / (512 * 128)) ** 0.5, rel=0.1)
    assert layer.fc_adapt_channels.weight.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.1)
    for bn in (layer.bn_for_DR, layer.row_bn):
        assert torch.equal(bn.weight, torch.ones(128)) and not bn.bias.any()


def test_plugs_into_timm_resnet50_with_stride_two_in_stage_one():
    from functools import partial
    model = timm.create_model('resnet50', num_classes=3, block_args=dict(attn_layer=partial(
        GSoPChannelAttention, stride=2))).eval()
    assert model.layer1[2].se.conv_for_DR.stride == (2, 2)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize('kwargs,match', [
    (dict(att_dim=0), r'GSoPChannelAttention: att_dim=0 is not allowed; expected an int >= 1'),
    (dict(att_dim=12.0), r'att_dim=12.0 is not allowed'),
    (dict(stride=0), r'stride=0 is not allowed; expected an int >= 1'),
    (dict(stride=True), r'stride=True is not allowed'),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GSoPChannelAttention(16, **kwargs)
