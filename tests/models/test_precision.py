""" Every registered model in float16, bfloat16 and under autocast: finite outputs, and every attention layer keeps
the dtype it is fed (a layer that returned float32 under autocast would double the memory of everything after it).
"""
import pytest
import torch

from tests.helpers import attention_layers, attention_model
from timm_gct.models.attn_resnet import MECHANISMS


def _model(mechanism: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    return attention_model(f'{mechanism}_resnet18_cifar').to(dtype)


def _input(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Two 16 x 16 images (2 x 2 maps in the last stage): PyTorch's float16 convolution backward on the CPU can be ~90x
    slower than float32 (seen on a Xeon with AVX512-FP16), and these tests check dtypes and finiteness, not sizes."""
    return torch.randn(2, 3, 16, 16, dtype=dtype)


def _record_dtypes(model: torch.nn.Module):
    seen = {}
    for name, layer in attention_layers(model).items():
        layer.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, (args[0].dtype, out.dtype)))
    return seen


@pytest.mark.parametrize('mechanism', list(MECHANISMS))
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_model_trains_and_infers_in_its_dtype(mechanism, dtype):
    model = _model(mechanism, dtype)
    seen = _record_dtypes(model)
    x = _input(dtype)
    out = model.train()(x)
    out.float().logsumexp(1).sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        out = model.eval()(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert seen and all(pair == (dtype, dtype) for pair in seen.values()), seen


@pytest.mark.parametrize('mechanism', list(MECHANISMS))
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_model_is_finite_and_layers_keep_their_input_dtype(mechanism, dtype):
    model = _model(mechanism)
    seen = _record_dtypes(model)
    x = _input()
    with torch.autocast('cpu', dtype=dtype):
        out = model.train()(x)
        assert torch.isfinite(out).all()
    out.float().logsumexp(1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert seen and all(fed == returned for fed, returned in seen.values()), seen
