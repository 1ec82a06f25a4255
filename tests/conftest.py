""" Session-wide test setup: no network, and the plugin imported before any test module is collected. """
import os

# Must be set before huggingface_hub is imported: with no network, Hub calls must fail fast, not retry.
os.environ['HF_HUB_OFFLINE'] = '1'

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    # Without a GPU the fused Triton kernels (tests/kernels) run in Triton's interpreter, which Triton chooses when it
    # is imported: before timm (which imports it) and timm_gct.
    os.environ.setdefault('TRITON_INTERPRET', '1')

import timm_gct  # noqa: E402,F401  registers the models before timm's test module builds its parameter lists


def pytest_addoption(parser):
    parser.addoption(
        '--timm-suite', choices=('ci', 'full'), default='ci',
        help="models for timm's own test suite (tests/timm_suite): 'ci' = the ResNet-18, ResNet-50 and CIFAR models "
             "of every mechanism and the CIFAR baselines (default); 'full' = every registered model")


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so no result depends on which tests ran before it."""
    torch.manual_seed(0)
