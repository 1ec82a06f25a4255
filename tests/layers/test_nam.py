""" NormalizationAttention against the official NAM channel attention (Christian-lyc/NAM, MODELS/attention.py). """
import argparse
import copy

import pytest
import timm
import torch
from timm.utils import ParseKwargs

from timm_gct.layers import NormalizationAttention
from tests.helpers import randomize


def _reference(x, weight, bias, mean, var, eps=1e-5):
    """Official forward on explicit BN statistics: sigmoid(|g| / sum|g| * BN(x)) * x, the weights detached."""
    y = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps)
    y = y * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    w = weight.detach().abs() / weight.detach().abs().sum()
    return torch.sigmoid(w.view(1, -1, 1, 1) * y) * x


def _random_nam(channels, **kwargs):
    return randomize(NormalizationAttention(channels, dtype=torch.float64, **kwargs), seed=2)


def test_matches_official_math_in_training_mode_float64():
    layer = _random_nam(12).train()
    x = torch.randn(4, 12, 5, 6, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    weight = layer.bn.weight.detach().clone().requires_grad_()
    bias = layer.bn.bias.detach().clone().requires_grad_()
    mean, var = x_ref.mean((0, 2, 3)), x_ref.var((0, 2, 3), unbiased=False)
    expected = _reference(x_ref, weight, bias, mean, var)
    out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # Gradients too: no gradient flows through the |gamma| / sum|gamma| weights.
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.bn.weight.grad, weight.grad)
    torch.testing.assert_close(layer.bn.bias.grad, bias.grad)


def test_matches_official_math_in_eval_mode_float64():
    layer = _random_nam(12).eval()
    x = torch.randn(2, 12, 3, 3, dtype=torch.float64)
    expected = _reference(x, layer.bn.weight, layer.bn.bias, layer.bn.running_mean, layer.bn.running_var)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def _weight_grad(layer, x):
    layer.zero_grad()
    layer(x).sum().backward()
    return layer.bn.weight.grad.clone()


def test_sparsity_adds_s_sign_gamma_to_gammas_gradient():
    plain = _random_nam(8)
    sparse = _random_nam(8, sparsity=1e-4)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    diff = _weight_grad(sparse, x) - _weight_grad(plain, x)
    torch.testing.assert_close(diff, 1e-4 * torch.sign(plain.bn.weight.detach()), rtol=0, atol=1e-15)
    assert sparse.bn.bias.grad is not None
    torch.testing.assert_close(sparse.bn.bias.grad, plain.bn.bias.grad)


def test_sparsity_survives_deepcopy():
    # timm's ModelEma and many training loops deep-copy models; tensor hooks are not copied, so they are re-added.
    plain, sparse = _random_nam(8), _random_nam(8, sparsity=1e-3)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    diff = _weight_grad(copy.deepcopy(sparse), x) - _weight_grad(plain, x)
    torch.testing.assert_close(diff, 1e-3 * torch.sign(plain.bn.weight.detach()), rtol=0, atol=1e-15)


