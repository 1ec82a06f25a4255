""" The float32 islands' conv and BatchNorm (timm_gct.layers._precision) against nn.Conv2d and nn.BatchNorm2d. """
import copy

import pytest
import torch
from torch import nn

from timm_gct.layers._precision import UpcastBatchNorm2d, UpcastConv2d


def _twins(module: nn.Module, upcast_module: nn.Module, seed: int = 0):
    """The two modules with the same float16-representable parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            t.copy_((torch.rand(t.shape, generator=g) + 0.5).half())
    upcast_module.load_state_dict(module.state_dict())
    return module, upcast_module


@pytest.mark.parametrize('momentum', [0.1, None])
def test_float16_batch_norm_computes_and_tracks_statistics_in_float32(momentum):
    reference, bn = _twins(nn.BatchNorm2d(6, momentum=momentum), UpcastBatchNorm2d(6, momentum=momentum))
    bn.half()
    for _ in range(2):
        # float32 input, as the islands feed it: its squares pass 65504, its statistics fit float16's buffers
        x = torch.randn(4, 6, 5, 5) * 200 + 5e4
        out = bn.train()(x)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, reference.train()(x))
    assert bn.running_mean.dtype == torch.float16 and int(bn.num_batches_tracked) == 2
    torch.testing.assert_close(bn.running_mean, reference.running_mean.half())
    torch.testing.assert_close(bn.running_var, reference.running_var.half())
    x = torch.randn(2, 6, 3, 3).half()
    torch.testing.assert_close(bn.eval()(x), reference.eval()(x.float()), rtol=2e-3, atol=1e-3)


def test_float16_conv_runs_in_float32_under_autocast():
    reference, conv = _twins(nn.Conv2d(8, 4, (3, 1), groups=2), UpcastConv2d(8, 4, (3, 1), groups=2))
    conv.half()
    x = (torch.rand(2, 8, 6, 5) * 5000 + 5000).half()  # positive weights too: outputs ~1e5, past 65504
    with torch.autocast('cpu', dtype=torch.float16):
        out = conv(x)
    assert out.dtype == torch.float32 and out.abs().amax() > 65504
    torch.testing.assert_close(out, reference(x.float()), rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize('training', [True, False])
def test_float64_is_unchanged(training):
    conv, upcast_conv = _twins(nn.Conv2d(6, 6, 1, dtype=torch.float64), UpcastConv2d(6, 6, 1, dtype=torch.float64))
    bn, upcast_bn = _twins(nn.BatchNorm2d(6, dtype=torch.float64), UpcastBatchNorm2d(6, dtype=torch.float64))
    x = torch.randn(3, 6, 4, 4, dtype=torch.float64)
    assert torch.equal(upcast_conv(x), conv(x))
    assert torch.equal(upcast_bn.train(training)(x), bn.train(training)(x))
    for name, b in bn.named_buffers():
        assert torch.equal(getattr(upcast_bn, name), b), name
