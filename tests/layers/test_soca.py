""" SecondOrderChannelAttention against the official SOCA (daitao/SAN, TrainCode/model/san.py, and the Covpool /
Sqrtm functions of TrainCode/model/MPNCOV/python/MPNCOV.py), forward and hand-written backward, written out here. """
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timm_gct.layers.soca import SecondOrderChannelAttention, newton_schulz_sqrtm, second_order_descriptor
from tests.helpers import assert_gradients_match, randomize


def _ibar(m, dtype=torch.float64):
    return (-1. / m / m) * torch.ones(m, m, dtype=dtype) + (1. / m) * torch.eye(m, dtype=dtype)


def _covpool(x):
    """Official Covpool forward: X Ibar X^T with the explicit M x M Ibar."""
    n, c, h, w = x.shape
    feats = x.reshape(n, c, h * w)
    return feats.bmm(_ibar(h * w).expand(n, h * w, h * w)).bmm(feats.transpose(1, 2))


def _official_sqrtm(cov, iter_n):
    """Official Sqrtm forward, keeping every Y_i and Z_i as the official code does; returns them for the backward."""
    n, dim, _ = cov.shape
    i3 = 3.0 * torch.eye(dim, dtype=cov.dtype).expand(n, dim, dim)
    norm_a = (1.0 / 3.0) * (cov * i3).sum(dim=1).sum(dim=1)
    a = cov / norm_a.view(n, 1, 1)
    ys, zs = [None] * iter_n, [None] * iter_n
    zy = 0.5 * (i3 - a)
    ys[0] = a.bmm(zy)
    zs[0] = zy
    for i in range(1, iter_n - 1):
        zy = 0.5 * (i3 - zs[i - 1].bmm(ys[i - 1]))
        ys[i] = ys[i - 1].bmm(zy)
        zs[i] = zy.bmm(zs[i - 1])
    zy = 0.5 * ys[iter_n - 2].bmm(i3 - zs[iter_n - 2].bmm(ys[iter_n - 2]))
    return zy * torch.sqrt(norm_a).view(n, 1, 1), (a, zy, norm_a, ys, zs)


def _official_sqrtm_backward(grad_output, cov, saved, iter_n):
    """Official Sqrtm.backward (iterN >= 2 branch), term by term."""
    a, zy, norm_a, ys, zs = saved
    n, dim, _ = cov.shape
    i3 = 3.0 * torch.eye(dim, dtype=cov.dtype).expand(n, dim, dim)
    der_post_com = grad_output * torch.sqrt(norm_a).view(n, 1, 1)
    der_post_com_aux = (grad_output * zy).sum(dim=1).sum(dim=1) / (2 * torch.sqrt(norm_a))
    y_last, z_last = ys[iter_n - 2], zs[iter_n - 2]
    dldy = 0.5 * (der_post_com.bmm(i3 - y_last.bmm(z_last)) - z_last.bmm(y_last).bmm(der_post_com))
    dldz = -0.5 * y_last.bmm(der_post_com).bmm(y_last)
    for i in range(iter_n - 3, -1, -1):
        yz = i3 - ys[i].bmm(zs[i])
        zy_i = zs[i].bmm(ys[i])
        dldy_new = 0.5 * (dldy.bmm(yz) - zs[i].bmm(dldz).bmm(zs[i]) - zy_i.bmm(dldy))
        dldz_new = 0.5 * (yz.bmm(dldz) - ys[i].bmm(dldy).bmm(ys[i]) - dldz.bmm(zy_i))
        dldy, dldz = dldy_new, dldz_new
    der_ns_iter = 0.5 * (dldy.bmm(i3 - a) - dldz - a.bmm(dldy))
    grad_input = der_ns_iter / norm_a.view(n, 1, 1)
    grad_aux = (der_ns_iter * cov).sum(dim=1).sum(dim=1)
    scale = der_post_com_aux - grad_aux / (norm_a * norm_a)
    return grad_input + scale.view(n, 1, 1) * torch.eye(dim, dtype=cov.dtype)


def _official_covpool_backward(grad_output, x):
    n, c, h, w = x.shape
    feats = x.reshape(n, c, h * w)
    grad = (grad_output + grad_output.transpose(1, 2)).bmm(feats).bmm(_ibar(h * w).expand(n, h * w, h * w))
    return grad.reshape(n, c, h, w)