def test_sparsity_is_settable_from_train_py_model_kwargs():
    """train.py parses --model-kwargs with timm.utils.ParseKwargs and passes the result to create_model."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    args = parser.parse_args(['--model-kwargs', "attn_kwargs={'sparsity': 1e-4}"])
    sparse = timm.create_model('nam_resnet18_cifar', dtype=torch.float64, **args.model_kwargs)
    plain = timm.create_model('nam_resnet18_cifar', dtype=torch.float64)
    plain.load_state_dict(sparse.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for model in (sparse, plain):
        model(x).sum().backward()
    layers = {n: m for n, m in sparse.named_modules() if isinstance(m, NormalizationAttention)}
    assert len(layers) == 8 and all(m.sparsity == 1e-4 for m in layers.values())
    for name, layer in layers.items():
        diff = layer.bn.weight.grad - plain.get_submodule(name).bn.weight.grad
        torch.testing.assert_close(diff, 1e-4 * torch.sign(layer.bn.weight.detach()), rtol=0, atol=1e-12)


def test_sparsity_default_is_off():
    assert NormalizationAttention(8).sparsity == 0.
    assert not NormalizationAttention(8).bn.weight._backward_hooks


def test_all_zero_gamma_gives_no_nan():
    layer = NormalizationAttention(4)
    with torch.no_grad():
        layer.bn.weight.zero_()
    out = layer(torch.randn(2, 4, 3, 3))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('sparsity', [-1e-4, float('inf'), float('nan'), 'big'])
def test_bad_sparsity_is_a_value_error(sparsity):
    with pytest.raises(ValueError, match=r'NormalizationAttention: sparsity=.* expected a finite number >= 0'):
        NormalizationAttention(8, sparsity=sparsity)


@pytest.mark.parametrize('bn_kwargs', [{}, {'momentum': None}, {'track_running_stats': False}])
def test_folded_batch_norm_keeps_batchnorm2d_bookkeeping(bn_kwargs):
    """The forward folds w into the BN's affine parameters; the running statistics must evolve as nn.BatchNorm2d's."""
    layer = _random_nam(6)
    layer.bn = randomize(torch.nn.BatchNorm2d(6, dtype=torch.float64, **bn_kwargs), seed=3)
    plain_bn = copy.deepcopy(layer.bn)
    for step in range(3):
        x = torch.randn(4, 6, 3, 5, dtype=torch.float64) * (step + 1)
        w = layer.bn.weight.abs() / layer.bn.weight.abs().sum()
        expected = torch.sigmoid(plain_bn(x) * w.view(1, -1, 1, 1)) * x
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bn.state_dict(), plain_bn.state_dict(), rtol=1e-12, atol=1e-12)
    layer.eval(), plain_bn.eval()
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    w = layer.bn.weight.abs() / layer.bn.weight.abs().sum()
    torch.testing.assert_close(layer(x), torch.sigmoid(plain_bn(x) * w.view(1, -1, 1, 1)) * x, rtol=1e-12, atol=1e-12)


def test_a_replaced_norm_runs_its_own_forward():
    """timm's freeze_batch_norm_2d (and SyncBatchNorm conversion) swap the BN class: its own forward must run."""
    from timm.layers import freeze_batch_norm_2d
    layer = _random_nam(6).eval()
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    expected = layer(x)
    frozen = freeze_batch_norm_2d(copy.deepcopy(layer))
    assert not isinstance(frozen.bn, torch.nn.BatchNorm2d)
    torch.testing.assert_close(frozen(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('needs', ['x', 'params', 'weight', 'bias', 'all'])
def test_fused_training_backward_matches_autograd_of_the_formula(needs):
    """Eager training runs _NormalizationGateFunction; its written-out backward must give autograd's gradients for
    whichever inputs require them, and the BN's running statistics must move as nn.BatchNorm2d's."""
    layer = _random_nam(5).train()
    layer.bn.weight.requires_grad_(needs in ('params', 'weight', 'all'))
    layer.bn.bias.requires_grad_(needs in ('params', 'bias', 'all'))
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64, requires_grad=needs in ('x', 'all'))
    ref = copy.deepcopy(layer)
    x_ref = x.detach().clone().requires_grad_(x.requires_grad)
    upstream = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    out = layer(x)
    assert out.grad_fn.name() == '_NormalizationGateFunctionBackward'
    (out * upstream).sum().backward()
    w = ref.bn.weight.detach().abs() / ref.bn.weight.detach().abs().sum()
    expected = torch.sigmoid(ref.bn(x_ref) * w.view(1, -1, 1, 1)) * x_ref
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in ((x.grad, x_ref.grad), (layer.bn.weight.grad, ref.bn.weight.grad),
                      (layer.bn.bias.grad, ref.bn.bias.grad)):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.bn.state_dict(), ref.bn.state_dict(), rtol=1e-12, atol=1e-12)


def test_fused_training_path_refuses_one_value_per_channel():
    """As F.batch_norm does; aten's native_batch_norm, which the fused path calls, would write NaN statistics."""
    layer = _random_nam(3).train()
    x = torch.randn(1, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match='Expected more than 1 value per channel when training'):
        layer(x)
    assert torch.isfinite(layer.bn.running_var).all()
