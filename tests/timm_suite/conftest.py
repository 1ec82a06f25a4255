""" Run timm's own model test suite (``tests/test_models.py`` from the timm sdist) against this package's models.

timm's test module picks its models with ``timm.list_models`` when it is imported, so the root conftest imports
timm_gct first. This conftest then keeps only the parametrisations for models registered by timm_gct and drops
timm's tests for its own models.
"""
from pathlib import Path

import timm

_HERE = Path(__file__).parent


def _our_models():
    return set(timm.list_models(module='attn_resnet'))


def pytest_collection_modifyitems(config, items):
    ours = _our_models()
    keep, drop = [], []
    for item in items:
        if _HERE not in Path(str(item.fspath)).parents:
            keep.append(item)
            continue
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        (keep if params.get('model_name') in ours else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
