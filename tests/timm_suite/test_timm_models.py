""" timm's own model tests, run on every model timm_gct registers (see conftest.py for the selection).

The tests below are timm's, imported from its test module. timm selects the models of its forward_intermediates
and pruning tests by timm module name, which never matches a plugin module, so those three tests are also run here
explicitly on this package's models by calling timm's test functions.
"""
import pytest

from .conftest import suite_models
from .timm_tests import load_timm_test_models

_timm_tests = load_timm_test_models()
# Its tests and fixtures (e.g. cfg_device), as if they were defined here.
globals().update({k: v for k, v in vars(_timm_tests).items() if not k.startswith('_')})

_OUR_MODELS = suite_models('full')  # conftest deselects those outside --timm-suite


@pytest.mark.features
@pytest.mark.parametrize('model_name', _OUR_MODELS)
def test_our_forward_intermediates_features(model_name):
    _timm_tests.test_model_forward_intermediates_features(model_name, batch_size=1)


@pytest.mark.features
@pytest.mark.parametrize('model_name', _OUR_MODELS)
def test_our_forward_intermediates(model_name):
    _timm_tests.test_model_forward_intermediates(model_name, batch_size=1)


@pytest.mark.features
@pytest.mark.parametrize('model_name', _OUR_MODELS)
def test_our_prune_intermediate_layers_contract(model_name):
    _timm_tests.test_prune_intermediate_layers_contract(model_name)
