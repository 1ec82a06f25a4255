""" StyleRecalibration against the official SRM layer (hyunjaelee410/style-based-recalibration-module,
models/recalibration_modules.py, SRMLayer), written out here. """
import copy

import pytest
import timm
import torch
import torch.fx
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from timm_gct.layers.srm import StyleRecalibration, _style_pool
from tests.helpers import randomize


def _reference(x, cfc, bn_w, bn_b, running_mean, running_var, training, eps=1e-5):
    """Official forward on a (C, 2) cfc: style pooling (mean, unbiased std), channel-wise FC, BN, sigmoid."""
    N, C, _, _ = x.size()
    channel_mean = x.view(N, C, -1).mean(dim=2, keepdim=True)
    channel_var = x.view(N, C, -1).var(dim=2, keepdim=True) + eps
    t = torch.cat((channel_mean, channel_var.sqrt()), dim=2)
    z = torch.sum(t * cfc[None, :, :], dim=2)[:, :, None, None]
    z_hat = F.batch_norm(z, running_mean, running_var, bn_w, bn_b, training=training, momentum=0.1, eps=1e-5)
    return x * torch.sigmoid(z_hat)


def _random_srm(channels, seed=6, **kwargs):
    return randomize(StyleRecalibration(channels, dtype=torch.float64, **kwargs), seed=seed)


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('shape', [(4, 6, 5, 7), (2, 3, 1, 2)])
def test_matches_official_math_and_gradients_in_float64(training, shape):
    C = shape[1]
    layer = _random_srm(C).train(training)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    cfc = layer.cfc.detach().view(C, 2).clone().requires_grad_()  # the official (C, 2) layout
    bn_w, bn_b = (p.detach().clone().requires_grad_() for p in (layer.bn.weight, layer.bn.bias))
    mean, var = layer.bn.running_mean.clone(), layer.bn.running_var.clone()
    out = layer(x)
    expected = _reference(x_ref, cfc, bn_w, bn_b, mean, var, training)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bn.running_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bn.running_var, var, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.cfc.grad.view(C, 2), cfc.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.bn.weight.grad, bn_w.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.bn.bias.grad, bn_b.grad, rtol=1e-10, atol=1e-12)


def test_gradcheck_in_training_mode():
    layer = _random_srm(4).train()
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), fast_mode=True)


def test_init_state_cfc_zero_gate_half():
    layer = StyleRecalibration(16)
    assert layer.cfc.shape == (32,) and not layer.cfc.any()
    assert sum(p.numel() for p in layer.parameters()) == 4 * 16
    x = torch.randn(3, 16, 5, 5) * 7
    for training in (True, False):
        assert torch.equal(layer.train(training)(x), x * 0.5)


def test_no_weight_decay_on_any_srm_parameter_under_timms_optimizer_factory():
    """Official recipe (imagenet.py set_optimizer): weight decay 0 on cfc, bn.weight, bn.bias; 1e-4 elsewhere."""
    model = timm.create_model('resnet50', block_args=dict(attn_layer=StyleRecalibration))
    optimizer = create_optimizer_v2(model, weight_decay=1e-4)
    decay_of = {id(p): group['weight_decay'] for group in optimizer.param_groups for p in group['params']}
    named = dict(model.named_parameters())
    srm_params = {n: p for n, p in named.items() if '.se.' in n}
    assert len(srm_params) == 3 * 16  # cfc, bn.weight, bn.bias in each of the 16 blocks
    assert len(decay_of) == len(named)
    for n, p in srm_params.items():
        assert decay_of[id(p)] == 0., n
    assert decay_of[id(model.layer1[0].conv1.weight)] == 1e-4


def test_basic_block_resnet_trains():
    """The official BasicBlock path cannot be built; this layer works in ResNet-18/34 as well."""
    model = timm.create_model('resnet18', num_classes=3, block_args=dict(attn_layer=StyleRecalibration)).train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if '.se.' in n]
    assert len(grads) == 3 * 8 and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_training_batch_of_one_is_a_clear_error():
    layer = StyleRecalibration(8).train()
    with pytest.raises(ValueError, match=r'StyleRecalibration: got a training batch of 1 sample'):
        layer(torch.randn(1, 8, 4, 4))
    traced = torch.fx.symbolic_trace(copy.deepcopy(layer))
    with pytest.raises(ValueError, match=r'StyleRecalibration: got a training batch of 1'):
        traced(torch.randn(1, 8, 4, 4))
    assert torch.isfinite(layer.eval()(torch.randn(1, 8, 4, 4))).all()  # eval uses the running statistics
    model = timm.create_model('resnet18', num_classes=3, block_args=dict(attn_layer=StyleRecalibration)).train()
    with pytest.raises(ValueError, match=r'StyleRecalibration: got a training batch of 1'):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize('training', [True, False])
def test_one_by_one_map_is_a_clear_error_not_nan(training):
    layer = StyleRecalibration(8).train(training)
    with pytest.raises(ValueError, match=r'StyleRecalibration: got a 1x1 feature map; it needs at least 2 positions'):
        layer(torch.randn(2, 8, 1, 1))
    traced = torch.fx.symbolic_trace(copy.deepcopy(layer))
    with pytest.raises(ValueError, match=r'StyleRecalibration: got a 1x1 feature map'):
        traced(torch.randn(2, 8, 1, 1))
    assert torch.isfinite(layer(torch.randn(2, 8, 2, 1))).all()


def test_pure_float16_statistics_do_not_overflow():
    # std 400 on a 16x16 map: its variance, 1.6e5, is beyond float16's 65504 (the official layer gives inf there).
    layer = _random_srm(8).eval()
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64) * 400
    expected = layer(x)
    out = layer.half()(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2.)


@pytest.mark.parametrize('eps', [0., -1e-5, float('nan'), float('inf'), 'small'])
def test_bad_eps_is_a_value_error(eps):
    with pytest.raises(ValueError, match=r'StyleRecalibration: eps=.* is not allowed; expected a finite number > 0'):
        StyleRecalibration(8, eps=eps)


@pytest.mark.parametrize('shift', [0., 1e3])
def test_two_pass_style_pool_matches_var_mean(shift):
    x = torch.randn(3, 5, 9, 8, dtype=torch.float64) * 2 + shift
    var, mean = torch.var_mean(x, dim=(2, 3), correction=1)
    expected = torch.stack((mean, (var + 1e-5).sqrt()), dim=2)
    torch.testing.assert_close(_style_pool(x, 1e-5), expected, rtol=1e-12, atol=0)
    # float32: the centred second pass keeps the variance accurate under a large mean (no E[x^2] - E[x]^2)
    pooled = _style_pool(x.float(), 1e-5).double()
    torch.testing.assert_close(pooled[..., 1], (var + 1e-5).sqrt(), rtol=1e-5, atol=0)


def test_two_pass_style_pool_gradcheck():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: _style_pool(x, 1e-5), (x,))
