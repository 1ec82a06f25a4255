""" BilinearAttention against the official Bi-attention block (PengfeiFANGanu/Attention-in-Attention-Networks,
models/incep_m_bi.py, BilinearAttention), written out here. """
import pytest
import timm
import torch
import torch.nn.functional as F

from timm_gct.layers.bilinear import BilinearAttention, lower_triangle_products
from tests.helpers import assert_float16_gate_matches, randomize



@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

def _conv_block(x, seq, training):
    """Official ConvBlock: relu(bn(conv(x))), conv with bias."""
    conv, bn, _ = seq
    y = F.conv2d(x, conv.weight, conv.bias)
    if training:
        y = F.batch_norm(y, None, None, bn.weight, bn.bias, training=True, eps=1e-5)
    else:
        y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=1e-5)
    return F.relu(y)


def _reference(x, layer, training=True):
    """Official forward, term by term: full outer product per pixel, then its diagonals at offsets 0, -1, ..."""
    input_x = x
    x = _conv_block(x, layer.reduce, training)
    batches, channels, rows, cols = x.size()
    x = x.permute(0, 2, 3, 1).contiguous().view(-1, channels)
    x = torch.bmm(x.unsqueeze(2), x.unsqueeze(1))  # (B*rows*cols) x C x C
    x = torch.cat([torch.diagonal(x, offset=-i, dim1=1, dim2=2) for i in range(channels)], dim=1)
    x = x.view(batches, rows, cols, -1).permute(0, 3, 1, 2).contiguous()
    m_cha = _conv_block(F.avg_pool2d(x, x.size()[2:]), layer.channel, training)
    output = _conv_block(x, layer.spatial, training)
    return torch.sigmoid(m_cha * output) * input_x


def _random_layer(channels, **kwargs):
    return randomize(BilinearAttention(channels, dtype=torch.float64, **kwargs), seed=5)


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('channels,kwargs', [(64, {}), (48, dict(rd_ratio=1 / 8)), (96, dict(rd_max=3))])
def test_matches_official_math_in_float64(channels, kwargs, training):
    layer = _random_layer(channels, **kwargs).train(training)
    x = torch.randn(3, channels, 5, 6, dtype=torch.float64)
    expected = _reference(x, layer, training)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


def test_gradients_match_official_math_in_float64():
    layer = _random_layer(64).train()
    x = torch.randn(3, 64, 4, 5, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    upstream = torch.randn(3, 64, 4, 5, dtype=torch.float64)
    (layer(x) * upstream).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    (_reference(x_ref, layer) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-12)
    for n, p in layer.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-9, atol=1e-12, msg=n)


def test_gradcheck_float64():
    layer = _random_layer(32).train()  # R = 2, 3 bilinear maps
    x = torch.randn(3, 32, 3, 3, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())
    assert torch.autograd.gradcheck(lambda inp, *ps: layer(inp), (x,) + params, fast_mode=True)


def test_bilinear_maps_are_ordered_diagonal_by_diagonal():
    z = torch.tensor([2., 3., 5.]).view(1, 3, 1, 1)
    products = lower_triangle_products(z, 3).flatten().tolist()
    # offset 0: z0z0 z1z1 z2z2; offset -1: z1z0 z2z1; offset -2: z2z0
    assert products == [4., 9., 25., 6., 15., 10.]


def test_gate_lies_in_one_half_to_one():
    layer = _random_layer(32).eval()
    x = torch.randn(2, 32, 6, 6, dtype=torch.float64)
    gate = layer(x) / x
    assert gate.min() >= 0.5 and gate.max() <= 1.


def test_width_cap_default_and_official_width():
    # Official R = C // 16: every width up to 1024 (the widest official block, inception3) is unchanged by the cap.
    for channels, rd in ((256, 16), (480, 30), (512, 32), (832, 52), (1024, 64)):
        assert BilinearAttention(channels).rd_channels == rd
        assert BilinearAttention(channels, rd_max=None).rd_channels == rd
    capped, official = BilinearAttention(2048, device='meta'), BilinearAttention(2048, rd_max=None, device='meta')
    assert (capped.rd_channels, capped.bilinear_channels) == (64, 2080)
    assert (official.rd_channels, official.bilinear_channels) == (128, 8256)
    assert official.spatial[0].in_channels == official.channel[0].in_channels == 8256


