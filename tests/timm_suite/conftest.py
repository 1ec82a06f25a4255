""" Run timm's own model test suite (``tests/test_models.py`` from the timm sdist) against this package's models.

timm's test module picks its models with ``timm.list_models`` when it is imported, so the root conftest imports
timm_gct first. This conftest then keeps only the parametrisations for models registered by timm_gct (its modules
``timm_gct.models.MODEL_MODULES``) and drops timm's tests for its own models. timm's cfg tests list tagged names:
a model's default tag (e.g. ``fca_resnet50.official_in1k``) is kept, except in the tests that download the weights.
``--timm-suite ci`` (the default) keeps the ResNet-18, ResNet-50 and CIFAR models of every mechanism and
``gct_resnet50_official``; ``--timm-suite full`` runs every registered model.
"""
from pathlib import Path

import timm

from timm_gct.models import MODEL_MODULES

_HERE = Path(__file__).parent
CI_FILTERS = ('*_resnet18', '*_resnet50', '*_cifar', '*_resnet50_official')


def suite_models(selection: str):
    """The models this package registers: all of them ('full') or the CI subset ('ci')."""
    return timm.list_models(CI_FILTERS if selection == 'ci' else '*', module=MODEL_MODULES)


def pytest_collection_modifyitems(config, items):
    ours = set(suite_models(config.getoption('--timm-suite')))
    keep, drop = [], []
    for item in items:
        if _HERE not in Path(str(item.fspath)).parents:
            keep.append(item)
            continue
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        arch, _, tag = str(params.get('model_name')).partition('.')
        # timm's cfg tests list tagged names: the default tag stands for its model (as the untagged name would),
        # except in the tests that download the weights.
        ok = arch in ours and (not tag or (
            tag == timm.get_pretrained_cfg(arch).tag and 'pretrained' not in item.originalname))
        (keep if ok else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
