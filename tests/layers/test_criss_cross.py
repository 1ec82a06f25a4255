""" CrissCrossAttention against the official criss-cross attention (speedinghzl/CCNet, cc_attention/functions.py,
pure-PyTorch version), written out here. """
import inspect

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from timm_gct.layers import criss_cross
from timm_gct.layers.criss_cross import CrissCrossAttention
from tests.helpers import randomize



@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

def _inf(B, H, W, like):
    """Official INF(), but on the input's device and dtype instead of .cuda()."""
    return -torch.diag(torch.tensor(float('inf'), dtype=like.dtype).repeat(H), 0).unsqueeze(0).repeat(B * W, 1, 1)


def _reference_pass(x, layer):
    """Official forward, term by term: bmm on permuted views, -inf column diagonal, one softmax over H + W."""
    m_batchsize, _, height, width = x.size()
    proj_query = F.conv2d(x, layer.query_conv.weight, layer.query_conv.bias)
    proj_query_H = proj_query.permute(0, 3, 1, 2).contiguous().view(m_batchsize * width, -1, height).permute(0, 2, 1)
    proj_query_W = proj_query.permute(0, 2, 1, 3).contiguous().view(m_batchsize * height, -1, width).permute(0, 2, 1)
    proj_key = F.conv2d(x, layer.key_conv.weight, layer.key_conv.bias)
    proj_key_H = proj_key.permute(0, 3, 1, 2).contiguous().view(m_batchsize * width, -1, height)
    proj_key_W = proj_key.permute(0, 2, 1, 3).contiguous().view(m_batchsize * height, -1, width)
    proj_value = F.conv2d(x, layer.value_conv.weight, layer.value_conv.bias)
    proj_value_H = proj_value.permute(0, 3, 1, 2).contiguous().view(m_batchsize * width, -1, height)
    proj_value_W = proj_value.permute(0, 2, 1, 3).contiguous().view(m_batchsize * height, -1, width)
    energy_H = (torch.bmm(proj_query_H, proj_key_H) + _inf(m_batchsize, height, width, x)).view(
        m_batchsize, width, height, height).permute(0, 2, 1, 3)
    energy_W = torch.bmm(proj_query_W, proj_key_W).view(m_batchsize, height, width, width)
    concate = torch.softmax(torch.cat([energy_H, energy_W], 3), dim=3)
    att_H = concate[:, :, :, 0:height].permute(0, 2, 1, 3).contiguous().view(m_batchsize * width, height, height)
    att_W = concate[:, :, :, height:height + width].contiguous().view(m_batchsize * height, width, width)
    out_H = torch.bmm(proj_value_H, att_H.permute(0, 2, 1)).view(m_batchsize, width, -1, height).permute(0, 2, 3, 1)
    out_W = torch.bmm(proj_value_W, att_W.permute(0, 2, 1)).view(m_batchsize, height, -1, width).permute(0, 2, 1, 3)
    return layer.gamma.view(1) * (out_H + out_W) + x


def _reference(x, layer, recurrence):
    """Official RCCAModule: the same module applied ``recurrence`` times."""
    for _ in range(recurrence):
        x = _reference_pass(x, layer)
    return x


def _random_layer(channels, **kwargs):
    return randomize(CrissCrossAttention(channels, dtype=torch.float64, **kwargs), seed=6, scale=0.3)


@pytest.mark.parametrize('recurrence', [1, 2, 3])
@pytest.mark.parametrize('shape', [(2, 16, 5, 7), (1, 8, 1, 4), (2, 24, 6, 1)])
def test_matches_official_math_in_float64(recurrence, shape):
    layer = _random_layer(shape[1], recurrence=recurrence)
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference(x, layer, recurrence), rtol=1e-10, atol=1e-12)


def test_gradients_match_official_math_in_float64():
    layer = _random_layer(16)
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    upstream = torch.randn(2, 16, 4, 5, dtype=torch.float64)
    (layer(x) * upstream).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    (_reference(x_ref, layer, 2) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-12)
    for n, p in layer.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-9, atol=1e-12, msg=n)


def test_gradcheck_float64():
    layer = _random_layer(8)
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())
    assert torch.autograd.gradcheck(lambda inp, *ps: layer(inp), (x,) + params, fast_mode=True)


