""" GatedChannelTransform against the official GCT math (z-x-yang/GCT, PyTorch/GCT.py), written out here. """
import pytest
import torch
from timm.optim import create_optimizer_v2

import timm
from timm_gct.layers import GatedChannelTransform
from timm_gct.layers.gct import gated_channel_transform
from timm_gct.layers._reduce import spatial_sum
from tests.helpers import randomize


def _reference(x, alpha, gamma, beta, eps, mode, after_relu):
    """The official forward, term by term, on (1, C, 1, 1) parameters."""
    if mode == 'l2':
        embedding = (x.pow(2).sum((2, 3), keepdim=True) + eps).pow(0.5) * alpha
        norm = gamma / (embedding.pow(2).mean(dim=1, keepdim=True) + eps).pow(0.5)
    else:
        _x = x if after_relu else torch.abs(x)
        embedding = _x.sum((2, 3), keepdim=True) * alpha
        norm = gamma / (torch.abs(embedding).mean(dim=1, keepdim=True) + eps)
    gate = 1. + torch.tanh(embedding * norm + beta)
    return x * gate


def _random_gct(channels, **kwargs):
    return randomize(GatedChannelTransform(channels, dtype=torch.float64, **kwargs), seed=1)


@pytest.mark.parametrize('mode,after_relu', [('l2', False), ('l1', False), ('l1', True)])
def test_matches_official_math_in_float64(mode, after_relu):
    layer = _random_gct(24, mode=mode, after_relu=after_relu)
    x = torch.randn(3, 24, 7, 5, dtype=torch.float64)
    if after_relu:
        x = x.relu()
    expected = _reference(x, layer.alpha, layer.gamma, layer.beta.view(1, -1, 1, 1), 1e-5, mode, after_relu)
    out = layer(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('mode,after_relu', [('l2', False), ('l1', False), ('l1', True)])
def test_gradients_match_official_math_in_float64(mode, after_relu):
    layer = _random_gct(8, mode=mode, after_relu=after_relu)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    x = (x.relu() if after_relu else x).requires_grad_()
    ref_params = [p.detach().clone().requires_grad_() for p in (layer.alpha, layer.gamma, layer.beta)]
    x_ref = x.detach().clone().requires_grad_()
    upstream = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    (layer(x) * upstream).sum().backward()
    a, g, b = ref_params
    (_reference(x_ref, a, g, b.view(1, -1, 1, 1), 1e-5, mode, after_relu) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    for p, r in zip((layer.alpha, layer.gamma, layer.beta), ref_params):
        torch.testing.assert_close(p.grad, r.grad)


@pytest.mark.parametrize('mode,after_relu', [('l2', False), ('l1', False), ('l1', True)])
def test_fused_backward_passes_gradcheck(mode, after_relu):
    layer = _random_gct(6, mode=mode, after_relu=after_relu)
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64)
    x = x.abs() if after_relu else x

    def fn(x, alpha, gamma, beta):
        return gated_channel_transform(x, alpha, gamma, beta, layer.eps, layer.p)
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), layer.alpha, layer.gamma, layer.beta))


def test_eager_training_runs_the_fused_function_and_the_plain_formula_agrees():
    layer = _random_gct(8)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert type(out.grad_fn).__name__ == '_GatedChannelFunctionBackward'
    scripted = torch.jit.script(layer)  # TorchScript (like FX and torch.compile) runs the plain formula
    x_plain = x.detach().clone().requires_grad_()
    out_plain = scripted(x_plain)
    assert type(out_plain.grad_fn).__name__ != '_GatedChannelFunctionBackward'
    torch.testing.assert_close(out, out_plain, rtol=1e-14, atol=1e-14)
    upstream = torch.randn_like(out)
    torch.testing.assert_close(
        torch.autograd.grad(out, x, upstream)[0], torch.autograd.grad(out_plain, x_plain, upstream)[0])


def test_fused_backward_in_bfloat16_matches_float32():
    layer = _random_gct(16).float()
    x = torch.randn(2, 16, 14, 14) * 3
    grads = []
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype).detach().requires_grad_()
        layer.zero_grad()
        (layer.to(dtype)(xd).float().square().sum()).backward()
        assert xd.grad.dtype == dtype and torch.isfinite(xd.grad).all()
        grads.append((xd.grad.float(), layer.gamma.grad.float()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=5e-2, atol=5e-1)


def test_inplace_scales_the_input_only_without_autograd():
    layer = _random_gct(8).float()
    inplace = GatedChannelTransform(8, inplace=True)
    inplace.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8, 6, 6)
    expected = layer(x).detach()
    with torch.no_grad():
        y = x.clone()
        out = inplace(y)
    assert out.data_ptr() == y.data_ptr()  # scaled in place, no new feature map
    torch.testing.assert_close(out, expected)
    y = x.clone().requires_grad_()
    out = inplace(y)  # autograd needs the input: never in place
    assert torch.equal(y, x)
    torch.testing.assert_close(out, expected)


