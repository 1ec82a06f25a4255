""" Inputs at the edges, on every registered mechanism: a batch of one, 1x1 maps, all-zero and very large values,
non-square and non-default resolutions. Each gives a finite output of the right shape, or a ValueError that names
one of our layers and the reason; never a NaN, and never a shape error from deep inside torch.
"""
import re

import pytest
import torch

import timm_gct.layers
from tests.helpers import attention_model
from timm_gct.models.attn_resnet import MECHANISMS

_OUR_LAYERS = '|'.join(name for name in timm_gct.layers.__all__ if name[0].isupper())


def _model(name: str) -> torch.nn.Module:
    return attention_model(name, num_classes=5)


def _run(model: torch.nn.Module, x: torch.Tensor, training: bool) -> str:
    """'ok' for a finite output of shape (N, 5) with finite gradients, else the message of our layer's ValueError."""
    model.train(training)
    try:
        with torch.set_grad_enabled(training):
            out = model(x)
    except ValueError as e:
        assert re.match(rf'({_OUR_LAYERS}): ', str(e)), str(e)
        return str(e)
    assert out.shape == (x.shape[0], 5)
    assert torch.isfinite(out).all()
    if training:
        out.square().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    return 'ok'


@pytest.mark.parametrize('mechanism', list(MECHANISMS))
def test_batch_of_one(mechanism):
    model = _model(f'{mechanism}_resnet18_cifar')
    x = torch.randn(1, 3, 32, 32)
    assert _run(model, x, training=False) == 'ok'
    outcome = _run(model, x, training=True)
    # the layers with a BatchNorm over per-sample statistics say so; every other one trains on a batch of one
    if mechanism in ('srm', 'ba'):
        assert 'needs at least 2 samples per batch in training mode' in outcome
    else:
        assert outcome == 'ok'


@pytest.mark.parametrize('mechanism', list(MECHANISMS))
@pytest.mark.parametrize('training', [True, False])
def test_one_by_one_maps(mechanism, training):
    # 32 x 32 through the ImageNet stem: layer4 works on 1 x 1 maps
    outcome = _run(_model(f'{mechanism}_resnet18'), torch.randn(2, 3, 32, 32), training)
    if mechanism == 'srm':
        assert 'StyleRecalibration: got a 1x1 feature map; it needs at least 2 positions' in outcome
    else:
        assert outcome == 'ok'


@pytest.mark.parametrize('mechanism', list(MECHANISMS))
@pytest.mark.parametrize('scale', [0., 1e4])
def test_all_zero_and_very_large_values(mechanism, scale):
    model = _model(f'{mechanism}_resnet18_cifar')
    x = torch.randn(3, 3, 32, 32) * scale
    assert _run(model, x, training=True) == 'ok'
    assert _run(model, x, training=False) == 'ok'


@pytest.mark.parametrize('mechanism', list(MECHANISMS))
@pytest.mark.parametrize('name,size', [
    ('{}_resnet18_cifar', (40, 24)), ('{}_resnet18_cifar', (64, 64)), ('{}_resnet18', (160, 96)),
])
def test_non_square_and_other_resolutions(mechanism, name, size):
    model = _model(name.format(mechanism))
    x = torch.randn(2, 3, *size)
    assert _run(model, x, training=True) == 'ok'
    assert _run(model, x, training=False) == 'ok'


@pytest.mark.parametrize('mechanism', list(MECHANISMS))
def test_large_input(mechanism):
    with torch.no_grad():
        assert _run(_model(f'{mechanism}_resnet18'), torch.randn(1, 3, 448, 320), training=False) == 'ok'
