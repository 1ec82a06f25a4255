""" The fused kernels run compiled on a GPU when there is one, else in Triton's interpreter on the CPU
(``TRITON_INTERPRET=1``, set by tests/conftest.py before Triton is imported). """
import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


@pytest.fixture
def triton_kernels():
    """TIMM_GCT_KERNELS=triton for the test, the previous setting afterwards."""
    from timm_gct.kernels import get_kernels, set_kernels
    before = get_kernels()
    set_kernels('triton')
    yield
    set_kernels(before)