def test_registered_models_use_inplace_and_agree_with_autograd_on():
    model = timm.create_model('gct_resnet18_cifar', zero_init_last=False).eval()
    gates = [m for m in model.modules() if isinstance(m, GatedChannelTransform)]
    assert gates and all(m.inplace for m in gates)
    for m in gates:
        randomize(m, seed=3, scale=0.3)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        fast = model(x)
    torch.testing.assert_close(fast, model(x.requires_grad_()).detach())


@pytest.mark.parametrize('mode', ['l2', 'l1'])
def test_identity_at_init(mode):
    layer = GatedChannelTransform(32, mode=mode)
    assert torch.equal(layer.alpha, torch.ones(1, 32, 1, 1))
    assert not layer.gamma.any() and not layer.beta.any()
    x = torch.randn(2, 32, 6, 6) * 10
    assert torch.equal(layer(x), x)


def test_reductions_run_in_at_least_float32():
    assert spatial_sum(torch.ones(1, 2, 3, 3, dtype=torch.float16), 2).dtype == torch.float32
    assert spatial_sum(torch.ones(1, 2, 3, 3, dtype=torch.bfloat16), 1).dtype == torch.float32
    assert spatial_sum(torch.ones(1, 2, 3, 3, dtype=torch.float64), 0).dtype == torch.float64


@pytest.mark.parametrize('mode', ['l2', 'l1'])
def test_pure_float16_does_not_overflow(mode):
    # RMS 100 on a 56x56 map: the per-channel sum of squares is ~3e7, far beyond float16's 65504 (the official code
    # gives inf, then NaN, from RMS ~4.6 on). The float16 layer must agree with the float64 one.
    layer = _random_gct(16, mode=mode)
    x = torch.randn(2, 16, 56, 56, dtype=torch.float64) * 100
    expected = layer(x)
    out = layer.half()(x.half())
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=0.5)


@pytest.mark.parametrize('kwargs,match', [
    (dict(mode='l3'), r"GatedChannelTransform: mode='l3' is not allowed; expected one of 'l2', 'l1'"),
    (dict(eps=0.), r'eps=0.0 is not allowed; expected a finite number > 0'),
    (dict(eps=float('nan')), r'eps=nan is not allowed'),
    (dict(after_relu=True), r"after_relu=True is only allowed with mode='l1'"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GatedChannelTransform(16, **kwargs)


def test_beta_is_not_weight_decayed_by_timms_optimizer_factory():
    """Official recipe (GCT README, PyTorch/main.py): weight decay on every parameter except beta."""
    model = timm.create_model('gct_resnet18_cifar')
    optimizer = create_optimizer_v2(model, opt='sgd', lr=0.1, weight_decay=1e-4)
    decay_of = {id(p): group['weight_decay'] for group in optimizer.param_groups for p in group['params']}
    named = dict(model.named_parameters())
    gct_params = {n: p for n, p in named.items() if '.se.' in n}
    assert len(gct_params) == 3 * 8  # alpha, gamma, beta in each of the 8 blocks
    for n, p in gct_params.items():
        expected = 0. if n.endswith('.beta') else 1e-4
        assert decay_of[id(p)] == expected, n


def test_float16_sum_of_squares_overflows_in_the_official_code_and_not_here():
    """The premise of the float32 accumulation: the official op order (pow + sum in the input dtype) overflows a
    float16 56 x 56 map of RMS 100, where this layer stays finite and close to its float32 result."""
    from timm_gct.bench.official.gct import from_layer
    layer = GatedChannelTransform(16)
    with torch.no_grad():
        layer.gamma.normal_(0, 0.3)
        layer.beta.normal_(0, 0.3)
    x = torch.randn(2, 16, 56, 56) * 100
    official = from_layer(layer).half()
    assert not torch.isfinite(official(x.half())).all()
    out = layer.half()(x.half())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), layer.float()(x), rtol=1e-2, atol=1e-1)
