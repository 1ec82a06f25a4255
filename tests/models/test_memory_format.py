""" channels_last models: the same outputs as contiguous ones, and the layout survives every attention layer. """
import pytest
import torch

from tests.helpers import attention_layers, attention_model
from timm_gct.models.attn_resnet import MECHANISMS

_CL = torch.channels_last


@pytest.mark.parametrize('mechanism', list(MECHANISMS))
@pytest.mark.parametrize('training', [True, False])
def test_channels_last_model_matches_and_keeps_the_layout(mechanism, training):
    model = attention_model(f'{mechanism}_resnet18_cifar').double().train(training)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model(x)
    model.load_state_dict(state)  # the same running statistics for the second pass

    layouts = {}
    for name, layer in attention_layers(model).items():
        layer.register_forward_hook(lambda m, args, out, name=name: layouts.__setitem__(
            name, (args[0].is_contiguous(memory_format=_CL), out.is_contiguous(memory_format=_CL))))
    model = model.to(memory_format=_CL)
    out = model(x.contiguous(memory_format=_CL))
    # float64: summation-order differences of the channels_last kernels cannot show at this tolerance
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert layouts and all(all(v) for v in layouts.values()), {n: v for n, v in layouts.items() if not all(v)}
    if training:
        out.square().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
