""" The benchmark's official-code references compute exactly what our layers compute (float64, train and eval). """
import copy

import pytest
import torch

import timm
from timm_gct.bench.official import to_official
from timm_gct.layers.dia import DIAStage
from timm_gct.models.attn_resnet import MECHANISMS
from tests.helpers import randomize


# The official SoCA forms the full C x C covariance; ours is block-diagonal above 64 channels unless told otherwise.
_OFFICIAL_KWARGS = {'soca': dict(attn_kwargs=dict(cov_group_size=None))}


def _models(mechanism):
    torch.manual_seed(0)
    # zero_init_last=False: with timm's zero-init last BN every attention layer would see an all-zero input
    ours = timm.create_model(
        f'{mechanism}_resnet18_cifar', num_classes=5, zero_init_last=False, **_OFFICIAL_KWARGS.get(mechanism, {}))
    ours = ours.double()
    for name, m in ours.named_modules():
        if name.split('.')[-1] == 'se' and m is not None:
            randomize(m, seed=len(name))  # away from identity-like inits, the same in both models
    reference = to_official(copy.deepcopy(ours))
    return ours, reference


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('mechanism', list(MECHANISMS))
def test_reference_model_computes_our_function(mechanism, train):
    ours, reference = _models(mechanism)
    # Every attention layer is replaced; DIANet's stage wrapper (DIAStage) stays by design, around the reference.
    assert not any(type(m).__module__.startswith('timm_gct.layers') and not isinstance(m, DIAStage)
                   for m in reference.modules())
    _assert_same_function(ours, reference, train, attention='.se.')


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
def test_reference_of_the_official_gct_layout_computes_our_function(train):
    torch.manual_seed(0)
    ours = timm.create_model('gct_resnet50_official', num_classes=5).double()
    for name, m in ours.named_modules():
        if name.endswith('.gct'):
            randomize(m, seed=len(name))
    reference = to_official(copy.deepcopy(ours))
    assert not any(type(m).__module__.startswith('timm_gct.layers') for m in reference.modules())
    # one before each conv: the stem, three per bottleneck, one per stage's downsample
    assert sum(type(m).__name__ == 'OfficialGCT' for m in reference.modules()) == 1 + 16 * 3 + 4
    _assert_same_function(ours, reference, train, attention='.gct.')


def _assert_same_function(ours, reference, train, attention):
    """Outputs, input gradients and the gradients of every parameter outside the attention layers (whose names
    contain ``attention``; their parameters are named and shaped differently) agree in float64."""
    ours.train(train)
    reference.train(train)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, out_ref = ours(x_ours), reference(x_ref)
    torch.testing.assert_close(out_ref, out, rtol=1e-9, atol=1e-10)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (out_ref * upstream).sum().backward()
    _assert_grad_close(x_ref.grad, x_ours.grad, 'input')
    ref_params = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        if attention not in name and name in ref_params:  # the ResNet's own parameters (attention names differ)
            _assert_grad_close(ref_params[name].grad, p.grad, name)


def _assert_grad_close(actual, expected, name):
    # Rounding differences of two float64 orders of summation, amplified through a batch-3 network, reach ~1e-10 of
    # a gradient's largest entry; tolerances relative to that entry, not to each (possibly tiny) element.
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-8 * expected.abs().max().item(), msg=name)


def test_soca_reference_refuses_grouped_covariance():
    model = timm.create_model('soca_resnet18_cifar')  # groups of 64 channels above 64
    with pytest.raises(ValueError, match='cov_group_size=64'):
        to_official(model)


def test_model_without_attention_is_an_error():
    with pytest.raises(ValueError, match='no timm_gct attention layer'):
        to_official(timm.create_model('resnet18_cifar'))
