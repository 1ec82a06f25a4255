""" Property-based tests over every layer's constructor arguments (hypothesis).

For each layer, a spec gives every constructor argument a strategy of valid values (which may depend on the channel
count) and a strategy of invalid ones. Valid arguments must build a layer that runs (same shape, finite output,
train and eval); one invalid argument among valid ones must raise a ValueError that names the layer, the argument and
its value, and says what is allowed.
"""
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from timm_gct.layers import (
    BilinearAttention, CrissCrossAttention, DenseImplicitAttention, EfficientChannelAttention, EncodingAttention,
    GatedChannelTransform, GlobalContextBlock, GSoPChannelAttention, MultiSpectralAttention, NormalizationAttention,
    SecondOrderChannelAttention, StyleRecalibration, TripletAttention,
)

Kwargs = Dict[str, Any]
_SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# Values that are not numbers at all; every numeric argument must refuse them.
_NOT_A_NUMBER = st.one_of(st.none(), st.text(max_size=3), st.booleans(), st.just([1]))
_BOOL = st.booleans()
_NOT_BOOL = st.one_of(st.none(), st.integers(0, 1), st.text(max_size=3), st.floats(allow_nan=False))
_ACT = st.sampled_from(['relu', 'gelu', 'silu', 'tanh', nn.ReLU, nn.SiLU])
_NOT_ACT = st.one_of(st.sampled_from(['', 'relu6x', 'no_such_act', 'ReLU ']), st.integers(), st.none())
_FREQ_METHODS = [f'top{n}' for n in (1, 2, 4, 8, 16, 32)]


def _positive(allow_zero: bool = False) -> st.SearchStrategy:
    low = 0. if allow_zero else 1e-12
    return st.floats(low, 1., exclude_min=not allow_zero)


def _not_positive(allow_zero: bool = False) -> st.SearchStrategy:
    bad = st.floats(max_value=0., exclude_max=allow_zero) if allow_zero else st.floats(max_value=0.)
    return st.one_of(bad, st.just(math.nan), st.just(math.inf), _NOT_A_NUMBER)


def _int_at_least(minimum: int) -> st.SearchStrategy:
    return st.one_of(st.integers(max_value=minimum - 1), st.floats(allow_nan=False), _NOT_A_NUMBER)


def _odd_kernel() -> st.SearchStrategy:
    return st.integers(0, 4).map(lambda k: 2 * k + 1)


def _not_odd_kernel() -> st.SearchStrategy:
    return st.one_of(st.integers(0, 8).map(lambda k: 2 * k), st.integers(max_value=-1), st.floats(), _NOT_A_NUMBER)


def _ratio_keeping_one(channels: int) -> st.SearchStrategy:
    """rd_ratio with int(channels * rd_ratio) >= 1."""
    return st.floats(1 / channels, 1.).filter(lambda r: int(channels * r) >= 1)


@dataclass
class Spec:
    cls: Callable[..., nn.Module]
    channels: st.SearchStrategy
    valid: Callable[[int], Dict[str, st.SearchStrategy]]  # channels -> argument -> strategy of valid values
    invalid: Dict[str, st.SearchStrategy]  # argument -> strategy of values that are invalid whatever the rest is