def test_centre_pixel_is_counted_once_and_weights_sum_to_one():
    q, k = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 3, 4, 5, dtype=torch.float64)
    attn_col, attn_row = criss_cross.criss_cross_weights(q, k)
    assert attn_col.shape == (2, 4, 5, 4) and attn_row.shape == (2, 4, 5, 5)
    assert not attn_col.diagonal(0, 1, 3).any()
    torch.testing.assert_close(attn_col.sum(3) + attn_row.sum(3), torch.ones(2, 4, 5, dtype=torch.float64))


def test_key_bias_has_no_effect():
    """q.(k + b) adds the same q.b to all H + W energies of a pixel, which one softmax ignores (official quirk)."""
    layer = _random_layer(16)
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64)
    out = layer(x)
    with torch.no_grad():
        layer.key_conv.bias.add_(3.)
    torch.testing.assert_close(layer(x), out, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('recurrence', [1, 2])
def test_identity_at_init(recurrence):
    layer = CrissCrossAttention(32, recurrence=recurrence)
    assert layer.gamma.shape == (1, 1, 1, 1) and not layer.gamma.any()
    x = torch.randn(2, 32, 6, 6) * 10
    assert torch.equal(layer(x), x)


def test_gamma_survives_timms_resnet_init_and_is_weight_decayed():
    model = timm.create_model('resnet18', block_args=dict(attn_layer=CrissCrossAttention))
    layers = [m for m in model.modules() if isinstance(m, CrissCrossAttention)]
    assert len(layers) == 8 and all(not m.gamma.any() for m in layers)
    x = torch.randn(1, 3, 64, 64)
    plain = timm.create_model('resnet18')
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if '.se.' not in k})
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))  # identity at init inside the network
    optimizer = create_optimizer_v2(model, opt='sgd', lr=0.1, weight_decay=1e-4)
    decay_of = {id(p): group['weight_decay'] for group in optimizer.param_groups for p in group['params']}
    assert all(decay_of[id(m.gamma)] == 1e-4 for m in layers)  # official: SGD weight decay on every parameter


def test_runs_on_the_meta_device_so_nothing_is_pinned_to_a_device():
    layer = CrissCrossAttention(16, device='meta')
    with torch.no_grad():
        layer.gamma.fill_(1.)
    assert layer(torch.randn(2, 16, 5, 6, device='meta')).device.type == 'meta'
    code = inspect.getsource(criss_cross).split('"""', 2)[2]  # the module docstring quotes the official .cuda()
    assert '.cuda(' not in code


def test_energies_and_softmax_run_in_float32_under_autocast():
    g = torch.Generator().manual_seed(9)
    q, k = torch.randn(2, 4, 6, 5, generator=g) * 30, torch.randn(2, 4, 6, 5, generator=g) * 30
    expected = criss_cross.criss_cross_weights(q, k)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = criss_cross.criss_cross_weights(q, k)
    assert out[0].dtype == out[1].dtype == torch.float32
    assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1])


def test_float16_energies_beyond_65504_do_not_overflow():
    g = torch.Generator().manual_seed(8)
    q, k = (torch.randn(2, 8, 5, 5, generator=g) * 100).half(), (torch.randn(2, 8, 5, 5, generator=g) * 100).half()
    assert torch.einsum('bchw,bcjw->bhwj', q.double(), k.double()).abs().max() > 65504
    attn_col, attn_row = criss_cross.criss_cross_weights(q, k)
    expected_col, expected_row = criss_cross.criss_cross_weights(q.double(), k.double())
    # Logits of ~1e5 in float32 carry absolute errors of ~1e-2, hence the loose tolerance: the point is no inf/NaN.
    torch.testing.assert_close(attn_col.double(), expected_col, rtol=1e-2, atol=2e-3)
    torch.testing.assert_close(attn_row.double(), expected_row, rtol=1e-2, atol=2e-3)
    layer = _random_layer(16).half()
    out = layer((torch.randn(2, 16, 6, 6, generator=g) * 50).half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


@pytest.mark.parametrize('kwargs,match', [
    (dict(channels=7), r'CrissCrossAttention: channels=7 is not allowed; expected at least 8'),
    (dict(channels=16, recurrence=0), r'CrissCrossAttention: recurrence=0 is not allowed; expected an int >= 1\.'),
    (dict(channels=16, recurrence=True), r'recurrence=True is not allowed'),
    (dict(channels=16, recurrence=2.), r'recurrence=2.0 is not allowed'),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrissCrossAttention(**kwargs)
