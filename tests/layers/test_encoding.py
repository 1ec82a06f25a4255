""" EncodingAttention against the official CIFAR EncLayer (zhanghang1989/PyTorch-Encoding at 5a1e3fb,
experiments/recognition/model/mynn.py and encoding/lib/cpu/encoding_cpu.cpp), written out here. """
import copy

import pytest
import timm
import torch
import torch.fx
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch.utils._python_dispatch import TorchDispatchMode

from timm_gct.layers.encoding import EncodingAttention
from tests.helpers import randomize



@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

def _reference(x, layer, scale):
    """Official forward: conv -> BN (batch statistics) -> ReLU -> Encoding -> View -> Normalize -> Linear -> sigmoid.

    The Encoding layer is the official CPU kernel, which builds the B x N x K x D residual tensor explicitly.
    """
    B, C = x.shape[:2]
    z = F.conv2d(x, layer.conv.weight, layer.conv.bias)
    z = F.relu(F.batch_norm(z, None, None, layer.bn.weight, layer.bn.bias, training=True, eps=1e-5))
    D = z.shape[1]
    X = z.view(B, D, -1).transpose(1, 2).contiguous()  # B x N x D
    codewords = layer.codewords  # K x D
    K = codewords.shape[0]
    residuals = X.unsqueeze(2).expand(B, X.size(1), K, D) - codewords.unsqueeze(0).unsqueeze(0)  # B x N x K x D
    scaled_l2 = scale.reshape(1, 1, K) * residuals.pow(2).sum(3)
    A = F.softmax(scaled_l2, dim=2)
    E = (A.unsqueeze(3) * residuals).sum(1)  # B x K x D
    y = F.normalize(E.view(-1, D * K), 2, 1, eps=1e-8)
    y = torch.sigmoid(F.linear(y, layer.fc.weight, layer.fc.bias)).view(B, C, 1, 1)
    return x * y


def _random_layer(channels, **kwargs):
    return randomize(EncodingAttention(channels, dtype=torch.float64, **kwargs), seed=4, scale=0.5).train()


@pytest.mark.parametrize('channels,kwargs', [(32, {}), (64, dict(num_codes=5, rd_ratio=1 / 16)), (24, dict(rd_max=3))])
def test_matches_official_math_in_float64(channels, kwargs):
    layer = _random_layer(channels, **kwargs)
    x = torch.randn(3, channels, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference(x, layer, layer.scale), rtol=1e-10, atol=1e-12)


def test_gradients_match_official_math_in_float64():
    layer = _random_layer(32, num_codes=6)
    x = torch.randn(2, 32, 5, 4, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    upstream = torch.randn(2, 32, 5, 4, dtype=torch.float64)
    (layer(x) * upstream).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    (_reference(x_ref, layer, layer.scale) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-12)
    for n, p in layer.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-9, atol=1e-12, msg=n)


def test_gradcheck_float64():
    layer = _random_layer(16, num_codes=3)
    x = torch.randn(2, 16, 3, 3, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())
    assert torch.autograd.gradcheck(lambda inp, *ps: layer(inp), (x,) + params, fast_mode=True)