SPECS = {
    'gct': Spec(
        GatedChannelTransform, st.integers(1, 48),
        # after_relu needs mode='l1'; the valid draw keeps the two consistent
        lambda c: dict(mode=st.just('l1'), after_relu=_BOOL, eps=_positive(), inplace=_BOOL),
        dict(mode=st.one_of(st.sampled_from(['L2', 'l3', 'linf', '']), st.integers(), st.none()),
             eps=_not_positive(), after_relu=_NOT_BOOL, inplace=_NOT_BOOL)),
    'nam': Spec(
        NormalizationAttention, st.integers(1, 48),
        lambda c: dict(sparsity=_positive(allow_zero=True), inplace=_BOOL),
        dict(sparsity=_not_positive(allow_zero=True), inplace=_NOT_BOOL)),
    'gc': Spec(
        GlobalContextBlock, st.integers(1, 48),
        lambda c: dict(rd_ratio=_ratio_keeping_one(c), pooling_type=st.sampled_from(['att', 'avg']),
                       fusion_types=st.sampled_from(
                           [('channel_add',), ('channel_mul',), ['channel_mul', 'channel_add']]),
                       act_layer=_ACT),
        dict(rd_ratio=_not_positive(), pooling_type=st.one_of(st.sampled_from(['max', 'ATT', '']), st.none()),
             fusion_types=st.sampled_from(['channel_add', (), ('channel_add', 'channel_add'), ('add',), None]),
             act_layer=_NOT_ACT)),
    'triplet': Spec(
        TripletAttention, st.integers(1, 48),
        lambda c: dict(kernel_size=_odd_kernel(), no_spatial=_BOOL),
        dict(kernel_size=_not_odd_kernel(), no_spatial=_NOT_BOOL)),
    'eca': Spec(
        EfficientChannelAttention, st.integers(1, 48),
        lambda c: dict(kernel_size=_odd_kernel(), inplace=_BOOL),
        dict(kernel_size=_not_odd_kernel(), inplace=_NOT_BOOL)),
    'srm': Spec(
        StyleRecalibration, st.integers(1, 48),
        lambda c: dict(eps=_positive(), inplace=_BOOL),
        dict(eps=_not_positive(), inplace=_NOT_BOOL)),
    'fca': Spec(
        # channels: a multiple of every frequency count up to 32, so any method fits
        MultiSpectralAttention, st.integers(1, 2).map(lambda k: 32 * k),
        lambda c: dict(dct_size=st.integers(7, 16), reduction=st.integers(1, c),
                       freq_sel_method=st.sampled_from(_FREQ_METHODS), inplace=_BOOL, act_layer=_ACT),
        dict(dct_size=_int_at_least(7), reduction=st.one_of(st.integers(65, 1000), _int_at_least(1)),
             freq_sel_method=st.one_of(st.sampled_from(['top64', 'top3', 'low16', 'bot16', 'top', '']), st.none()),
             inplace=_NOT_BOOL, act_layer=_NOT_ACT)),
    'gsop': Spec(
        GSoPChannelAttention, st.integers(1, 48),
        lambda c: dict(att_dim=st.integers(1, 24), stride=st.integers(1, 3), act_layer=_ACT),
        dict(att_dim=_int_at_least(1), stride=_int_at_least(1), act_layer=_NOT_ACT)),
    'soca': Spec(
        SecondOrderChannelAttention, st.integers(1, 48),
        lambda c: dict(reduction=st.integers(1, c), iter_n=st.integers(2, 7),
                       cov_group_size=st.one_of(st.none(), st.integers(1, 2 * c)), eps=_positive(), act_layer=_ACT),
        dict(reduction=st.one_of(st.integers(49, 1000), _int_at_least(1)), iter_n=_int_at_least(2),
             cov_group_size=st.one_of(st.integers(max_value=0), st.floats(), st.text(max_size=2), st.booleans()),
             eps=_not_positive(), act_layer=_NOT_ACT)),
    'enc': Spec(
        EncodingAttention, st.integers(1, 48),
        lambda c: dict(num_codes=st.integers(1, 16), rd_ratio=_ratio_keeping_one(c),
                       rd_max=st.one_of(st.none(), st.integers(1, 64)), scale_drop=_BOOL, act_layer=_ACT),
        dict(num_codes=_int_at_least(1), rd_ratio=_not_positive(),
             rd_max=st.one_of(st.integers(max_value=0), st.floats(), st.text(max_size=2), st.booleans()),
             scale_drop=_NOT_BOOL, act_layer=_NOT_ACT)),
    'ba': Spec(
        BilinearAttention, st.integers(1, 48),
        lambda c: dict(rd_ratio=_ratio_keeping_one(c), rd_max=st.one_of(st.none(), st.integers(1, 64)),
                       act_layer=_ACT),
        dict(rd_ratio=_not_positive(),
             rd_max=st.one_of(st.integers(max_value=0), st.floats(), st.text(max_size=2), st.booleans()),
             act_layer=_NOT_ACT)),
    'cc': Spec(
        CrissCrossAttention, st.integers(8, 48),
        lambda c: dict(recurrence=st.integers(1, 3)),
        dict(recurrence=_int_at_least(1))),
    'dia': Spec(
        DenseImplicitAttention, st.integers(4, 48),
        lambda c: dict(recurrent=_BOOL),
        dict(recurrent=_NOT_BOOL)),
}
NAMES = list(SPECS)


@st.composite
def _valid_kwargs(draw, spec: Spec) -> Kwargs:
    channels = draw(spec.channels)
    kwargs = {name: draw(strategy) for name, strategy in spec.valid(channels).items()}
    if spec.cls is GatedChannelTransform and not kwargs['after_relu']:
        kwargs['mode'] = draw(st.sampled_from(['l1', 'l2']))
    return dict(channels=channels, **kwargs)


def test_every_argument_is_covered():
    """A new constructor argument must get a spec here (device and dtype aside; some layers ignore act_layer)."""
    import inspect
    for name, spec in SPECS.items():
        params = set(inspect.signature(spec.cls).parameters) - {'channels', 'device', 'dtype'}
        assert params <= set(spec.valid(64)) | {'act_layer'}, name
        assert set(spec.invalid) <= params, name


@pytest.mark.parametrize('name', NAMES)
@_SETTINGS
@given(data=st.data())
def test_valid_arguments_build_and_run(name, data):
    spec = SPECS[name]
    kwargs = data.draw(_valid_kwargs(spec), label='kwargs')
    layer = spec.cls(**kwargs)
    x = torch.randn(2, kwargs['channels'], 7, 9)
    for training in (True, False):
        out = layer.train(training)(x)
        assert out.shape == x.shape
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('name', NAMES)
@_SETTINGS
@given(data=st.data())
def test_an_invalid_argument_is_a_value_error_naming_it(name, data):
    spec = SPECS[name]
    kwargs = data.draw(_valid_kwargs(spec), label='valid kwargs')
    arg = data.draw(st.sampled_from(sorted(spec.invalid)), label='invalid argument')
    value = data.draw(spec.invalid[arg], label='invalid value')
    kwargs[arg] = value
    with pytest.raises(ValueError) as info:
        spec.cls(**kwargs)
    message = str(info.value)
    assert message.startswith(f'{spec.cls.__name__}: {arg}={value!r}')
    assert any(allowed in message for allowed in ('expected', 'allowed', 'must be')), message


@pytest.mark.parametrize('name', NAMES)
@_SETTINGS
@given(channels=st.one_of(st.integers(max_value=0), st.floats(), _NOT_A_NUMBER))
def test_invalid_channels_is_a_value_error_naming_it(name, channels):
    with pytest.raises(ValueError, match=r'channels=.*expected a positive int'):
        SPECS[name].cls(channels)