def _block_mask(channels, sizes):
    mask = torch.zeros(channels, channels, dtype=torch.float64)
    start = 0
    for size in sizes:
        mask[start:start + size, start:start + size] = 1
        start += size
    assert start == channels
    return mask


def _reference(x, layer, params, block_sizes=None):
    """Official SOCA.forward (no crop needed below 1000 x 1000), on the block-diagonal covariance if given."""
    n, c, h, w = x.shape
    cov = _covpool(x)
    if block_sizes is not None:
        cov = cov * _block_mask(c, block_sizes)
    root, _ = _official_sqrtm(cov, 5)
    z = torch.mean(root, 1).view(n, c, 1, 1)
    hidden = F.relu(F.conv2d(z, params['conv_du.0.weight'], params['conv_du.0.bias']))
    return torch.sigmoid(F.conv2d(hidden, params['conv_du.2.weight'], params['conv_du.2.bias'])) * x


def _random_soca(channels, **kwargs):
    layer = randomize(SecondOrderChannelAttention(channels, dtype=torch.float64, **kwargs), seed=6)
    with torch.no_grad():
        layer.conv_du[0].bias.abs_()  # keep the few hidden units alive, so every weight gets a gradient
    return layer


@pytest.mark.parametrize('channels,kwargs,blocks', [
    (16, dict(reduction=4), None),  # C <= 64: one group, the official layer
    (24, dict(reduction=4, cov_group_size=None), None),
    (16, dict(reduction=4, cov_group_size=4), [4, 4, 4, 4]),
    (13, dict(reduction=2, cov_group_size=5), [5, 5, 3]),  # ceil(13 / 5) = 3 groups of 5, one zero-padded by 2
])
def test_matches_official_math_in_float64(channels, kwargs, blocks):
    layer = _random_soca(channels, **kwargs)
    x = torch.randn(3, channels, 6, 7, dtype=torch.float64)
    expected = _reference(x, layer, dict(layer.named_parameters()), blocks)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('kwargs,blocks', [(dict(), None), (dict(cov_group_size=3), [3, 3, 3, 3])])
def test_gradients_match_official_math_in_float64(kwargs, blocks):
    layer = _random_soca(12, reduction=3, **kwargs)
    x = torch.randn(2, 12, 5, 6, dtype=torch.float64)
    assert_gradients_match(layer, x, lambda x_ref, params: _reference(x_ref, layer, params, blocks))


def test_autograd_equals_the_official_hand_written_backward():
    """The official Covpool / Sqrtm backward formulas give the same input gradient as plain autograd here."""
    x = torch.randn(2, 10, 4, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 10, dtype=torch.float64)
    (second_order_descriptor(x, 1, 10, 5, 0.) * weights).sum().backward()

    cov = _covpool(x.detach())
    _, saved = _official_sqrtm(cov, 5)
    # d/dY of sum_c w_c mean_i Y_ic is w_c / C in every row i.
    grad_root = (weights / 10).unsqueeze(1).expand(2, 10, 10)
    grad_cov = _official_sqrtm_backward(grad_root, cov, saved, 5)
    torch.testing.assert_close(x.grad, _official_covpool_backward(grad_cov, x.detach()), rtol=1e-10, atol=1e-12)


def _numpy_official_iteration(cov, iter_n):
    """The official iteration once more, in numpy, for one matrix."""
    dim = cov.shape[0]
    norm_a = np.trace(cov)
    a = cov / norm_a
    i3 = 3. * np.eye(dim)
    z = 0.5 * (i3 - a)
    y = a @ z
    for _ in range(iter_n - 2):
        t = 0.5 * (i3 - z @ y)
        y, z = y @ t, t @ z
    return 0.5 * y @ (i3 - z @ y) * np.sqrt(norm_a)


@pytest.mark.parametrize('iter_n', [2, 3, 5, 8])
def test_newton_schulz_is_the_official_iteration(iter_n):
    x = torch.randn(3, 16, 6, 6, dtype=torch.float64)
    cov = _covpool(x)
    out = newton_schulz_sqrtm(cov.unsqueeze(1), iter_n, 0.).squeeze(1)
    for i in range(3):
        np.testing.assert_allclose(out[i].numpy(), _numpy_official_iteration(cov[i].numpy(), iter_n),
                                   rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, _official_sqrtm(cov, iter_n)[0], rtol=1e-10, atol=1e-12)