def test_no_batch_x_positions_x_codes_x_dim_tensor_is_built():
    """The point of the expansion: nothing of B * N * K * D elements exists, forward or backward."""
    class MaxNumel(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    B, C, H, W, K = 2, 64, 16, 16, 32
    layer = EncodingAttention(C, num_codes=K)  # D = 16
    x = torch.randn(B, C, H, W, requires_grad=True)
    with MaxNumel() as mode:
        layer(x).sum().backward()
    assert mode.largest == x.numel() < B * H * W * K * 16 // 4


def test_pure_float16_matches_float64_where_the_official_sums_overflow():
    # BN scale 30 on a 56x56 map: aggregated residuals reach ~1e5 > 65504 and squared distances ~1e4 per term.
    layer = _random_layer(16, num_codes=4)
    with torch.no_grad():
        layer.bn.weight.fill_(30.)
        layer.bn.bias.fill_(20.)
    x = torch.randn(2, 16, 56, 56, dtype=torch.float64)
    expected = layer(x)
    z = F.relu(F.batch_norm(layer.conv(x), None, None, layer.bn.weight, layer.bn.bias, training=True))
    assert z.flatten(2).sum(2).abs().max() > 65504  # a float16 sum over positions would be inf
    out = layer.half()(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)


def test_distances_run_in_float32_under_autocast():
    layer = _random_layer(16, num_codes=4).float()
    x = torch.randn(2, 16, 8, 8)
    expected = layer(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(x)
    # Only the conv and the Linear run in bfloat16; the encoding itself stays float32.
    torch.testing.assert_close(out, expected, rtol=3e-2, atol=3e-2)


def test_official_defaults_and_init():
    layer = EncodingAttention(128)  # K = 32 (--ncodes), D = 128 / 4 (EncBasicBlock)
    assert layer.codewords.shape == (32, 32) and layer.scale.shape == (1, 32)
    assert layer.conv.out_channels == 32 and layer.conv.bias is not None
    assert layer.fc.in_features == 32 * 32 and layer.fc.out_features == 128
    bound = 1 / (32 * 32) ** 0.5
    assert layer.codewords.abs().max() <= bound and layer.codewords.abs().max() > bound / 2
    assert (layer.scale < 0).all() and (layer.scale >= -1).all()
    assert EncodingAttention(1024, rd_ratio=1 / 16).rd_channels == 64  # EncBottleneck: reduction 16


def test_init_survives_timms_resnet_init():
    """timm's ResNet re-initialises only Conv2d weights; codewords and smoothing factors keep the official init."""
    model = timm.create_model('resnet18', block_args=dict(attn_layer=EncodingAttention))
    layers = [m for m in model.modules() if isinstance(m, EncodingAttention)]
    assert len(layers) == 8
    for layer in layers:
        bound = 1 / (layer.num_codes * layer.rd_channels) ** 0.5
        assert layer.codewords.abs().max() <= bound
        assert (layer.scale < 0).all() and (layer.scale >= -1).all()


def test_smoothing_factors_are_weight_decayed_like_the_official_recipe():
    model = timm.create_model('resnet18', block_args=dict(attn_layer=EncodingAttention))
    optimizer = create_optimizer_v2(model, opt='sgd', lr=0.1, weight_decay=1e-4)
    decay_of = {id(p): group['weight_decay'] for group in optimizer.param_groups for p in group['params']}
    for name, p in model.named_parameters():
        if name.endswith(('.se.scale', '.se.codewords', '.se.fc.weight')):
            assert decay_of[id(p)] == 1e-4, name


def test_scale_drop_eval_uses_minus_one_half():
    layer = _random_layer(32, scale_drop=True).eval()
    assert layer.scale is None
    x = torch.randn(2, 32, 4, 4, dtype=torch.float64)
    scale = torch.full((32,), -0.5, dtype=torch.float64)
    with torch.no_grad():  # the reference uses batch statistics: give the running ones the same values
        z = layer.conv(x)
        layer.bn.running_mean.copy_(z.mean((0, 2, 3)))
        layer.bn.running_var.copy_(z.var((0, 2, 3), unbiased=False))
    torch.testing.assert_close(layer(x), _reference(x, layer, scale), rtol=1e-10, atol=1e-12)


def test_scale_drop_training_draws_fresh_uniform_factors():
    layer = _random_layer(32, num_codes=8, scale_drop=True)
    x = torch.randn(2, 32, 4, 4, dtype=torch.float64)
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)
    scale = torch.empty(1, 8, dtype=torch.float64).uniform_(-1., 0.)
    torch.testing.assert_close(out, _reference(x, layer, scale), rtol=1e-10, atol=1e-12)
    assert not torch.equal(layer(x), out)  # a new draw on the next call


@pytest.mark.parametrize('training', [True, False])
def test_scale_drop_torchscript_and_fx_match_eager_with_the_same_seed(training):
    layer = EncodingAttention(16, num_codes=4, scale_drop=True).train(training)
    scripted, traced = torch.jit.script(layer), torch.fx.symbolic_trace(copy.deepcopy(layer))
    x = torch.randn(2, 16, 5, 5)
    outs = []
    for module in (layer, scripted, traced):
        torch.manual_seed(3)
        outs.append(module(x))
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(outs[2], outs[0])


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_codes=0), r'EncodingAttention: num_codes=0 is not allowed; expected an int >= 1\.'),
    (dict(num_codes=2.), r'num_codes=2.0 is not allowed'),
    (dict(rd_ratio=0.), r'rd_ratio=0.0 is not allowed; expected a finite number > 0'),
    (dict(rd_ratio=1 / 16), r'rd_ratio=0.0625 leaves int\(8 \* 0.0625\) = 0 codeword dimensions.*>= 1 / 8'),
    (dict(rd_max=0), r'rd_max=0 is not allowed; expected an int >= 1 or None'),
    (dict(scale_drop=1), r'scale_drop=1 is not allowed; expected True or False'),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EncodingAttention(8, **kwargs)
