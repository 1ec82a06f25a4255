""" EfficientChannelAttention against the official ECA layer (BangguWu/ECANet, models/eca_module.py). """
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import EcaModule

from timm_gct.layers.eca import EfficientChannelAttention
from tests.helpers import randomize

# Released per-stage kernel sizes (checkpoint names eca_resnet{18_k3577, 34_k3357, 50_k3557, 101_k3357, 152_k3357}).
RELEASED_KERNELS = {18: (3, 5, 7, 7), 34: (3, 3, 5, 7), 50: (3, 5, 5, 7), 101: (3, 3, 5, 7), 152: (3, 3, 5, 7)}


def _reference(x, weight):
    """Official forward: AdaptiveAvgPool2d(1) -> squeeze / transpose -> Conv1d -> transpose / unsqueeze -> sigmoid."""
    k = weight.shape[-1]
    y = F.adaptive_avg_pool2d(x, 1)
    y = F.conv1d(y.squeeze(-1).transpose(-1, -2), weight, padding=(k - 1) // 2).transpose(-1, -2).unsqueeze(-1)
    return x * torch.sigmoid(y).expand_as(x)


def _random_eca(channels, kernel_size, seed=5):
    return randomize(EfficientChannelAttention(channels, kernel_size=kernel_size, dtype=torch.float64), seed=seed)


@pytest.mark.parametrize('channels,kernel_size', [(16, 3), (16, 5), (12, 7), (5, 7), (8, 1), (3, 9)])
def test_matches_official_math_and_gradients_in_float64(channels, kernel_size):
    # (5, 7) and (3, 9): kernels wider than the channel count see zero padding at both ends, as officially.
    layer = _random_eca(channels, kernel_size)
    x = torch.randn(3, channels, 6, 5, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    w_ref = layer.conv.weight.detach().clone().requires_grad_()
    out, expected = layer(x), _reference(x_ref, w_ref)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.conv.weight.grad, w_ref.grad, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    layer = _random_eca(6, 3)
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_official_default_and_structure():
    layer = EfficientChannelAttention(64)
    assert isinstance(layer.conv, torch.nn.Conv1d)
    assert layer.conv.kernel_size == (3,) and layer.conv.padding == (1,) and layer.conv.bias is None
    assert layer.conv.in_channels == layer.conv.out_channels == 1
    assert [(k, tuple(v.shape)) for k, v in layer.state_dict().items()] == [('conv.weight', (1, 1, 3))]


def test_gate_is_half_with_a_zero_kernel():
    layer = EfficientChannelAttention(8, kernel_size=5)
    with torch.no_grad():
        layer.conv.weight.zero_()
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(layer(x), x * 0.5)


def test_conv1d_keeps_pytorch_default_init_inside_timms_resnet():
    """Official ResNets re-initialise only Conv2d; so does timm's, so the Conv1d keeps kaiming_uniform(a=sqrt(5))."""
    model = timm.create_model('resnet50', block_args=dict(attn_layer=EfficientChannelAttention))
    weights = torch.cat([m.conv.weight.flatten() for m in model.modules() if isinstance(m, EfficientChannelAttention)])
    assert weights.numel() == 16 * 3
    assert weights.abs().max().item() <= 1 / math.sqrt(3)  # uniform bound 1 / sqrt(fan_in), fan_in = k = 3


@pytest.mark.parametrize('depth', [18, 50])
def test_released_checkpoint_layout_loads_with_per_stage_kernels(depth):
    """Keys ``layerX.Y.eca.conv.weight`` of shape (1, 1, k) load after renaming eca -> se, given per-stage k."""
    model = timm.create_model(f'resnet{depth}', num_classes=10, block_args=dict(attn_layer=EfficientChannelAttention))
    official = {}
    for stage, k in enumerate(RELEASED_KERNELS[depth], start=1):
        for idx, block in enumerate(getattr(model, f'layer{stage}')):
            block.se = EfficientChannelAttention(block.se.conv.in_channels, kernel_size=k)  # what a model table does
            official[f'layer{stage}.{idx}.eca.conv.weight'] = torch.randn(1, 1, k)
    renamed = {key.replace('.eca.', '.se.'): v for key, v in official.items()}
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    assert not unexpected and not [key for key in missing if '.se.' in key]
    assert torch.equal(model.layer1[0].se.conv.weight, official['layer1.0.eca.conv.weight'])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_timms_eca_module_uses_the_eq9_formula_not_the_released_kernels():
    """The docstring's claim: timm's EcaModule ignores kernel_size when channels is given."""
    def eq9(c):
        t = int(abs(math.log2(c) + 1) / 2)
        return t if t % 2 else t + 1
    r50_widths, r18_widths = (256, 512, 1024, 2048), (64, 128, 256, 512)
    assert tuple(EcaModule(c, kernel_size=3).conv.kernel_size[0] for c in r50_widths) == (5, 5, 5, 7)
    assert tuple(eq9(c) for c in r50_widths) == (5, 5, 5, 7) != RELEASED_KERNELS[50]
    assert tuple(EcaModule(c).conv.kernel_size[0] for c in r18_widths) == (3, 5, 5, 5) != RELEASED_KERNELS[18]
    assert EfficientChannelAttention(256, kernel_size=3).conv.kernel_size == (3,)


def test_float16_mean_does_not_overflow():
    layer = _random_eca(16, 3)
    x = torch.randn(2, 16, 56, 56, dtype=torch.float64) * 100 + 500
    expected = layer(x)
    out = layer.half()(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=0.5)


@pytest.mark.parametrize('kernel_size', [0, 2, 4, -1, 3.0, True, '3'])
def test_bad_kernel_size_is_a_value_error(kernel_size):
    with pytest.raises(ValueError, match=rf'EfficientChannelAttention: kernel_size={kernel_size!r} is not allowed; '
                                         r'expected an odd int >= 1'):
        EfficientChannelAttention(16, kernel_size=kernel_size)
