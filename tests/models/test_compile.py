""" torch.compile traces every model as one graph (no graph breaks), for inference and a training step. """
import pytest
import torch

import timm
from timm_gct.models.attn_resnet import MECHANISMS


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize('mechanism', list(MECHANISMS))
def test_compiles_without_graph_breaks(mechanism):
    # backend='eager' runs dynamo's tracing (where graph breaks happen) without inductor's code generation
    model = timm.create_model(f'{mechanism}_resnet18_cifar', num_classes=4)
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    out = compiled(x)
    out.square().sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if '.se.' in n)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