def test_training_batch_of_one_is_a_value_error_eval_is_fine():
    layer = BilinearAttention(32)
    with pytest.raises(ValueError, match=r'BilinearAttention: got a training batch of 1 sample'):
        layer(torch.randn(1, 32, 4, 4))
    layer.eval()
    assert layer(torch.randn(1, 32, 4, 4)).shape == (1, 32, 4, 4)


def test_global_average_does_not_overflow_in_float16():
    layer = _random_layer(32).eval()
    with torch.no_grad():
        layer.reduce[0].weight.mul_(0.1)
        layer.spatial[0].weight.mul_(1e-3)  # keep the gate logits O(1), so float16 rounding cannot flip them
        layer.channel[0].weight.mul_(1e-3)
        layer.reduce[1].weight.fill_(10.)  # z ~ 10, products ~ 100 on a 56x56 map: spatial sums ~3e5 > 65504
        layer.reduce[1].bias.fill_(10.)
    x = torch.randn(2, 32, 56, 56, dtype=torch.float64)
    expected = layer(x)
    pairs = lower_triangle_products(F.relu(layer.reduce[1](layer.reduce[0](x))), layer.rd_channels)
    assert pairs.sum((2, 3)).max() > 65504
    out = layer.half()(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)


def _calibrate(bn, t):
    """Running statistics of a trained layer: those of ``t``, so that the BN output is O(1)."""
    bn.running_mean.copy_(t.mean((0, 2, 3)))
    bn.running_var.copy_(t.var((0, 2, 3)))


@pytest.mark.parametrize('autocast', [False, True], ids=['float16', 'float16_autocast'])
def test_float16_where_the_bilinear_maps_pass_65504(autocast):
    # A default layer at a ResNet-50 width in eval on an input of RMS 100: the reduced map z passes 256, so its
    # products pass float16's 65504. The branch BNs get calibrated statistics, so the gate logits are O(1) and the
    # comparison is well conditioned (with the default ones they are ~1e8).
    torch.manual_seed(1)
    layer = BilinearAttention(256).eval()
    x = (torch.randn(2, 256, 56, 56) * 100).half()
    with torch.no_grad():
        pairs = lower_triangle_products(layer.reduce(x.float()), layer.rd_channels)
        assert pairs.amax() > 65504
        _calibrate(layer.spatial[1], layer.spatial[0](pairs))
        _calibrate(layer.channel[1], layer.channel[0](pairs.mean((2, 3), keepdim=True)))
    assert_float16_gate_matches(layer, x, autocast)


def test_in_timm_resnet50():
    model = timm.create_model('resnet50', num_classes=3, block_args=dict(attn_layer=BilinearAttention)).eval()
    layers = [m for m in model.modules() if isinstance(m, BilinearAttention)]
    assert [m.rd_channels for m in layers] == [16] * 3 + [32] * 4 + [64] * 6 + [64] * 3
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize('kwargs,match', [
    (dict(rd_ratio=1 / 32), r'rd_ratio=0.03125 leaves int\(16 \* 0.03125\) = 0 reduced channels.*>= 1 / 16'),
    (dict(rd_ratio=-1.), r'BilinearAttention: rd_ratio=-1.0 is not allowed; expected a finite number > 0'),
    (dict(rd_max=0), r'rd_max=0 is not allowed; expected an int >= 1 or None'),
    (dict(rd_max=8.), r'rd_max=8.0 is not allowed'),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BilinearAttention(16, **kwargs)


def test_fewer_than_16_channels_is_a_value_error_at_the_official_ratio():
    with pytest.raises(ValueError, match=r'int\(8 \* 0.0625\) = 0 reduced channels'):
        BilinearAttention(8)
