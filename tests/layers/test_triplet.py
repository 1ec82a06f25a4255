""" TripletAttention against the official training code (landskape-ai/triplet-attention, MODELS/triplet_attention.py
and the init loop of MODELS/resnet.py), written out here. """
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from timm_gct.layers.triplet import TripletAttention
from tests.helpers import randomize

_BRANCHES = ('ChannelGateH', 'ChannelGateW', 'SpatialGate')


def _official_gate(t, conv_w, bn_w, bn_b, running_mean, running_var, training):
    """Official SpatialGate on a permuted tensor: ChannelPool (max, mean over dim 1) -> conv -> BN -> sigmoid."""
    compressed = torch.cat((torch.max(t, 1)[0].unsqueeze(1), torch.mean(t, 1).unsqueeze(1)), dim=1)
    k = conv_w.shape[-1]
    y = F.conv2d(compressed, conv_w, stride=1, padding=(k - 1) // 2)
    y = F.batch_norm(y, running_mean, running_var, bn_w, bn_b, training=training, momentum=0.01, eps=1e-5)
    return t * torch.sigmoid(y)


def _reference(x, params, stats, training, no_spatial):
    """Official TripletAttention.forward with explicit permute().contiguous() round trips."""
    def gate(name, t):
        return _official_gate(t, *params[name], *stats[name], training)
    out1 = gate('ChannelGateH', x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3).contiguous()
    out2 = gate('ChannelGateW', x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1).contiguous()
    if no_spatial:
        return (1 / 2) * (out1 + out2)
    return (1 / 3) * (gate('SpatialGate', x) + out1 + out2)


def _random_triplet(channels, seed=4, **kwargs):
    return randomize(TripletAttention(channels, dtype=torch.float64, **kwargs), seed=seed)


def _branches(layer):
    return [n for n in _BRANCHES if getattr(layer, n) is not None]


def _ref_params(layer):
    """Detached, grad-requiring copies of every branch's (conv weight, bn weight, bn bias)."""
    out = {}
    for n in _branches(layer):
        s = getattr(layer, n).spatial
        out[n] = [t.detach().clone().requires_grad_() for t in (s.conv.weight, s.bn.weight, s.bn.bias)]
    return out


def _ref_stats(layer):
    return {n: [getattr(layer, n).spatial.bn.running_mean.clone(), getattr(layer, n).spatial.bn.running_var.clone()]
            for n in _branches(layer)}


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('kernel_size,no_spatial', [(7, False), (3, False), (5, True), (1, False)])
def test_matches_official_math_and_gradients_in_float64(training, kernel_size, no_spatial):
    # C, H, W all different so that a wrongly oriented plane (the k x k kernel is not symmetric) cannot pass.
    layer = _random_triplet(5, kernel_size=kernel_size, no_spatial=no_spatial).train(training)
    x = torch.randn(3, 5, 9, 7, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    params, stats = _ref_params(layer), _ref_stats(layer)
    out = layer(x)
    expected = _reference(x_ref, params, stats, training, no_spatial)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # The BN running statistics (momentum 0.01) move exactly as the official ones.
    for n in _branches(layer):
        bn = getattr(layer, n).spatial.bn
        torch.testing.assert_close(bn.running_mean, stats[n][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.running_var, stats[n][1], rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    for n in _branches(layer):
        s = getattr(layer, n).spatial
        for p, r in zip((s.conv.weight, s.bn.weight, s.bn.bias), params[n]):
            torch.testing.assert_close(p.grad, r.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('no_spatial', [False, True])
@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_without_autograd_matches_official_math_and_leaves_the_input_alone(no_spatial, memory_format):
    """Without autograd the Z-pools take amax and the gates are summed and multiplied in one buffer of x's layout."""
    layer = _random_triplet(5, no_spatial=no_spatial).eval()
    x = torch.randn(3, 5, 9, 7, dtype=torch.float64)
    x[:, :, :3] = x[:, :, 3:6]  # ties in the max over H
    x = x.contiguous(memory_format=memory_format)
    before = x.clone()
    expected = _reference(x, _ref_params(layer), _ref_stats(layer), False, no_spatial)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            out = layer(x)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        assert out.is_contiguous(memory_format=memory_format) and torch.equal(x, before)


def test_gradcheck_in_training_mode():
    layer = _random_triplet(3, kernel_size=3).train()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), fast_mode=True)


def test_official_defaults_and_parameter_count():
    layer = TripletAttention(64)
    assert layer.kernel_size == 7 and not layer.no_spatial
    for n in _BRANCHES:
        s = getattr(layer, n).spatial
        assert s.conv.kernel_size == (7, 7) and s.conv.padding == (3, 3) and s.conv.bias is None
        assert s.bn.momentum == 0.01 and s.bn.eps == 1e-5 and s.bn.num_features == 1
    assert sum(p.numel() for p in layer.parameters()) == 3 * (2 * 7 ** 2 + 2) == 300
    assert sum(p.numel() for p in TripletAttention(64, kernel_size=3).parameters()) == 3 * (2 * 9 + 2)
    assert TripletAttention(64, no_spatial=True).SpatialGate is None


def test_key_names_follow_the_official_training_code():
    """MODELS/triplet_attention.py names, so released checkpoints map with prefix renames only."""
    keys = set(TripletAttention(16).state_dict())
    expected = {
        f'{branch}.spatial.{mod}.{leaf}'
        for branch in _BRANCHES
        for mod, leaves in (('conv', ('weight',)),
                            ('bn', ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')))
        for leaf in leaves
    }
    assert keys == expected
    # A state dict keyed like the training code loads as is.
    official = {k: v.clone() for k, v in _random_triplet(16).float().state_dict().items()}
    layer = TripletAttention(16)
    layer.load_state_dict(official)
    assert torch.equal(layer.SpatialGate.spatial.conv.weight, official['SpatialGate.spatial.conv.weight'])


def test_released_init_only_the_hw_bn_gamma_is_zero():
    layer = TripletAttention(32)
    assert not layer.SpatialGate.spatial.bn.weight.any()
    for n in ('ChannelGateH', 'ChannelGateW'):
        assert torch.equal(getattr(layer, n).spatial.bn.weight, torch.ones(1))
    for n in _BRANCHES:
        assert not getattr(layer, n).spatial.bn.bias.any()
    # So the H x W gate is exactly 0.5 at init in both modes.
    pooled = torch.randn(2, 2, 6, 6)
    for training in (True, False):
        layer.train(training)
        assert torch.equal(layer.SpatialGate(pooled), torch.full((2, 1, 6, 6), 0.5))


@pytest.mark.parametrize('zero_init_last', [True, False])
def test_released_init_survives_timms_resnet_init(zero_init_last):
    model = timm.create_model('resnet50', block_args=dict(attn_layer=TripletAttention), zero_init_last=zero_init_last)
    layers = [m for m in model.modules() if isinstance(m, TripletAttention)]
    assert len(layers) == 16
    weights = []
    for layer in layers:
        assert not layer.SpatialGate.spatial.bn.weight.any()
        assert layer.ChannelGateH.spatial.bn.weight.item() == 1 and layer.ChannelGateW.spatial.bn.weight.item() == 1
        weights += [getattr(layer, n).spatial.conv.weight.flatten() for n in _BRANCHES]
    # Official conv init: kaiming normal, fan_out = 1 * 7 * 7, gain sqrt(2) -> std sqrt(2 / 49); timm's is the same.
    assert torch.cat(weights).std().item() == pytest.approx(math.sqrt(2 / 49), rel=0.1)


def test_standalone_conv_init_is_the_official_kaiming_fan_out():
    weights = torch.cat([getattr(TripletAttention(8), n).spatial.conv.weight.flatten()
                         for _ in range(20) for n in _BRANCHES])
    assert weights.std().item() == pytest.approx(math.sqrt(2 / 49), rel=0.1)


def test_bottleneck_resnet_train_step():
    # resnet26: Bottleneck blocks, 2 per stage (BasicBlock ResNets are covered by the shared layer contract).
    model = timm.create_model('resnet26', num_classes=3, block_args=dict(attn_layer=TripletAttention)).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if '.se.' in n]
    assert len(grads) == 8 * 9
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_training_batch_of_one_works():
    # The gates' BatchNorms normalise over positions, not over samples, so a batch of one trains.
    layer = _random_triplet(8).float().train()
    assert torch.isfinite(layer(torch.randn(1, 8, 4, 4))).all()


@pytest.mark.parametrize('kwargs,match', [
    (dict(kernel_size=4), r'TripletAttention: kernel_size=4 is not allowed; expected an odd int >= 1'),
    (dict(kernel_size=0), r'kernel_size=0 is not allowed'),
    (dict(kernel_size=-3), r'kernel_size=-3 is not allowed'),
    (dict(kernel_size=7.0), r'kernel_size=7.0 is not allowed'),
    (dict(kernel_size=True), r'kernel_size=True is not allowed'),
    (dict(no_spatial=1), r'TripletAttention: no_spatial=1 is not allowed; expected True or False'),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TripletAttention(16, **kwargs)
