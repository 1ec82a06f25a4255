""" Every registered model on a CUDA GPU (``pytest -m cuda``; skipped without one): float64 against the CPU, float32
with TF32 off and channels_last against float64, every fused backward against autograd of its PyTorch formula on the
same inputs, bfloat16 / float16 autocast finite; and torch.compile against eager for every fused mechanism (a
training-mode forward: compiling backwards takes minutes a GPU run does not have; tests/models/test_compile.py
compiles forward and backward of every mechanism on the CPU).

``TIMM_GCT_CUDA_TESTS_DEVICE=cpu`` runs them on the CPU instead (the fused kernels in Triton's interpreter, a few
models): the dry run of ``.ci/gpu`` before GPU time is spent on it.
"""
import copy
import os

import pytest
import timm
import torch

from timm_gct.kernels import _gate, get_kernels, set_kernels
from timm_gct.layers._double_backward import differentiate
from timm_gct.models import MODEL_MODULES
from tests.helpers import attention_model
from tests.kernels.helpers import relative_error

_DEVICE = os.environ.get('TIMM_GCT_CUDA_TESTS_DEVICE', 'cuda')
_DRY_RUN = _DEVICE != 'cuda'
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not _DRY_RUN and not torch.cuda.is_available(), reason='needs a CUDA GPU'),
    pytest.mark.filterwarnings('ignore:overflow encountered in exp:RuntimeWarning'),  # the CPU dry run's interpreter
]

_ALL = sorted(name for module in MODEL_MODULES for name in timm.list_models(module=module))
_MODELS = ['gct_resnet18_cifar', 'srm_resnet18_cifar', 'fca_resnet18_cifar'] if _DRY_RUN else _ALL
_FUSED = ['gct_resnet18_cifar', 'nam_resnet18_cifar', 'eca_resnet18_cifar', 'srm_resnet18_cifar', 'fca_resnet18_cifar']
_COMPILED = _FUSED[:1] if _DRY_RUN else _FUSED


def _model(name: str) -> torch.nn.Module:
    """The model with every block's last BatchNorm and every attention layer away from its init: timm zero-inits
    the last BN, so the gates would otherwise only ever see all-zero maps."""
    torch.manual_seed(0)
    model = attention_model(name, num_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


def _input(model: torch.nn.Module) -> torch.Tensor:
    size = 32 if model.pretrained_cfg['input_size'][-1] <= 32 else 64  # 64: a 2 x 2 map in the last stage
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _forward_backward(model, x, device, dtype, fmt=torch.contiguous_format, autocast=None):
    model = copy.deepcopy(model).to(device=device, dtype=dtype, memory_format=fmt).train()
    x = x.detach().to(device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
    with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = model(x)
    out.float().square().mean().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


@pytest.fixture(scope='module')
def device():
    return torch.device(_DEVICE)


@pytest.fixture
def checked_backwards(monkeypatch):
    """Every fused backward also differentiates its PyTorch formula in float64 on the same saved inputs and incoming
    gradient; the worst relative error per call is collected."""
    errors = []
    original = _gate._FusedGate.backward

    def backward(ctx, grad):
        x, gate, *rest = ctx.saved_tensors
        result = original(ctx, grad)
        leaves = [t.detach().double().requires_grad_() for t in (x, *rest[ctx.num_saved:])]
        exact = differentiate(ctx.spec.formula, leaves, (grad.double(),), ctx.needs_input_grad[1:])
        errors.append(max(relative_error(r, e) for r, e in zip(result[1:], exact) if e is not None))
        return result

    monkeypatch.setattr(_gate._FusedGate, 'backward', staticmethod(backward))
    before = get_kernels()
    set_kernels('triton' if _DRY_RUN else 'auto')
    yield errors
    set_kernels(before)


@pytest.mark.parametrize('name', _MODELS)
def test_model_on_cuda(name, device, checked_backwards):
    model = _model(name)
    x = _input(model)
    exact = _forward_backward(model, x, torch.device('cpu'), torch.float64)
    on_device = _forward_backward(model, x, device, torch.float64)  # the PyTorch path: kernels take no float64
    assert relative_error(on_device[0].cpu(), exact[0]) < 1e-10
    assert relative_error(on_device[1].cpu(), exact[1]) < 1e-9
    for n, grad in exact[2].items():
        assert relative_error(on_device[2][n].cpu(), grad) < 1e-8, n

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for fmt in (torch.contiguous_format, torch.channels_last):
            out, grad_x, grads = _forward_backward(model, x, device, torch.float32, fmt)
            # logits to float32 rounding; the whole-model gradient is too chaotic (ReLUs at 0) to compare, so each
            # fused backward is checked on its own inputs (checked_backwards), and every gradient must be finite
            assert relative_error(out.cpu(), exact[0]) < 1e-4
            assert torch.isfinite(grad_x).all() and all(torch.isfinite(g).all() for g in grads.values())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert all(error < 1e-4 for error in checked_backwards), max(checked_backwards)

    for dtype in (torch.bfloat16, torch.float16):
        out, grad_x, grads = _forward_backward(model, x, device, torch.float32, torch.channels_last, autocast=dtype)
        assert torch.isfinite(out).all() and torch.isfinite(grad_x).all(), dtype
        assert all(torch.isfinite(g).all() for g in grads.values()), dtype


@pytest.mark.parametrize('name', _COMPILED)
def test_compiled_matches_eager(name, device):
    """torch.compile (inductor fuses the PyTorch formula; the fused kernels stay out of the graph) against eager
    (the fused kernels) on the device, in training mode (batch statistics), without a graph break."""
    model = _model(name).to(device).train()
    x = _input(model).to(device)
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True, backend='eager' if _DRY_RUN else 'inductor')
    with torch.no_grad():
        eager_out = model(x)
        out = compiled(x)
    assert relative_error(out.cpu(), eager_out.cpu()) < 1e-4
    for (n, b), (_, ref) in zip(compiled.named_buffers(), model.named_buffers()):  # BatchNorm statistics alike
        torch.testing.assert_close(b, ref, rtol=1e-4, atol=1e-5, msg=n)
