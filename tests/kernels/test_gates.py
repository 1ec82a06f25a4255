""" The fused Triton gates against the PyTorch path and float64, in Triton's interpreter on the CPU (compiled on a
GPU when there is one): forward, input and parameter gradients, BatchNorm state, memory formats, odd sizes, splits of
H x W, half precision, in-place inference, double backward, launches and saved tensors. """
import pytest
import torch

from timm_gct.kernels import _maps
from tests.kernels.helpers import FUSED, count_launches, make_input, make_layer, relative_error, run

FORMATS = {'nchw': torch.contiguous_format, 'nhwc': torch.channels_last}

# The interpreter computes sigmoid with NumPy, whose exp overflows to inf (and the sigmoid to its exact 0) for very
# negative logits, with a warning.
pytestmark = pytest.mark.filterwarnings('ignore:overflow encountered in exp:RuntimeWarning')


def _check(layer, x, upstream, train, tol=2e-5):
    """The fused path against the PyTorch path in float32 and in float64: the output agrees with float32 PyTorch to
    ``tol``; every result is as close to float64 as float32 PyTorch's, or closer (a BatchNorm over a
    small batch, SRM's, cancels much of its gradient, so both paths lose digits there); the BatchNorm state after the
    call is the same."""
    layer.train(train)
    fused = run(layer, x, 'triton', upstream)
    plain = run(layer, x, 'torch', upstream)
    exact = run(layer.double(), x.double(), 'torch', upstream.double())
    assert fused.grad_fn == '_FusedGateBackward' and plain.grad_fn != '_FusedGateBackward'
    assert fused.out.dtype == x.dtype and fused.out.stride() == x.stride()  # dtype and memory format kept
    assert relative_error(fused.out, plain.out) < tol
    assert fused.grads.keys() == plain.grads.keys() == exact.grads.keys() and fused.grads
    pairs = [('out', fused.out, plain.out, exact.out), ('input grad', fused.grad_x, plain.grad_x, exact.grad_x)]
    pairs += [(name, fused.grads[name], plain.grads[name], exact.grads[name]) for name in exact.grads]
    for name, f, p, e in pairs:
        assert f.dtype == p.dtype, name
        assert relative_error(f, e) <= 1.5 * relative_error(p, e) + tol, name
    for name, value in plain.state.items():  # running statistics and num_batches_tracked, updated alike
        torch.testing.assert_close(fused.state[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('key', FUSED)
def test_fused_matches_pytorch_and_float64(key, fmt, train, device, triton_kernels):
    layer = make_layer(key).to(device)
    x = make_input(key, fmt=FORMATS[fmt], device=device)
    _check(layer, x, torch.randn(x.shape, device=device), train)


@pytest.mark.parametrize('hw', [(1, 1), (1, 7), (7, 1)], ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('key', FUSED)
def test_odd_sizes(key, hw, device, triton_kernels):
    """One position, one row or column; channels not a power of two."""
    layer = make_layer(key).to(device)
    x = make_input(key, shape=(3, *hw), device=device)
    upstream = torch.randn(x.shape, device=device)
    if key == 'srm' and hw == (1, 1):
        with pytest.raises(ValueError, match='1x1 feature map'):  # the unbiased variance of one value, both paths
            run(layer, x, 'triton', upstream)
        return
    _check(layer, x, upstream, train=True)


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('key', ['gct', 'srm', 'nam', 'fca'])
def test_statistics_split_along_hw(key, fmt, device, triton_kernels, monkeypatch):
    """With few (sample, channel) tiles the statistics and gradient sums are split along H x W and merged: the sums,
    and the means and M2s by Chan et al.'s formula (uneven last split included)."""
    monkeypatch.setattr(_maps, 'target_programs', 10 ** 6)
    layer = make_layer(key).to(device)
    x = make_input(key, shape=(2, 24, 24), fmt=FORMATS[fmt], device=device) + 3.  # a mean far from 0
    _check(layer, x, torch.randn(x.shape, device=device), train=True)


@pytest.mark.parametrize('mode', ['bfloat16', 'float16', 'autocast'])
@pytest.mark.parametrize('key', ['gct', 'eca', 'srm', 'nam', 'fca'])
def test_half_precision_is_as_accurate_as_pytorch(key, mode, device, triton_kernels):
    """Half-precision inputs (and parameters), or float32 under bfloat16 autocast: float32 accumulation, the
    PyTorch path's roundings of the gate and of the output; against float64 no worse than the PyTorch path."""
    dtype = {'bfloat16': torch.bfloat16, 'float16': torch.float16}.get(mode, torch.float32)
    layer = make_layer(key).to(device=device, dtype=dtype).train()
    x = make_input(key, dtype=dtype, device=device)
    upstream = torch.randn(x.shape, device=device, dtype=dtype)
    autocast = torch.bfloat16 if mode == 'autocast' else None
    fused = run(layer, x, 'triton', upstream, autocast)
    plain = run(layer, x, 'torch', upstream, autocast)
    exact = run(layer.double(), x.double(), 'torch', upstream.double())
    assert fused.out.dtype == plain.out.dtype
    for f, p, e in [(fused.out, plain.out, exact.out), (fused.grad_x, plain.grad_x, exact.grad_x),
                    *[(fused.grads[n], plain.grads[n], g) for n, g in exact.grads.items()]]:
        assert f.dtype == p.dtype
        assert relative_error(f, e) <= 1.5 * relative_error(p, e) + 1e-3


@pytest.mark.parametrize('key', FUSED)
def test_inference_scales_in_place_only_when_asked(key, device, triton_kernels):
    layer = make_layer(key).to(device).eval()
    x = make_input(key, device=device)
    expected = run(layer, x, 'torch').out
    with torch.no_grad():
        x_copy = x.clone()
        out = layer(x_copy)
        assert out.data_ptr() != x_copy.data_ptr() and torch.equal(x_copy, x)
        layer.inplace = True
        version = x_copy._version
        out = layer(x_copy)
        assert out.data_ptr() == x_copy.data_ptr() and x_copy._version > version  # autograd sees the change
    with torch.inference_mode():
        out_inference = layer(x.clone())
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(out_inference, expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize('key', ['gct', 'eca', 'srm', 'nam', 'fca'])
def test_double_backward_differentiates_the_plain_formula(key, device, triton_kernels):
    """create_graph=True (a gradient penalty): the fused backward hands over to autograd of the formula."""
    layer = make_layer(key).to(device).train()
    x = make_input(key, device=device)
    results = []
    for kernels in ('triton', 'torch'):
        from timm_gct.kernels import set_kernels
        set_kernels(kernels)
        copy = __import__('copy').deepcopy(layer)
        xr = x.clone().requires_grad_()
        out = copy(xr)
        (grad_x,) = torch.autograd.grad(out.square().sum(), xr, create_graph=True)
        grad_x.square().sum().backward()
        results.append([xr.grad] + [p.grad for p in copy.parameters()])
    set_kernels('triton')
    for fused, plain in zip(*results):
        assert relative_error(fused, plain) < 1e-4


@pytest.mark.parametrize('key', ['gct', 'eca', 'srm', 'nam', 'fca'])
def test_at_most_three_launches_each_way(key, device, triton_kernels):
    """Per call: at most 3 launches for inference and 6 for forward + backward (Triton kernels and ATen operations
    that launch one; allocations and views launch none)."""
    layer = make_layer(key).to(device)
    x = make_input(key, device=device)
    with torch.no_grad(), count_launches() as inference:
        layer.eval()(x)
    x = x.requires_grad_()
    with count_launches() as forward:
        out = layer.train()(x)
    upstream = torch.ones_like(out)
    with count_launches() as backward:
        torch.autograd.grad(out, [x, *layer.parameters()], upstream)
    assert not inference['aten'] and not forward['aten'] and not backward['aten']
    assert len(inference['kernels']) <= 3
    assert len(forward['kernels']) + len(backward['kernels']) <= 6


@pytest.mark.parametrize('key', ['gct', 'eca', 'srm', 'nam', 'fca'])
def test_backward_keeps_no_second_feature_map(key, device, triton_kernels):
    """What the fused Function saves for the backward: the input, and only (N, C)- or (C,)-sized extras."""
    layer = make_layer(key).to(device).train()
    x = make_input(key, shape=(2, 14, 14), device=device).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()
    params = {p.data_ptr() for p in layer.parameters()}
    extra = sum(t.numel() for t in saved if t.numel() < x.numel() and t.data_ptr() not in params)
    assert extra <= 8 * x.shape[0] * x.shape[1] + 8 * x.shape[1]