def test_five_iterations_are_an_approximation_of_the_square_root():
    """The official 5 steps are not an exact sqrt; more steps converge to it (so the count must stay 5)."""
    x = torch.randn(2, 16, 10, 10, dtype=torch.float64)
    cov = _covpool(x)
    evals, evecs = torch.linalg.eigh(cov)
    exact = evecs @ torch.diag_embed(evals.clamp_min(0).sqrt()) @ evecs.transpose(1, 2)

    def rel_err(iter_n):
        root = newton_schulz_sqrtm(cov.unsqueeze(1), iter_n, 0.).squeeze(1)
        return ((root - exact).norm() / exact.norm()).item()

    assert 1e-3 < rel_err(5) < 0.2
    assert rel_err(40) < 1e-8


def test_official_defaults():
    layer = SecondOrderChannelAttention(64)
    assert layer.iter_n == 5  # san.py SOCA.forward: MPNCOV.SqrtmLayer(cov_mat, 5)
    assert layer.reduction == 16 and layer.conv_du[0].out_channels == 4  # SAN passes --reduction 16
    assert layer.conv_du[0].bias is not None and layer.conv_du[2].bias is not None
    assert (layer.groups, layer.group_channels) == (1, 64)
    assert set(layer.state_dict()) == {'conv_du.0.weight', 'conv_du.0.bias', 'conv_du.2.weight', 'conv_du.2.bias'}


@pytest.mark.parametrize('channels,size,expected', [
    (64, 64, (1, 64)), (32, 64, (1, 32)), (2048, 64, (32, 64)), (100, 64, (2, 50)), (97, 64, (2, 49)),
    (256, 64, (4, 64)), (2048, None, (1, 2048)),
])
def test_covariance_groups(channels, size, expected):
    layer = SecondOrderChannelAttention(channels, cov_group_size=size, reduction=1)
    assert (layer.groups, layer.group_channels) == expected


@pytest.mark.parametrize('kwargs', [dict(), dict(cov_group_size=3)])
@pytest.mark.parametrize('hw', [(5, 5), (1, 1)])
@pytest.mark.parametrize('constant', [0., 2.5])
def test_zero_or_constant_input_gives_no_nan(kwargs, hw, constant):
    # tr(S) = 0: the official layer divides 0 by 0 here; the eps keeps forward and backward finite.
    layer = _random_soca(8, reduction=2, **kwargs).float()
    x = torch.full((2, 8, *hw), constant, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    # With S = 0 the statistic is 0, so the gate is the MLP's response to a zero vector.
    gate = torch.sigmoid(layer.conv_du[2](F.relu(layer.conv_du[0].bias.view(1, -1, 1, 1))))
    torch.testing.assert_close(out, x * gate)


def test_gradcheck():
    layer = _random_soca(6, reduction=2, cov_group_size=4)
    x = torch.randn(1, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_statistic_runs_in_float32_under_autocast():
    x = torch.randn(2, 16, 7, 7).bfloat16()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        z = second_order_descriptor(x, 2, 8, 5, 1e-12)
    assert z.dtype == torch.float32
    expected = second_order_descriptor(x.double(), 2, 8, 5, 0.)
    torch.testing.assert_close(z.double(), expected, rtol=1e-5, atol=1e-7)


def test_pure_float16_does_not_overflow():
    layer = _random_soca(16, reduction=4).half()
    x = (torch.randn(2, 16, 28, 28, dtype=torch.float64) * 300).half()  # sums of squares ~7e7, beyond float16
    out = layer(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    z = second_order_descriptor(x, layer.groups, layer.group_channels, 5, 1e-12)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.double(), second_order_descriptor(x.double(), 1, 16, 5, 0.), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('kwargs,match', [
    (dict(reduction=0), r'SecondOrderChannelAttention: reduction=0 is not allowed; expected an int >= 1'),
    (dict(reduction=17), r'reduction=17 leaves 16 // 17 = 0 hidden channels'),
    (dict(reduction=4.0), r'reduction=4.0 is not allowed'),
    (dict(iter_n=1), r'iter_n=1 is not allowed; expected an int >= 2'),
    (dict(iter_n=True), r'iter_n=True is not allowed'),
    (dict(cov_group_size=0), r'cov_group_size=0 is not allowed; expected an int >= 1'),
    (dict(eps=0.), r'eps=0.0 is not allowed; expected a finite number > 0'),
    (dict(eps=float('nan')), r'eps=nan is not allowed'),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SecondOrderChannelAttention(16, **kwargs)
