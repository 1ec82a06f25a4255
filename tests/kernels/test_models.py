""" Whole CIFAR-stem models of every fused mechanism on the fused kernels: logits and BatchNorm state against the
PyTorch path, and every fused backward inside the model against autograd of the PyTorch formula in float64, on the
very inputs and incoming gradients the model gave it.

The gradients of the whole model are not compared: a ReLU network with random weights and BatchNorms over 2 x 2 maps
is chaotic in its gradients (a relative change of 1e-7 in the input moves a conv weight's gradient by up to 20 % here,
through the ReLUs whose input sits at 0), so the float32 rounding of either path decides them as much as the math.
"""
import copy

import pytest
import torch

from timm_gct.kernels import _gate, set_kernels
from timm_gct.layers._double_backward import differentiate
from tests.helpers import attention_layers, attention_model
from tests.kernels.helpers import relative_error

pytestmark = pytest.mark.filterwarnings('ignore:overflow encountered in exp:RuntimeWarning')


@pytest.fixture
def checked_backwards(monkeypatch):
    """Every fused backward also differentiates the mechanism's PyTorch formula in float64 on its saved inputs and
    incoming gradient; yields the list of (input shape, worst relative error) per call."""
    calls = []
    original = _gate._FusedGate.backward

    def backward(ctx, grad):
        x, gate, *rest = ctx.saved_tensors
        params = rest[ctx.num_saved:]
        spec = ctx.spec
        result = original(ctx, grad)
        leaves = [t.detach().double().requires_grad_() for t in (x, *params)]
        exact = differentiate(spec.formula, leaves, (grad.double(),), ctx.needs_input_grad[1:])
        calls.append((tuple(x.shape), max(relative_error(r, e) for r, e in zip(result[1:], exact) if e is not None)))
        return result

    monkeypatch.setattr(_gate._FusedGate, 'backward', staticmethod(backward))
    yield calls


@pytest.mark.parametrize('name,fmt', [  # both formats among them (every layer test runs both)
    ('gct_resnet18_cifar', torch.contiguous_format), ('eca_resnet18_cifar', torch.channels_last),
    ('srm_resnet18_cifar', torch.contiguous_format), ('nam_resnet18_cifar', torch.channels_last),
    ('fca_resnet18_cifar', torch.contiguous_format),
], ids=['gct-nchw', 'eca-nhwc', 'srm-nchw', 'nam-nhwc', 'fca-nchw'])
def test_model_on_fused_kernels(name, fmt, device, checked_backwards):
    torch.manual_seed(0)
    model = attention_model(name).to(device, memory_format=fmt)
    x = torch.randn(4, 3, 16, 16, device=device).contiguous(memory_format=fmt)
    fused_model, plain_model = copy.deepcopy(model), copy.deepcopy(model)
    try:
        set_kernels('torch')
        plain = plain_model.train()(x)
        with torch.no_grad():
            plain_eval = plain_model.eval()(x)
        set_kernels('triton')
        fused = fused_model.train()(x)
        fused.square().mean().backward()
        with torch.no_grad():
            fused_eval = fused_model.eval()(x)
    finally:
        set_kernels('auto')
    assert relative_error(fused, plain) < 1e-5 and relative_error(fused_eval, plain_eval) < 1e-5
    for (n, b), (_, ref) in zip(fused_model.named_buffers(), plain_model.named_buffers()):
        torch.testing.assert_close(b, ref, rtol=1e-4, atol=1e-5, msg=n)  # running statistics, batches counted
    assert len(checked_backwards) == len(attention_layers(model))  # every attention layer ran fused
    for shape, error in checked_backwards:
        assert error < 1e-4, shape
    assert all(torch.isfinite(p.grad).all() for p in fused_model.parameters())
